"""Proxy fidelity: does Omega predict the measured damage? Default model, 4 MB budget.

Run:  python reports/bench_proxy.py [--plans 20] [--probes 16] [--quantizer PRESET] [--cache-dir DIR]
Writes reports/proxy_fidelity.md and reports/proxy-fidelity.png.

Random plans: mpq.proxy.random_plan (as `mpq search --proxy-check`): widths drawn uniformly from 4-8 per
layer (seeded), repaired into [3.5 MB, 4 MB] like the optimal one. For each
plan and the optimal plan: the predicted total Omega (trace margin 0 and 2), the plain weight error
sum_l ||Q_b(W_l) - W_l||^2 / n_l (no trace: a control), and the measured KL(FP32 || q) and agreement
with FP32 (200 views, the quantizer preset given; default: mpq's default). Spearman rank correlations
between them, and, to look into what limits them: the per-channel Omega (sum over channels of
Tr(H_c)/n_c ||Q(W_c) - W_c||^2), Omega at other trace margins, and Pearson's r of log Omega with log KL.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

import mpq
from mpq.cache import Cache, default_cache_dir
from mpq.graph import prepare_model
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.plan import LayerPlan, Plan
from mpq.proxy import random_plan
from mpq.quantizer import resolve_quantizer
from mpq.verify import fp32_reference, measure_plan, plan_calibration

HERE = Path(__file__).parent
BATCH = 25
MAX_SECONDS = 5000  # as in bench_quantizers.py: the cached sensitivity's setting (it stopped at max_probes)
WIDTHS = (4, 5, 6, 7, 8)


def omega(sens, widths: dict[str, int], margin: float) -> float:
    return sum(sens.layers[n].omega(b, margin) for n, b in widths.items())


def channel_omega(sens, widths: dict[str, int], margin: float) -> float:
    """sum_l sum_c max(Tr(H_c) + margin stderr_c, 0) / n_c * ||Q_b(W_c) - W_c||^2."""
    total = 0.0
    for n, b in widths.items():
        s = sens.layers[n]
        per_channel_params = s.layer.params / len(s.channel_trace)
        total += float((np.maximum(s.channel_trace + margin * s.channel_trace_stderr, 0) / per_channel_params * s.channel_quant_error[b]).sum())
    return total


def weight_error(sens, widths: dict[str, int]) -> float:
    return sum(sens.layers[n].quant_error[b] / sens.layers[n].layer.params for n, b in widths.items())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, margin in zip(axes, (2, 0)):
        for kind, style in (("random", dict(color="tab:blue", marker="o", label="random plans in [3.5, 4] MB")), ("optimal", dict(color="tab:red", marker="*", s=160, label="mpq's plan")), ("uniform", dict(color="tab:green", marker="s", label="uniform W6A8"))):
            pts = [r for r in rows if r["kind"] == kind]
            ax.scatter([r[f"omega{margin}"] for r in pts], [r["kl"] for r in pts], **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"predicted total Ω (trace margin {margin})")
        ax.set_ylabel("measured KL(FP32 ‖ q)")
        ax.set_title(f"margin {margin}: Spearman ρ = {spearmanr([r[f'omega{margin}'] for r in rows], [r['kl'] for r in rows])[0]:.2f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantizer", default="default", help="quantizer preset (mpq.quantizer.PRESETS)")
    parser.add_argument("--loss", default=None, help="the sensitivity loss (mpq.losses: labels, fp32, kl ...; default: labels)")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    cache = Cache(Path(args.cache_dir))
    model, data = build_model(), load_views()
    prepared = prepare_model(model, data.x[:2])
    quantizer = resolve_quantizer(args.quantizer)
    sens = mpq.analyze(prepared, data, max_probes=args.probes, max_seconds=MAX_SECONDS, cache_dir=args.cache_dir, progress=False, quantizer=quantizer, loss=args.loss)
    optimal = mpq.solve(sens, "4MB")
    reference = fp32_reference(prepared, data, BATCH, cache)
    calibration = plan_calibration(prepared, optimal, data, reference, BATCH, cache, quantizer)
    rng = np.random.default_rng(args.seed)
    plans = [("optimal", {n: lp.weight_bits for n, lp in optimal.layers.items()}), ("uniform", {n: 6 for n in optimal.layers})]
    plans += [("random", {n: lp.weight_bits for n, lp in random_plan(prepared, optimal, WIDTHS, rng).layers.items()}) for _ in range(args.plans)]
    rows = []
    for i, (kind, widths) in enumerate(plans):
        plan = Plan(layers={n: LayerPlan(b, 8) for n, b in widths.items()}, model={"fingerprint": prepared.fingerprint})
        m = measure_plan(prepared, plan, data, reference, kind, BATCH, cache, calibration=calibration)
        rows.append(
            dict(kind=kind, size=m.size_bytes, omega0=omega(sens, widths, 0.0), omega1=omega(sens, widths, 1.0), omega2=omega(sens, widths, 2.0), omega3=omega(sens, widths, 3.0), omega4=omega(sens, widths, 4.0), chan0=channel_omega(sens, widths, 0.0), chan2=channel_omega(sens, widths, 2.0), werr=weight_error(sens, widths), kl=m.kl_to_fp32, agreement=m.fp32_agreement, top1=m.top1, mean_bits=float(np.mean(list(widths.values()))))
        )
        print(i, kind, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    kl = [r["kl"] for r in rows]
    disagreement = [1 - r["agreement"] for r in rows]
    rho = {
        key: (spearmanr([r[key] for r in rows], kl)[0], spearmanr([r[key] for r in rows], disagreement)[0])
        for key in ("omega2", "omega0", "werr", "omega1", "omega3", "omega4", "chan2", "chan0")
    }
    log_r = {key: pearsonr(np.log([r[key] for r in rows]), np.log(kl))[0] for key in rho}
    randoms = [r for r in rows if r["kind"] == "random"]
    rho_random = spearmanr([r["omega2"] for r in randoms], [r["kl"] for r in randoms])[0]
    opt = rows[0]
    suffix = f"-{args.loss}" if args.loss else ""
    plot(rows, HERE / f"proxy-fidelity{suffix}.png")
    names = {
        "omega2": "Ω, trace margin 2 (the default)",
        "omega0": "Ω, trace margin 0 (plain HAWQ-V2)",
        "werr": "Σ ‖Q(W)−W‖²/n, no trace (control)",
        "omega1": "Ω, trace margin 1",
        "omega3": "Ω, trace margin 3",
        "omega4": "Ω, trace margin 4",
        "chan2": "per-channel Ω, margin 2",
        "chan0": "per-channel Ω, margin 0",
    }
    lines = [
        "# Proxy fidelity: does Ω predict the measured damage?",
        "",
        f"`python reports/bench_proxy.py --plans {args.plans} --probes {args.probes} --quantizer {args.quantizer}"
        + (f" --loss {args.loss}" if args.loss else "") + f"`: EfficientNet-Lite0, 200 views, sensitivity loss {sens.loss}, "
        f"the quantizer preset `{args.quantizer}` ({calibration.quantizer.describe()}), 8-bit activations, Hessian traces from "
        f"per-layer Hutchinson probing ({min(s.probes for s in sens.layers.values())}-{max(s.probes for s in sens.layers.values())} probes per layer, "
        f"at most {args.probes}). {len(randoms)} random plans "
        f"(mpq.proxy.random_plan: widths 4-8 drawn uniformly per layer, seed {args.seed}, repaired into [3.5 MB, 4 MB]: sizes "
        f"{min(r['size'] for r in randoms):,}-{max(r['size'] for r in randoms):,} B), mpq's 4 MB plan and uniform W6A8: "
        f"{len(rows)} plans in all. {sum(s.hessian_trace <= 2 * s.hessian_trace_stderr for s in sens.layers.values())} of the "
        f"{len(sens.layers)} layer traces lie within two standard errors of 0.",
        "",
        "| predictor | Spearman ρ with KL(FP32‖q) | Spearman ρ with disagreement (1 − agreement) | Pearson r, log predictor vs log KL |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {names[k]} | {v[0]:.3f} | {v[1]:.3f} | {log_r[k]:.3f} |" for k, v in rho.items()]
    better = sum(r["kl"] > opt["kl"] for r in randoms)
    lines += [
        "",
        f"mpq's plan: Ω (margin 2) {opt['omega2']:.4g}, KL {opt['kl']:.4f}, agreement {100 * opt['agreement']:.1f}%; "
        f"{better} of {len(randoms)} random plans have a larger KL. Random plans: KL {min(r['kl'] for r in randoms):.4f}-"
        f"{max(r['kl'] for r in randoms):.4f}, agreement {100 * min(r['agreement'] for r in randoms):.1f}-{100 * max(r['agreement'] for r in randoms):.1f}%. "
        f"Over the random plans alone (without mpq's plan and W6A8), Spearman ρ(Ω margin 2, KL) = {rho_random:.3f}.",
        "",
        f"![Ω against KL](proxy-fidelity{suffix}.png)",
        "",
        "| plan | size (B) | mean bits | Ω margin 2 | Ω margin 0 | Σ‖Q(W)−W‖²/n | KL | agreement | top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["omega2"]):
        lines.append(
            f"| {r['kind']} | {r['size']:,} | {r['mean_bits']:.2f} | {r['omega2']:.4g} | {r['omega0']:.4g} | {r['werr']:.4g} | {r['kl']:.4f} | {100 * r['agreement']:.1f}% | {100 * (r['top1'] or 0):.1f}% |"
        )
    lines.append("")
    (HERE / f"proxy_fidelity{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
