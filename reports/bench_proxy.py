"""Proxy fidelity: does Omega predict the measured damage? Default model, 4 MB budget.

Run:  python reports/bench_proxy.py [--plans 20] [--probes 16] [--quantizer PRESET] [--metrics hessian,kl_quadratic,output_kl] [--cache-dir DIR]
Writes reports/proxy_fidelity.md and reports/proxy-fidelity.png.

Random plans: mpq.verify.proxy.random_plan (as `mpq search --proxy-check`): widths drawn uniformly from 4-8 per
layer (seeded), repaired into [3.5 MB, 4 MB] like the optimal one. For each
plan and the optimal plan: the predicted total Omega (trace margin 0 and 2), the plain weight error
sum_l ||Q_b(W_l) - W_l||^2 / n_l (no trace: a control), and the measured KL(FP32 || q) and agreement
with FP32 (200 views, the quantizer preset given; default: mpq's default). Spearman rank correlations
between them, and, to look into what limits them: the per-channel Omega (sum over channels of
Tr(H_c)/n_c ||Q(W_c) - W_c||^2), Omega at other trace margins, and Pearson's r of log Omega with log KL.
Every metric in --metrics predicts the same plans (the random ones are drawn from the hessian plan's
budget); each metric's own 4 MB plan is measured too, and the "single" predictor sums the
output_kl metric's measured one-layer KLs (when output_kl is among the metrics).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

import mpq
from mpq.cache import Cache, default_cache_dir
from mpq.inputs.graph import prepare_model
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.plan import LayerPlan, Plan
from mpq.quant.quantizer import resolve_quantizer
from mpq.quant.reference import fp32_reference
from mpq.solver.omega import plan_omega
from mpq.verify.measure import measure_plan, plan_calibration
from mpq.verify.proxy import random_plan

HERE = Path(__file__).parent
BATCH = 25
MAX_SECONDS = 5000  # as in bench_quantizers.py: the cached sensitivity's setting (it stopped at max_probes)
WIDTHS = (4, 5, 6, 7, 8)


def channel_omega(sens, widths: dict[str, int], margin: float) -> float:
    """sum_l sum_c max(Tr(H_c) + margin stderr_c, 0) / n_c * ||Q_b(W_c) - W_c||^2."""
    total = 0.0
    for n, b in widths.items():
        s = sens.layers[n]
        per_channel_params = s.layer.params / len(s.channel_trace)
        total += float(
            (
                np.maximum(s.channel_trace + margin * s.channel_trace_stderr, 0)
                / per_channel_params
                * s.channel_quant_error[b]
            ).sum()
        )
    return total


def weight_error(sens, widths: dict[str, int]) -> float:
    return sum(sens.layers[n].quant_error[b] / sens.layers[n].layer.params for n, b in widths.items())


def plot(rows: list[dict], path: Path, panels: list[tuple[str, str, float]]) -> None:
    """One panel per predictor: its value against the measured KL, random plans, the metrics' plans and uniform W6A8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label, rho) in zip(axes[0], panels):
        for kind, style in (
            ("random", dict(color="tab:blue", marker="o", label="random plans in [3.5, 4] MB")),
            ("plan", dict(color="tab:red", marker="*", s=160, label="the metrics' 4 MB plans")),
            ("uniform", dict(color="tab:green", marker="s", label="uniform W6A8")),
        ):
            pts = [r for r in rows if r["kind"] == kind or (kind == "plan" and r["kind"].endswith(" plan"))]
            ax.scatter([r[key] for r in pts], [r["kl"] for r in pts], **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label.split(":")[0].split(",")[0], fontsize=8)
        ax.set_ylabel("measured KL(FP32 ‖ q)")
        ax.set_title(f"Spearman ρ = {rho:.2f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_section(prepared, sensitivities: dict) -> list[str]:
    """One layer at a time: each predictor's Ω_l(b) against the measured one-layer KL (output_kl), by layer kind."""
    measured = sensitivities["output_kl"]
    kinds = {layer.name: layer.kind for layer in prepared.graph.layers}
    lines = [
        "",
        "One layer quantized at a time (the rest FP32, no activation quantization): each predictor's Ω_l(b) against the measured "
        "KL (output_kl's Ω), over the 50 layers × widths 4-8. The ratio predictor / measured is only meaningful up to one "
        "scale per predictor (Tr(H)/n·‖ΔW‖² has no ½ and uses the labels' loss), so the table gives its median per layer kind "
        "and the spread; Spearman ρ over all 250 (layer, width) pairs.",
        "",
        "| predictor | ρ with one-layer KL | median ratio, depthwise convs | median ratio, other layers | ratio 10th-90th percentile |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric in (m for m in ("hessian", "kl_quadratic", "fisher", "output_mse") if m in sensitivities):
        pairs = [
            (sensitivities[metric].layers[n].omega(b), measured.layers[n].omega(b), kinds[n])
            for n in kinds
            for b in WIDTHS
        ]
        ratios = np.array([p / m for p, m, _ in pairs])
        by_kind = lambda depthwise: float(np.median([p / m for p, m, k in pairs if ("depthwise" in k) == depthwise]))  # noqa: E731
        lines.append(
            f"| {metric} | {spearmanr([p for p, _, _ in pairs], [m for _, m, _ in pairs])[0]:.3f} | {by_kind(True):.3g} | {by_kind(False):.3g} | "
            f"{np.percentile(ratios, 10):.3g}-{np.percentile(ratios, 90):.3g} |"
        )
    return lines


PREDICTORS = {
    "hessian": [
        ("omega2", 2.0, "Ω = Tr(H)/n·‖ΔW‖², trace margin 2 (the default)"),
        ("omega0", 0.0, "Ω = Tr(H)/n·‖ΔW‖², margin 0 (plain HAWQ-V2)"),
    ],
    "kl_quadratic": [("klq0", 0.0, "kl_quadratic Ω = ½E[δᵀMδ], margin 0"), ("klq2", 2.0, "kl_quadratic Ω, margin 2")],
    "output_kl": [("okl", 0.0, "output_kl Ω: sum of measured one-layer KLs")],
    "fisher": [("fisher2", 2.0, "fisher Ω = Tr(F)/n·‖ΔW‖², margin 2")],
    "output_mse": [("omse", 0.0, "output_mse Ω: sum of measured one-layer output MSEs")],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantizer", default="default", help="quantizer preset (mpq.quantizer.PRESETS)")
    parser.add_argument(
        "--loss",
        default=None,
        help="the sensitivity loss (mpq.sensitivity.losses: labels, fp32, kl ...; default: labels)",
    )
    parser.add_argument(
        "--metrics",
        default="hessian,kl_quadratic,output_kl",
        help="comma-separated sensitivity metrics to compare (hessian first)",
    )
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    if metrics[0] != "hessian":
        parser.error("--metrics must start with hessian (the random plans are drawn from its plan)")
    cache = Cache(Path(args.cache_dir))
    model, data = build_model(), load_views()
    prepared = prepare_model(model, data.x[:2])
    quantizer = resolve_quantizer(args.quantizer)
    sensitivities, seconds = {}, {}
    for metric in metrics:
        started = time.perf_counter()
        probing = (
            {"max_probes": args.probes, "max_seconds": MAX_SECONDS} if metric in ("hessian", "fisher") else {}
        )  # the others probe nothing
        sensitivities[metric] = mpq.analyze(
            prepared,
            data,
            cache_dir=args.cache_dir,
            progress=False,
            quantizer=quantizer,
            loss=args.loss,
            metric=metric,
            **probing,
        )
        took = time.perf_counter() - started
        seconds[metric] = f"{took:.0f} s" if took > 5 else "from the cache"
        print(f"{metric}: {seconds[metric]}", flush=True)
    sens = sensitivities["hessian"]
    optimal = mpq.solve(sens, "4MB")
    reference = fp32_reference(prepared, data, BATCH, cache)
    calibration = plan_calibration(prepared, optimal, data, reference, BATCH, cache, quantizer)
    rng = np.random.default_rng(args.seed)
    plans = [
        (f"{m} plan", {n: lp.weight_bits for n, lp in mpq.solve(sensitivities[m], "4MB").layers.items()})
        for m in metrics
    ]
    plans += [("uniform", {n: 6 for n in optimal.layers})]
    plans += [
        ("random", {n: lp.weight_bits for n, lp in random_plan(prepared, optimal, WIDTHS, rng).layers.items()})
        for _ in range(args.plans)
    ]
    predictors = [(key, m, margin, label) for m in metrics for key, margin, label in PREDICTORS[m]]
    rows = []
    for i, (kind, widths) in enumerate(plans):
        plan = Plan(layers={n: LayerPlan(b, 8) for n, b in widths.items()}, model={"fingerprint": prepared.fingerprint})
        m = measure_plan(prepared, plan, data, reference, kind, BATCH, cache, calibration=calibration)
        row = dict(
            kind=kind,
            size=m.size_bytes,
            werr=weight_error(sens, widths),
            chan2=channel_omega(sens, widths, 2.0),
            kl=m.kl_to_fp32,
            agreement=m.fp32_agreement,
            top1=m.top1,
            mean_bits=float(np.mean(list(widths.values()))),
        )
        row.update({key: plan_omega(sensitivities[metric], plan, margin) for key, metric, margin, _ in predictors})
        rows.append(row)
        print(i, kind, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    names = {key: label for key, _, _, label in predictors}
    names.update(
        {"werr": "Σ ‖Q(W)−W‖²/n, no trace (control)", "chan2": "per-channel Ω = Σ_c Tr(H_c)/n_c·‖ΔW_c‖², margin 2"}
    )
    kl = [r["kl"] for r in rows]
    randoms = [r for r in rows if r["kind"] == "random"]
    rho = {
        key: (
            spearmanr([r[key] for r in rows], kl)[0],
            spearmanr([r[key] for r in randoms], [r["kl"] for r in randoms])[0],
            spearmanr([r[key] for r in rows], [1 - r["agreement"] for r in rows])[0],
            pearsonr(np.log([r[key] for r in rows]), np.log(kl))[0],
        )
        for key in names
    }
    suffix = f"-{args.loss}" if args.loss else ""
    plot(
        rows,
        HERE / f"proxy-fidelity{suffix}.png",
        [(k, names[k], rho[k][0]) for k in ("omega2", "klq0", "okl") if k in names],
    )
    lines = [
        "# Proxy fidelity: does Ω predict the measured damage?",
        "",
        f"`python reports/bench_proxy.py --plans {args.plans} --probes {args.probes} --quantizer {args.quantizer} --metrics {args.metrics}"
        + (f" --loss {args.loss}" if args.loss else "")
        + f"`: EfficientNet-Lite0, 200 views, "
        f"the quantizer preset `{args.quantizer}` ({calibration.quantizer.describe()}), 8-bit activations. Hessian traces from "
        f"per-layer Hutchinson probing ({min(s.probes for s in sens.layers.values())}-{max(s.probes for s in sens.layers.values())} probes per layer, "
        f"at most {args.probes}, sensitivity loss {sens.loss}). {len(randoms)} random plans "
        f"(mpq.verify.proxy.random_plan: widths 4-8 drawn uniformly per layer, seed {args.seed}, repaired into [3.5 MB, 4 MB]: sizes "
        f"{min(r['size'] for r in randoms):,}-{max(r['size'] for r in randoms):,} B), each metric's own 4 MB plan and uniform W6A8: "
        f"{len(rows)} plans in all.",
        "",
        "Seconds to compute each metric on the 200 views in this run (2 CPU cores): "
        + ", ".join(f"{m} {seconds[m]}" for m in metrics)
        + '. Each metric\'s time measured alone, with its command: README, "Proxy fidelity".',
        "",
        "| predictor | Spearman ρ with KL(FP32‖q), all plans | ρ, random plans only | ρ with disagreement (1 − agreement) | Pearson r, log predictor vs log KL |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {names[k]} | {v[0]:.3f} | {v[1]:.3f} | {v[2]:.3f} | {v[3]:.3f} |" for k, v in rho.items()]
    lines += [
        "",
        "Each metric's own 4 MB plan, measured:",
        "",
        "| metric | size (B) | KL | agreement | top-1 | random plans with a larger KL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows[: len(metrics)]:
        lines.append(
            f"| {r['kind'][:-5]} | {r['size']:,} | {r['kl']:.4f} | {100 * r['agreement']:.1f}% | {100 * (r['top1'] or 0):.1f}% | {sum(x['kl'] > r['kl'] for x in randoms)} of {len(randoms)} |"
        )
    if "output_kl" in sensitivities:
        lines += layer_section(prepared, sensitivities)
    lines += ["", f"![Ω against KL](proxy-fidelity{suffix}.png)", ""]
    keys = [k for k in ("omega2", "klq0", "okl", "werr") if k in names]
    lines += [
        "| plan | size (B) | mean bits | "
        + " | ".join(names[k].split(":")[0].split(",")[0] for k in keys)
        + " | KL | agreement | top-1 |",
        "|---|---:|---:|" + "---:|" * len(keys) + "---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["kl"]):
        lines.append(
            f"| {r['kind']} | {r['size']:,} | {r['mean_bits']:.2f} | "
            + " | ".join(f"{r[k]:.4g}" for k in keys)
            + f" | {r['kl']:.4f} | {100 * r['agreement']:.1f}% | {100 * (r['top1'] or 0):.1f}% |"
        )
    lines.append("")
    (HERE / f"proxy_fidelity{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
