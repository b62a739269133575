"""Rounding and equalization on the default model (issue 24, items 3-5): round-to-nearest, cross-layer equalization,
AdaRound and both, each on the same plans and uniform baselines, measured on views neither the sensitivity nor the
calibration saw.

Run:  python reports/rounding.py [--quick] [--cache-dir DIR] [--sensitivity-cache DIR] [--threads 1]
Writes reports/rounding.md (--quick: reports/rounding-quick.md, W4A8 and the 2.7 MB plan on fewer views).

Data: the built-in 200 views (20 photos x 10 views), split by photo as `mpq search` splits them (mpq.inputs.split,
seed 0): 15 photos (150 views) fit the sensitivity and every quantizer's calibration (AdaRound learns on them too),
5 photos (50 views) measure. The plans are solved once, from the default quantizer's sensitivity (kl_anchored,
round-to-nearest, unequalized: what `mpq search` does with any of these quantizers, docs/quantizers.md), at
2.7 / 3.0 / 3.5 / 4.0 MB; the uniform baselines are the widest uniform widths within those budgets (W4A8, W5A8,
W6A8). Each is measured with each quantizer: the default, with equalization, with AdaRound, with both.
Seconds per quantizer: fitting it (calibration passes, equalization, AdaRound's pass and learning) from an empty
cache, and measuring every configuration.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import mpq
from mpq.cache import Cache
from mpq.inputs.graph import prepare_model
from mpq.inputs.split import held_out_split
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.quant.quantizer import DEFAULT_QUANTIZER
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import measure_plan, plan_calibration, uniform_plan

HERE = Path(__file__).parent
BATCH = 25
BUDGETS = ("2.7MB", "3MB", "3.5MB", "4MB")
UNIFORM = (4, 5, 6)
VARIANTS = {
    "round-to-nearest": DEFAULT_QUANTIZER,
    "equalization": replace(DEFAULT_QUANTIZER, equalize=True),
    "AdaRound": replace(DEFAULT_QUANTIZER, rounding="adaround"),
    "both": replace(DEFAULT_QUANTIZER, rounding="adaround", equalize=True),
}


def configurations(prepared, fit, cache_dir: Path, quick: bool) -> dict:
    sensitivity = mpq.analyze(prepared, fit, cache_dir=cache_dir, progress=False)
    plans = {f"mpq {b}": mpq.solve(sensitivity, b) for b in (BUDGETS[:1] if quick else BUDGETS)}
    uniform = {f"uniform W{b}A8": uniform_plan(prepared, b, 8) for b in (UNIFORM[:1] if quick else UNIFORM)}
    return uniform | plans


def measure_variants(prepared, fit, held, configs: dict, cache: Cache) -> tuple[dict, dict]:
    """{variant: {config: Measurement}} and {variant: (fit seconds, measure seconds)}."""
    fit_reference, held_reference = (
        fp32_reference(prepared, fit, BATCH, cache),
        fp32_reference(prepared, held, BATCH, cache),
    )
    results, seconds = {}, {}
    for name, quantizer in VARIANTS.items():
        started = time.perf_counter()
        calibration = plan_calibration(
            prepared, next(iter(configs.values())), fit, fit_reference, BATCH, cache, quantizer
        )
        for plan in configs.values():  # AdaRound learns each (layer, width) the first time a plan asks for it
            for layer, lp in plan.layers.items():
                module = calibration.model(prepared).folded.get_submodule(layer)
                calibration.weight(layer, module.weight, lp.channel_widths(module.weight.shape[0]))
        fitted = time.perf_counter() - started
        results[name] = {
            config: measure_plan(prepared, plan, held, held_reference, config, BATCH, cache, calibration=calibration)
            for config, plan in configs.items()
        }
        seconds[name] = (fitted, time.perf_counter() - started - fitted)
        print(name, {c: round(m.kl_to_fp32, 4) for c, m in results[name].items()}, seconds[name], flush=True)
    return results, seconds


def write_report(results: dict, seconds: dict, args, held_views: int, path: Path) -> None:
    configs = list(next(iter(results.values())))
    base = results["round-to-nearest"]
    lines = [
        "# Rounding and cross-layer equalization on the default model",
        "",
        f"`python reports/rounding.py{' --quick' if args.quick else ''} --threads {args.threads}` "
        f"on {platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} torch thread(s), on a shared 2-core machine (other jobs running: "
        "the seconds are indicative only). EfficientNet-Lite0; sensitivity, calibration and AdaRound on 150 views "
        f"(15 photos), every KL measured on the {held_views} views of the other photos; 8-bit activations; the plans "
        "solved once from the round-to-nearest sensitivity (kl_anchored), so every column measures the same widths.",
        "",
        "Each cell: KL(FP32‖q) held out / agreement with FP32 (in brackets: KL over round-to-nearest's).",
        "",
        "| configuration | size (B) | " + " | ".join(VARIANTS) + " |",
        "|---|---:|" + "---:|" * len(VARIANTS),
    ]
    for config in configs:
        ratio = lambda m: m.kl_to_fp32 / max(base[config].kl_to_fp32, 1e-12)  # noqa: E731
        cells = [
            f"{m.kl_to_fp32:.4f} / {100 * m.fp32_agreement:.1f}% ({ratio(m):.2f}x)"
            for m in (results[v][config] for v in VARIANTS)
        ]
        lines.append(f"| {config} | {base[config].size_bytes:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Seconds per quantizer, fitting (from an empty cache) + measuring the configurations: "
        + ", ".join(f"{v} {fit:.0f} + {measure:.0f}" for v, (fit, measure) in seconds.items())
        + ".",
        "",
    ]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="W4A8 and the 2.7 MB plan, 20 held-out views")
    parser.add_argument(
        "--cache-dir", default=None, help="a cache to reuse (default: a fresh one, so times are measured)"
    )
    parser.add_argument(
        "--sensitivity-cache", default=None, help="where the sensitivity is cached (default: --cache-dir's cache)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="mpq-rounding-"))
    model, data = build_model(), load_views()
    fit, held = held_out_split(data)
    if args.quick:
        held = held.subset(torch.arange(20), f"{held.description}, first 20")
    prepared = prepare_model(model, fit.x[:2])
    configs = configurations(prepared, fit, Path(args.sensitivity_cache or cache_dir), args.quick)
    results, seconds = measure_variants(prepared, fit, held, configs, Cache(cache_dir))
    write_report(results, seconds, args, len(held), HERE / ("rounding-quick.md" if args.quick else "rounding.md"))


if __name__ == "__main__":
    main()
