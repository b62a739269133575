"""Human-readable output of a search: the per-layer table, the comparison table, report.md and plots."""

from __future__ import annotations

from pathlib import Path

from mpq.budget import format_bytes, format_cost
from mpq.files import write_json_atomic, write_text_atomic
from mpq.plan import Plan
from mpq.sensitivity import Sensitivity
from mpq.solver import Problem, Solution
from mpq.verify import Measurement, Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def layer_table(sensitivity: Sensitivity, plan: Plan | None = None) -> str:
    """Markdown table: per layer its size, trace +- stderr, and (with a plan) widths and Omega."""
    head = "| layer | kind | params | Tr(H) ± stderr | probes |"
    rule = "|---|---|---:|---:|---:|"
    if plan is not None:
        head += " W | A | Ω |"
        rule += "---:|---:|---:|"
    lines = [head + " note |", rule + "---|"]
    for name, s in sensitivity.layers.items():
        row = f"| {name} | {s.layer.kind} | {s.layer.params:,} | {s.hessian_trace:.4g} ± {s.hessian_trace_stderr:.2g} | {s.probes} |"
        if plan is not None:
            lp = plan.layers[name]
            margin = plan.settings.get("trace_margin", 0.0)
            row += f" {lp.weight_bits} | {lp.act_bits or 'float'} | {s.omega(lp.weight_bits, margin):.3g} |"
        lines.append(row + f" {s.warning(sensitivity.settings.tol) or ''} |")
    return "\n".join(lines)


