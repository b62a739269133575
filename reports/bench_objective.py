"""Which objective picks the best plans? (issue 13, Build 3): each metric's plans at 4 / 3.5 / 3 / 2.7 MB beside a
measured greedy search in AIMET's manner, all measured on views that neither sensitivity nor calibration saw.

Run:  python reports/bench_objective.py [--plans 20] [--metrics kl_anchored,kl_quadratic,gauss_newton,hessian,output_kl] [--no-anchor-sweep] [--cache-dir DIR]
Writes reports/objective.md. Run it on a quiet machine: the seconds are part of the result.

Data: the built-in 200 views (20 photos x 10 views), split by photo as `mpq search` splits them (mpq.inputs.split,
seed 0): 15 photos (150 views) fit the sensitivity and the quantizer's calibration, 5 photos (50 views) measure.
Every plan: default quantizer, 8-bit activations, widths 4-8, measured by mpq's evaluator (KL(FP32 || q), agreement).

The greedy search (`greedy_plans`), AIMET's mixed-precision search (phase 1 and 2): every layer quantized alone at
every width, the rest FP32, and the KL to FP32 measured (the output_kl metric's table: 50 layers x 4 widths = 200
evaluations on the 150 fit views); then, from all layers at 8 bits, repeatedly narrow by one width the layer whose
measured KL rises least per byte saved, until each budget holds (the plan is taken when it first fits).

Spearman: each metric's Ω (as `mpq solve` sums it, trace margin 0) against the KL of 20 random plans
(mpq.verify.proxy.random_plan, widths 4-8, repaired into [3.5 MB, 4 MB]), measured on the held-out views and on the
fit views (in-sample: what Ω was estimated on).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import mpq
from mpq.cache import Cache
from mpq.cost.layer_cost import model_costs
from mpq.inputs.graph import prepare_model
from mpq.inputs.split import held_out_split
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.plan import LayerPlan, Plan
from mpq.sensitivity.settings import ProbeSettings
from mpq.quant.reference import fp32_reference
from mpq.solver.omega import layer_plan_omega, plan_omega
from mpq.verify.measure import measure_plan, plan_calibration
from mpq.verify.proxy import random_plan

HERE = Path(__file__).parent
BUDGETS = {"4MB": 4_000_000, "3.5MB": 3_500_000, "3MB": 3_000_000, "2.7MB": 2_700_000}
BITS = (4, 5, 6, 7, 8)
BATCH = 25
GREEDY = "greedy (measured, AIMET)"
ANCHOR_SWEEP = (16, 32, 48, 64)


def greedy_plans(prepared, table, act_bits: dict[str, int | None]) -> dict[str, dict[str, int]]:
    """Per budget, the widths the greedy search reaches when it first fits (see the module docstring)."""
    names = list(table.layers)
    widths = {n: BITS[-1] for n in names}
    layers = prepared.graph.by_name

    def size(w: dict[str, int]) -> float:
        return model_costs(
            prepared.graph.layers, {n: LayerPlan(w[n], act_bits[n]).choice for n in names}, prepared.graph.float_bytes
        )["size_bytes"]

    def layer_bytes(n: str, b: int) -> float:
        return model_costs([layers[n]], {n: LayerPlan(b, act_bits[n]).choice}, 0)["size_bytes"]

    def kl(n: str, b: int) -> float:
        return layer_plan_omega(table.layers[n], LayerPlan(b, act_bits[n]), 0.0, False)

    plans, left = {}, sorted(BUDGETS.items(), key=lambda kv: -kv[1])
    while left:
        current = size(widths)
        while left and current <= left[0][1]:
            plans[left.pop(0)[0]] = dict(widths)
        steps = [
            (
                (kl(n, widths[n] - 1) - kl(n, widths[n]))
                / max(layer_bytes(n, widths[n]) - layer_bytes(n, widths[n] - 1), 1e-9),
                n,
            )
            for n in names
            if widths[n] > BITS[0]
        ]
        if not left or not steps:
            break
        widths[min(steps)[1]] -= 1
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=20, help="random 4 MB plans for the Spearman column")
    parser.add_argument("--metrics", default="kl_anchored,kl_quadratic,gauss_newton,hessian,output_kl")
    parser.add_argument(
        "--anchor-sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also kl_anchored at {ANCHOR_SWEEP} anchor samples",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="a cache to reuse (default: a fresh one, so every metric's seconds are measured)",
    )
    args = parser.parse_args()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="mpq-objective-")
    cache = Cache(Path(cache_dir))
    model, data = build_model(), load_views()
    fit, held = held_out_split(data)
    prepared = prepare_model(model, fit.x[:2])
    fit_reference, held_reference = (
        fp32_reference(prepared, fit, BATCH, cache),
        fp32_reference(prepared, held, BATCH, cache),
    )

    sensitivities, seconds = {}, {}
    for metric in args.metrics.split(","):
        started = time.perf_counter()
        # each metric in a cache of its own, so that none reads another's estimate (kl_anchored's includes kl_quadratic's)
        sensitivities[metric] = mpq.analyze(
            prepared, fit, metric=metric, cache_dir=Path(cache_dir) / metric, progress=False
        )
        seconds[metric] = time.perf_counter() - started
        print(f"{metric}: {seconds[metric]:.1f} s", flush=True)
    first = sensitivities[next(iter(sensitivities))]
    calibration = plan_calibration(prepared, mpq.solve(first, "4MB"), fit, fit_reference, BATCH, cache)

    def measured(widths: dict[str, int], acts: dict[str, int | None], name: str, on=(held, held_reference)):
        plan = Plan(
            layers={n: LayerPlan(b, acts[n]) for n, b in widths.items()}, model={"fingerprint": prepared.fingerprint}
        )
        return measure_plan(prepared, plan, on[0], on[1], name, BATCH, cache, calibration=calibration)

    rows = []  # (objective, budget, size, kl, agreement)
    for metric, sens in sensitivities.items():
        for budget in BUDGETS:
            plan = mpq.solve(sens, budget)
            m = measured(
                {n: lp.weight_bits for n, lp in plan.layers.items()},
                {n: lp.act_bits for n, lp in plan.layers.items()},
                f"{metric} {budget}",
            )
            rows.append((metric, budget, m.size_bytes, m.kl_to_fp32, m.fp32_agreement))
            print(rows[-1], flush=True)
    acts = {n: lp.act_bits for n, lp in mpq.solve(first, "4MB").layers.items()}
    if "output_kl" in sensitivities:
        started = time.perf_counter()
        greedy = greedy_plans(prepared, sensitivities["output_kl"], acts)
        seconds[GREEDY] = seconds["output_kl"] + time.perf_counter() - started
        for budget, widths in greedy.items():
            m = measured(widths, acts, f"greedy {budget}")
            rows.append((GREEDY, budget, m.size_bytes, m.kl_to_fp32, m.fp32_agreement))
            print(rows[-1], flush=True)

    rng = np.random.default_rng(0)
    base = mpq.solve(first, "4MB")
    randoms = [random_plan(prepared, base, BITS, rng) for _ in range(args.plans)]
    random_kl = [
        measured({n: lp.weight_bits for n, lp in p.layers.items()}, acts, f"random {i}").kl_to_fp32
        for i, p in enumerate(randoms)
    ]
    fit_kl = [
        measured(
            {n: lp.weight_bits for n, lp in p.layers.items()}, acts, f"random {i}", (fit, fit_reference)
        ).kl_to_fp32
        for i, p in enumerate(randoms)
    ]
    omegas = {metric: [plan_omega(sens, p, 0.0, False) for p in randoms] for metric, sens in sensitivities.items()}
    rho = {metric: (spearmanr(o, random_kl)[0], spearmanr(o, fit_kl)[0]) for metric, o in omegas.items()}
    sweep = (
        anchor_sweep(prepared, fit, cache_dir, randoms, random_kl, fit_kl, measured, acts) if args.anchor_sweep else []
    )
    write_report(rows, seconds, rho, randoms, (random_kl, fit_kl), prepared, args, sweep)


def anchor_sweep(prepared, fit, cache_dir, randoms, random_kl, fit_kl, measured, acts) -> list[tuple]:
    """kl_anchored at each count of ANCHOR_SWEEP anchor samples: (count, held-out KL per budget, both Spearmans, r range)."""
    rows = []
    for count in ANCHOR_SWEEP:
        sens = mpq.analyze(
            prepared,
            fit,
            metric="kl_anchored",
            probes=ProbeSettings(anchor_samples=count),
            cache_dir=Path(cache_dir) / "sweep",
            progress=False,
        )
        kls = [
            measured(
                {n: lp.weight_bits for n, lp in mpq.solve(sens, b).layers.items()}, acts, f"anchored {count} {b}"
            ).kl_to_fp32
            for b in BUDGETS
        ]
        omegas = [plan_omega(sens, p, 0.0, False) for p in randoms]
        ratios = [s.details["anchor_ratio"] for s in sens.layers.values()]
        rows.append(
            (count, kls, spearmanr(omegas, random_kl)[0], spearmanr(omegas, fit_kl)[0], min(ratios), max(ratios))
        )
        print(rows[-1], flush=True)
    return rows


def write_report(rows, seconds, rho, randoms, random_kls, prepared, args, sweep) -> None:
    random_kl, fit_kl = random_kls
    kl = {(o, b): k for o, b, _, k, _ in rows}
    objectives = list(dict.fromkeys(o for o, *_ in rows))
    sizes = [
        model_costs(prepared.graph.layers, {n: lp.choice for n, lp in p.layers.items()}, prepared.graph.float_bytes)[
            "size_bytes"
        ]
        for p in randoms
    ]
    lines = [
        "# The objective: which metric's plans come closest to a measured greedy search",
        "",
        f"`python reports/bench_objective.py --plans {args.plans} --metrics {args.metrics}` on {platform.machine()} "
        f"({torch.get_num_threads()} torch threads), torch {torch.__version__}, each metric in a fresh cache of its own, nothing else running. "
        "EfficientNet-Lite0; sensitivity and calibration on 150 views (15 photos), every KL measured on the 50 views of the other "
        "5 photos; default quantizer, 8-bit activations, widths 4-8. Seconds: each metric's `mpq.analyze` on the 150 views; the "
        "greedy search's are those of its measured table (output_kl's) plus the greedy steps.",
        "",
        "| objective | seconds | "
        + " | ".join(f"KL at {b}" for b in BUDGETS)
        + f" | Spearman(Ω, held-out KL), {len(randoms)} random plans | Spearman(Ω, KL on the fit views) |",
        "|---|---:|" + "---:|" * len(BUDGETS) + "---:|---:|",
    ]
    for o in objectives:
        cells = []
        for b in BUDGETS:
            k, g = kl.get((o, b)), kl.get((GREEDY, b))
            cells.append("—" if k is None else f"{k:.4f}" + (f" ({k / g:.2f}x)" if g and o != GREEDY else ""))
        lines.append(
            f"| {o} | {seconds.get(o, float('nan')):.1f} | "
            + " | ".join(cells)
            + (f" | {rho[o][0]:.3f} | {rho[o][1]:.3f} |" if o in rho else " | — | — |")
        )
    lines += [
        "",
        "In brackets: the plan's KL over the greedy plan's at the same budget (under 1: better than greedy).",
        "",
        f"Random plans: sizes {min(sizes):,.0f}-{max(sizes):,.0f} B, held-out KL {min(random_kl):.4f}-{max(random_kl):.4f}, "
        f"KL on the fit views {min(fit_kl):.4f}-{max(fit_kl):.4f}. The plans' own KL on the fit views ranks their held-out KL at "
        f"Spearman {spearmanr(fit_kl, random_kl)[0]:.3f}: no Ω learned on the fit views can be expected to rank 5 held-out photos much better.",
        "",
        "Every plan:",
        "",
        "| objective | budget | size (B) | KL(FP32‖q), held out | agreement |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {o} | {b} | {s:,} | {k:.4f} | {100 * a:.1f}% |" for o, b, s, k, a in rows]
    if sweep:
        greedy = {b: kl[(GREEDY, b)] for b in BUDGETS if (GREEDY, b) in kl}
        lines += [
            "",
            "kl_anchored by the number of samples its one-layer KLs are measured on (`anchor_samples`, default "
            f"{ProbeSettings().anchor_samples}); KL held out, in brackets over the greedy plan's:",
            "",
            "| anchor samples | "
            + " | ".join(f"KL at {b}" for b in BUDGETS)
            + " | Spearman, held out | Spearman, fit views | r_l, min-max |",
            "|---:|" + "---:|" * len(BUDGETS) + "---:|---:|---:|",
        ]
        for count, kls, held_rho, fit_rho, low, high in sweep:
            cells = [f"{k:.4f}" + (f" ({k / greedy[b]:.2f}x)" if b in greedy else "") for b, k in zip(BUDGETS, kls)]
            lines.append(
                f"| {count} | " + " | ".join(cells) + f" | {held_rho:.3f} | {fit_rho:.3f} | {low:.2f}-{high:.2f} |"
            )
    (HERE / "objective.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
