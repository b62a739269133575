"""Benchmark: the quantizer settings measured on the default model (EfficientNet-Lite0, 200 views).

Run:  python reports/bench_quantizers.py [--probes 16] [--cache-dir DIR]
Writes reports/quantizers.md. For every quantizer setting: uniform W8A8, W6A8, W5A8, W4A8 and the
4 MB mpq plan (solved with that setting's quantization errors), each measured against FP32
(agreement, KL(FP32 || q), top-1). The best setting is the one of least geometric-mean KL over these
five configurations (ties: higher mean agreement); mpq.quantizer.DEFAULT_QUANTIZER should be it.

The views are also the calibration data (20 labelled photos are all there is offline). A second
table checks what that flatters: the views of photos 1-10 calibrate, those of photos 11-20 are
evaluated, against calibrating on the evaluated views themselves.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import mpq
from mpq.cache import Cache, default_cache_dir
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.quant.calibration import calibrate
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import measure_plan, plan_calibration, uniform_plan

HERE = Path(__file__).parent
BATCH = 25
MAX_SECONDS = 5000  # the cached 16-probe sensitivity was made with this limit (it did not bind: stopped at max_probes)
SETTINGS = [
    Quantizer("minmax", "minmax", False),  # the plain min-max quantizer (mpq before this comparison)
    Quantizer("minmax", "mse", False),  # weight clipping alone
    Quantizer("mse", "mse", True),
    Quantizer("mse", "mse", False),  # bias correction's share
    Quantizer("percentile", "mse", True),
    Quantizer("aciq", "mse", True),
    Quantizer("minmax", "mse", True),
]
UNIFORM = (8, 6, 5, 4)


def label(q: Quantizer) -> str:
    return f"A {q.act_observer}, W {q.weight_clip}, bias corr. {'on' if q.bias_correction else 'off'}"


def measure_setting(
    model, prepared, data, reference, quantizer: Quantizer, probes: int, cache: Cache, cache_dir: Path
) -> dict[str, object]:
    sens = mpq.analyze(
        prepared,
        data,
        max_probes=probes,
        max_seconds=MAX_SECONDS,
        cache_dir=cache_dir,
        progress=False,
        quantizer=quantizer,
    )
    plan = mpq.solve(sens, "4MB")
    plans = {f"W{b}A8": uniform_plan(prepared, b, 8) for b in UNIFORM} | {"mpq 4MB": plan}
    calibration = plan_calibration(prepared, plan, data, reference, BATCH, cache)
    return {
        name: measure_plan(prepared, p, data, reference, name, BATCH, cache, calibration=calibration)
        for name, p in plans.items()
    }, plan


def held_out(prepared, data, plan4, quantizer: Quantizer, cache: Cache) -> dict[str, tuple[object, object]]:
    """(in-sample, held-out) measurements on the views of photos 11-20 (views 100-199)."""
    half = len(data) // 2
    calib, evaluated = Dataset(x=data.x[:half], y=data.y[:half]), Dataset(x=data.x[half:], y=data.y[half:])
    ref_calib, ref_eval = (
        fp32_reference(prepared, calib, BATCH, cache),
        fp32_reference(prepared, evaluated, BATCH, cache),
    )
    own = calibrate(prepared, evaluated, ref_eval.input_ranges, quantizer, BATCH, cache)
    other = calibrate(prepared, calib, ref_calib.input_ranges, quantizer, BATCH, cache)
    plans = {"W6A8": uniform_plan(prepared, 6, 8), "W4A8": uniform_plan(prepared, 4, 8), "mpq 4MB": plan4}
    return {
        name: tuple(
            measure_plan(prepared, p, evaluated, ref_eval, name, BATCH, cache, calibration=c) for c in (own, other)
        )
        for name, p in plans.items()
    }


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir)
    cache = Cache(cache_dir)
    model, data = build_model(), load_views()
    prepared = prepare_model(model, data.x[:2])
    reference = fp32_reference(prepared, data, BATCH, cache)
    results, seconds, plans4 = {}, {}, {}
    for q in SETTINGS:
        start = time.perf_counter()
        results[q], plans4[q] = measure_setting(model, prepared, data, reference, q, args.probes, cache, cache_dir)
        seconds[q] = time.perf_counter() - start
        print(label(q), {k: round(m.kl_to_fp32, 4) for k, m in results[q].items()}, f"{seconds[q]:.0f} s", flush=True)
    score = {
        q: (geometric_mean(m.kl_to_fp32 for m in r.values()), -sum(m.fp32_agreement for m in r.values()) / len(r))
        for q, r in results.items()
    }
    best = min(SETTINGS, key=lambda q: score[q])
    configs = list(next(iter(results.values())))
    lines = [
        "# Quantizer settings on the default model",
        "",
        f"`python reports/bench_quantizers.py --probes {args.probes}`: EfficientNet-Lite0, 200 views, 8-bit activations; "
        f"the 4 MB plan is solved per setting from the same Hessian traces ({args.probes} probes) and that setting's "
        "weight quantization errors. Each cell: agreement with FP32 / KL(FP32‖q) / top-1 (FP32 top-1 "
        f"{100 * reference_top1(reference):.1f}%).",
        "",
        "| quantizer | " + " | ".join(configs) + " | geo-mean KL |",
        "|---|" + "---:|" * (len(configs) + 1),
    ]
    for q, r in results.items():
        cells = [f"{100 * m.fp32_agreement:.1f}% / {m.kl_to_fp32:.4f} / {100 * (m.top1 or 0):.1f}%" for m in r.values()]
        mark = " **(best)**" if q == best else ""
        lines.append(f"| {label(q)}{mark} | " + " | ".join(cells) + f" | {score[q][0]:.4f} |")
    lines += [
        "",
        "Sizes (bytes, the same for every setting: bias correction and clipping change no byte): "
        + ", ".join(f"{k} {m.size_bytes:,}" for k, m in results[best].items())
        + ".",
        "",
        f"Rule: the best setting has the least geometric-mean KL over the {len(configs)} configurations (ties: higher mean agreement). "
        f"Best here: {label(best)}. mpq's default (`mpq.quantizer.DEFAULT_QUANTIZER`): {label(DEFAULT_QUANTIZER)}"
        + (" — the same." if best == DEFAULT_QUANTIZER else " — differs; see the README."),
        "",
        "## Calibrated on other photos than evaluated",
        "",
        "Views of photos 11-20 (100 views) evaluated; quantizer calibrated on those same views (in-sample) or on "
        "the views of photos 1-10 (held out). Each cell: agreement with FP32 / KL(FP32‖q). The 4 MB plans are those of the table above.",
        "",
        "| quantizer | config | in-sample | held out |",
        "|---|---|---:|---:|",
    ]
    for q in (SETTINGS[0], best):
        for name, (own, other) in held_out(prepared, data, plans4[q], q, cache).items():
            cell = lambda m: f"{100 * m.fp32_agreement:.1f}% / {m.kl_to_fp32:.4f}"  # noqa: E731
            lines.append(f"| {label(q)} | {name} | {cell(own)} | {cell(other)} |")
    lines += [
        "",
        "Seconds per setting (calibration passes, solve and five evaluations; cached steps are skipped): "
        + ", ".join(f"{seconds[q]:.0f}" for q in SETTINGS)
        + ".",
        "",
    ]
    (HERE / "quantizers.md").write_text("\n".join(lines))
    print("\n".join(lines))


def reference_top1(reference) -> float:
    return reference.top1 or 0.0


if __name__ == "__main__":
    main()