def comparison_table(report: Report) -> str:
    lines = [
        "| model | size | fits budget | top-1 | agreement with FP32 | KL(FP32‖q) | cosine to FP32 |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| FP32 (BatchNorm folded) | {format_bytes(report.fp32.size_bytes)} | - | {_pct(report.fp32.top1)} | 100.0% | 0 | 1 |",
    ]
    rows: list[Measurement] = [report.plan, *report.baselines]
    for m in rows:
        lines.append(
            f"| {m.name} | {format_bytes(m.size_bytes)} | {'yes' if m.fits_budget else 'no'} | {_pct(m.top1)} | "
            f"{_pct(m.fp32_agreement)} | {m.kl_to_fp32:.4f} | {'-' if m.cosine_to_fp32 is None else f'{m.cosine_to_fp32:.5f}'} |"
        )
    return "\n".join(lines)


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def sqnr_table(report: Report) -> str:
    """Markdown table: per layer the SQNR (dB) of its weights, its input quantizer and its output vs FP32."""
    lines = ["| layer | W | A | weight SQNR (dB) | input SQNR (dB) | output SQNR vs FP32 (dB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in report.layer_sqnr:
        lines.append(f"| {r.name} | {r.weight_bits} | {r.act_bits or 'float'} | {_db(r.weight_sqnr_db)} | {_db(r.input_sqnr_db)} | {_db(r.output_sqnr_db)} |")
    return "\n".join(lines)


def plot_layers(sensitivity: Sensitivity, plan: Plan, path: Path) -> None:
    """Bars: per-layer weight width, and per-layer trace per parameter with error bars (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivity.layers)
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.22), 7), sharex=True)
    top.bar(x, [plan.layers[n].weight_bits for n in names], color="tab:blue")
    top.set_ylabel("weight bits")
    top.set_title("mpq plan: widths and Hessian traces per layer")
    traces = [max(sensitivity.layers[n].hessian_trace, 1e-12) / sensitivity.layers[n].layer.params for n in names]
    errors = [sensitivity.layers[n].hessian_trace_stderr / sensitivity.layers[n].layer.params for n in names]
    bottom.bar(x, traces, yerr=errors, color="tab:orange", capsize=1.5)
    bottom.set_yscale("log")
    bottom.set_ylabel("Tr(H) / params")
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


OPTIONAL_PLOTS = {  # written by other commands into the same folder; report.md shows them when present
    "pareto.png": "Pareto front (`mpq pareto`): measured quality against size",
    "proxy-fidelity.png": "Proxy fidelity: predicted Ω against measured KL (reports/bench_proxy.py)",
}


def markdown_report(sensitivity: Sensitivity, plan: Plan, report: Report, plots: tuple[str, ...] = ()) -> str:
    """report.md; `plots` names optional plot files (OPTIONAL_PLOTS) present beside it."""
    budgets = ", ".join(b.text for b in plan.budgets)
    warnings = sensitivity.warnings()
    parts = [
        "# mpq report",
        "",
        f"Budget: {budgets}. Candidate weight widths: {plan.settings.get('bits')}; activations: "
        f"{plan.settings.get('act_bits') or 'float'}"
        + (f" ({plan.settings['act_bits_choice']})" if plan.settings.get("act_bits_choice") else "")
        + f". Sensitivity loss: {sensitivity.loss}; "
        f"{max(s.probes for s in sensitivity.layers.values())} Hutchinson probes (stopped by {sensitivity.stop_reason})"
        + (" — read from cache." if sensitivity.from_cache else "."),
        "",
        f"Quantizer: {report.quantizer.describe()} (the same for Ω's quantization errors, the plan, the baselines and the exports).",
        "",
        f"Predicted size {format_bytes(plan.predicted['size_bytes'])}, measured from the exported tensors "
        f"{format_bytes(report.plan.size_bytes)}; {report.plan.bops / 1e9:.2f} GBOPs; total Ω {plan.predicted['omega']:.4g}.",
        "",
        "## Plan against FP32 and uniform widths",
        "",
        comparison_table(report),
        "",
        f"Evaluated on {report.plan.n_eval} inputs. Baselines: uniform W8 and every candidate uniform width that fits the budget, "
        "with the same activation settings.",
        "",
        "Per layer: the weight width chosen (top) beside the Hessian trace per parameter with its standard error (bottom).",
        "",
        "![layers](layers.png)",
        "",
    ]
    for name in plots:
        parts += [f"{OPTIONAL_PLOTS[name]}:", "", f"![{name}]({name})", ""]
    parts += [
        "## Layers",
        "",
        layer_table(sensitivity, plan),
        "",
    ]
    if warnings:
        parts += ["## Warnings", ""] + [f"- {n}: {w}" for n, w in warnings.items()] + [""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    if report.layer_sqnr:
        parts += [
            "## Per-layer SQNR",
            "",
            "10·log10(Σs² / Σ(s − s′)²) over the first inputs (mpq.verify.SQNR_SAMPLES): weights against the exported "
            "weights; each input before and after its quantizer; each output against the FP32 model's (error accumulated so far).",
            "",
            sqnr_table(report),
            "",
        ]
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings_s.items())
    parts += ["## Timings", "", timings, ""]
    return "\n".join(parts)


def write_outputs(out_dir: Path, sensitivity: Sensitivity, plan: Plan, report: Report) -> list[Path]:
    """plan.json, report.json, report.md and layers.png, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "plan.json", out_dir / "report.json", out_dir / "report.md", out_dir / "layers.png"]
    plot_layers(sensitivity, plan, paths[3])
    plots = tuple(name for name in OPTIONAL_PLOTS if (out_dir / name).exists())
    write_text_atomic(paths[2], markdown_report(sensitivity, plan, report, plots))
    write_json_atomic(paths[1], report.to_json())
    plan.save(paths[0])
    return paths


def solution_table(problem: Problem, solution: Solution) -> str:
    """Markdown table of a solved problem: widths and Omega per layer, then each budget against its total."""
    lines = ["| layer | W | A | Ω |", "|---|---:|---:|---:|"]
    for name in problem.layers:
        c = solution.choices[name]
        lines.append(f"| {name} | {c.weight_bits} | {c.act_bits or 'float'} | {problem.omega[name][c]:.4g} |")
    lines += [f"| total | | | {solution.objective:.6g} |", ""]
    for budget in problem.budgets:
        lines.append(f"{budget.kind}: {format_cost(budget.kind, solution.costs[budget.kind])} within {budget.text}")
    return "\n".join(lines)
