"""Human-readable output of a search: the per-layer table, the comparison table, report.md and plots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mpq.cost.budget import format_bytes, format_cost
from mpq.files import atomic_path, write_json_atomic, write_text_atomic
from mpq.plan import LayerPlan, Plan
from mpq.report.summary import summary
from mpq.report.text import pct
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of
from mpq.solver.milp import solver_note
from mpq.solver.omega import layer_plan_omega, searched_with
from mpq.solver.problem import Problem, Solution
from mpq.verify.report import Measurement, Report

if TYPE_CHECKING:
    from mpq.verify.report import ProxyCheck


def _layer_value(sensitivity: Sensitivity, name: str) -> tuple[float, float | None]:
    s = sensitivity.layers[name]
    return metric_of(sensitivity.metric).layer_shown(s)


def _input_value(sensitivity: Sensitivity, name: str) -> tuple[float, float | None] | None:
    act = sensitivity.layers[name].activation
    return (
        None
        if act is None
        else metric_of(sensitivity.metric).shown(act.trace, act.trace_stderr, act.details, act.measured_omega)
    )


def _pm(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    return f"{value[0]:.4g}" + ("" if value[1] is None else f" ± {value[1]:.2g}")


def table_preamble(sensitivity: Sensitivity) -> list[str]:
    """The lines above a sensitivity table: how many layers a cap stopped above the tolerance (one line,
    only when some did), then the estimate's notes."""
    short = sensitivity.stopped_short()
    return ([short.line()] if short else []) + [f"note: {text}" for text in sensitivity.notes]


def layer_table(sensitivity: Sensitivity, plan: Plan | None = None) -> str:
    """Markdown table: per layer its size, trace ± stderr (or the metric's number), its estimator, the input's
    with activation sensitivity, (with a plan) widths and Ω, and a warning where the estimate is not
    trustworthy; above it, the table_preamble lines."""
    label = metric_of(sensitivity.metric).label
    inputs = sensitivity.has_activations
    head = f"| layer | kind | params | {label} ± error | probes | estimator |" + (
        f" input {label} ± error |" if inputs else ""
    )
    rule = "|---|---|---:|---:|---:|---|" + ("---:|" if inputs else "")
    if plan is not None:
        head += " W | A | Ω |"
        rule += "---:|---:|---:|"
    preamble = table_preamble(sensitivity)
    lines = [*preamble, *([""] if preamble else []), head + " note |", rule + "---|"]
    warnings = sensitivity.warnings()
    for name, s in sensitivity.layers.items():
        row = f"| {name} | {s.layer.kind} | {s.layer.params:,} | {_pm(_layer_value(sensitivity, name))} | {s.probes} | {s.estimator} |"
        if inputs:
            row += f" {_pm(_input_value(sensitivity, name))} |"
        if plan is not None:
            lp = plan.layers[name]
            omega = layer_plan_omega(s, lp, *searched_with(plan))
            row += f" {weight_bits_text(lp)} | {lp.act_bits or 'float'} | {omega:.3g} |"
        lines.append(row + f" {warnings.get(name, '')} |")
    return "\n".join(lines)


def _probes_text(sensitivity: Sensitivity) -> str:
    """How many probes the estimates used: per layer (their range) for per-layer Hutchinson probing."""
    counts = [s.probes for s in sensitivity.layers.values()]
    if metric_of(sensitivity.metric).estimator != "hutchinson":
        return f"{max(counts)} probes/samples/iterations"
    if sensitivity.settings.probing == "per-layer":
        spread = f"{min(counts)}-{max(counts)}" if min(counts) != max(counts) else f"{max(counts)}"
        return f"{spread} Hutchinson probes per layer (per-layer probing)"
    return f"{max(counts)} Hutchinson probes (all layers per probe)"


def weight_bits_text(lp: LayerPlan) -> str:
    """'6', or for per-channel widths the range and the mean bits per weight, e.g. '4-8 (5.62)'."""
    if not lp.channel_bits:
        return str(lp.weight_bits)
    low = min(r.weight_bits for r in lp.channel_bits)
    return str(lp.weight_bits) if low == lp.weight_bits else f"{low}-{lp.weight_bits} ({lp.mean_weight_bits():.2f})"


def comparison_table(report: Report) -> str:
    """Markdown table of the plan, FP32 and the baselines: agreement and KL for logits (not for embeddings, where
    they mean nothing), cosine, a causal LM's perplexity, and with a latency model the predicted latencies."""
    logits = not report.outputs.embeddings
    ppl = report.fp32.perplexity is not None
    latency = bool(report.latency_model)
    columns = (
        ["model", "size", "fits budget", "top-1" if logits else "top-1 (nearest FP32 class centroid)"]
        + (["agreement with FP32", "KL(FP32‖q)"] if logits else [])
        + ["cosine to FP32"]
    )
    columns += (["perplexity"] if ppl else []) + ["bits per weight"] + (["predicted latency"] if latency else [])
    fp32 = (
        ["FP32 (BatchNorm folded)", format_bytes(report.fp32.size_bytes), "-", pct(report.fp32.top1)]
        + (["100.0%", "0"] if logits else [])
        + ["1"]
    )
    fp32 += ([f"{report.fp32.perplexity:.3f}"] if ppl else []) + ["32"] + (["-"] if latency else [])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|---|---:|---|" + "---:|" * (len(columns) - 3),
        "| " + " | ".join(fp32) + " |",
    ]
    rows: list[Measurement] = [report.plan, *report.baselines]
    if report.weight_only is not None:
        rows.append(replace(report.weight_only, name=f"{report.weight_only.name} (float activations, for reference)"))
    for m in rows:
        cells = [m.name, format_bytes(m.size_bytes), "yes" if m.fits_budget else "no", pct(m.top1)]
        cells += [pct(m.fp32_agreement), f"{m.kl_to_fp32:.4f}"] if logits else []
        cells += ["-" if m.cosine_to_fp32 is None else f"{m.cosine_to_fp32:.5f}"]
        cells += ["-" if m.perplexity is None else f"{m.perplexity:.3f}"] if ppl else []
        cells += ["-" if m.bits_per_weight is None else f"{m.bits_per_weight:.4f}"]
        cells += ["-" if m.latency_s is None else format_cost("latency_s", m.latency_s)] if latency else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_line(plan: Plan) -> str:
    """The plan's predicted latency against its latency budgets, and where the latencies came from."""
    predicted = plan.predicted.get("latency_s")
    if predicted is None:
        return ""
    limits = [b.text for b in plan.budgets if b.kind == "latency_s"]
    source = plan.settings.latency
    where = f"{'table ' + source.spec if source.source == 'table' else 'roofline of ' + (source.device or '?')}, batch {source.batch}"
    return (
        f"predicted latency {format_cost('latency_s', predicted)}"
        + (f" within {', '.join(limits)}" if limits else "")
        + f" ({where})"
    )


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def sqnr_table(report: Report) -> str:
    """Markdown table: per layer the SQNR (dB) of its weights, its input quantizer and its output vs FP32."""
    lines = [
        "| layer | W | A | weight SQNR (dB) | input SQNR (dB) | output SQNR vs FP32 (dB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.layer_sqnr:
        lines.append(
            f"| {r.name} | {r.weight_bits} | {r.act_bits or 'float'} | {_db(r.weight_sqnr_db)} | {_db(r.input_sqnr_db)} | {_db(r.output_sqnr_db)} |"
        )
    return "\n".join(lines)


def _save_figure(fig, path: Path) -> None:
    """Written atomically: a unique temporary file with the same suffix in the same folder (two runs with
    one --out never share it), then a rename; the file gets the umask's mode (mpq.files.atomic_path)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_proxy(check: "ProxyCheck", path: Path) -> None:
    """Predicted total Omega against measured KL, log-log: the random plans and the searched plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    randoms, plan = check.points[1:], check.points[0]
    ax.scatter(
        [p.omega for p in randoms],
        [p.kl_to_fp32 for p in randoms],
        color="tab:blue",
        label="random plans, same size budget",
    )
    ax.scatter([plan.omega], [plan.kl_to_fp32], color="tab:red", marker="*", s=180, label="mpq plan")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted total Ω")
    ax.set_ylabel("measured KL(FP32 ‖ q)")
    ax.set_title(f"Spearman ρ = {check.spearman:.2f}")
    ax.legend(fontsize=8)
    _save_figure(fig, path)


def plot_layers(sensitivity: Sensitivity, plan: Plan, path: Path) -> None:
    """Bars: per-layer weight width, and per-layer trace with error bars (log scale; see plot_sensitivity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivity.layers)
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.22), 7), sharex=True)
    top.bar(x, [plan.layers[n].mean_weight_bits() for n in names], color="tab:blue")
    top.set_ylabel(
        "weight bits" + (" (mean over channels)" if any(lp.channel_bits for lp in plan.layers.values()) else "")
    )
    top.set_title(f"mpq plan: widths and sensitivities ({sensitivity.metric}) per layer")
    warned = {n for n, s in sensitivity.layers.items() if s.warning(sensitivity.settings.tol)}
    _bars(
        bottom, sensitivity, [_layer_value(sensitivity, n) for n in names], warned, metric_of(sensitivity.metric).label
    )
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    _save_figure(fig, path)


def _bars(
    ax, sensitivity: Sensitivity, values: list[tuple[float, float | None] | None], warned: set[str], ylabel: str
) -> None:
    """Log-scale bars with error bars; a value that is not positive is drawn at the floor, hatched."""
    names = list(sensitivity.layers)
    shown = [v for v in values if v is not None and v[0] > 0]
    floor = min((v[0] for v in shown), default=1.0) / 10
    heights = [max(v[0], floor) if v is not None else floor for v in values]
    errors = [0.0 if v is None or v[1] is None else min(v[1], 1e300) for v in values]
    colors = ["tab:red" if n in warned else "tab:orange" for n in names]
    bars = ax.bar(range(len(names)), heights, yerr=errors, color=colors, capsize=1.5, error_kw={"elinewidth": 0.8})
    for bar, v in zip(bars, values):
        if v is None or v[0] <= 0:
            bar.set_hatch("//")
            bar.set_alpha(0.4)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    ax.set_ylabel(ylabel)


def plot_sensitivity(sensitivity: Sensitivity, path: Path) -> None:
    """Bar chart of every layer's sensitivity (trace ± stderr, or the metric's number) on a log scale,
    and of its input's with activation sensitivity; red: the table warns about the estimate; hatched:
    not positive (drawn at the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sensitivity.layers)
    label = metric_of(sensitivity.metric).label
    panels = 2 if sensitivity.has_activations else 1
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(8, len(names) * 0.22), 3.2 * panels + 1.5), sharex=True, squeeze=False
    )
    tol = sensitivity.settings.tol
    warned = {n for n, s in sensitivity.layers.items() if s.warning(tol)}
    _bars(axes[0][0], sensitivity, [_layer_value(sensitivity, n) for n in names], warned, f"weights: {label}")
    axes[0][0].set_title(
        f"mpq sensitivity ({sensitivity.metric}, loss {sensitivity.loss}); red: estimate not trustworthy"
    )
    if panels == 2:
        warned = {
            n for n, s in sensitivity.layers.items() if s.activation and s.activation.warning(metric_of(sensitivity.metric), tol)
        }
        _bars(axes[1][0], sensitivity, [_input_value(sensitivity, n) for n in names], warned, f"inputs: {label}")
    bottom = axes[-1][0]
    bottom.set_xticks(range(len(names)))
    bottom.set_xticklabels(names, rotation=90, fontsize=6)
    _save_figure(fig, path)


PROXY_PLOT = "proxy-fidelity.png"
OPTIONAL_PLOTS = {  # written by other commands into the same folder; report.md shows them when present
    "pareto.png": "Pareto front (`mpq pareto`): measured quality against size",
    PROXY_PLOT: "Proxy fidelity: predicted Ω against measured KL (`mpq search --proxy-check N`)",
}


def markdown_report(
    sensitivity: Sensitivity, plan: Plan, report: Report, plots: tuple[str, ...] = (), command: str | None = None
) -> str:
    """report.md, opening with its summary (mpq.report.summary; `command`: the command line that made it, if known);
    `plots` names optional plot files (OPTIONAL_PLOTS) present beside it."""
    budgets = ", ".join(b.text for b in plan.budgets)
    warnings = sensitivity.warnings()
    space = plan.settings.space
    parts = [
        "# mpq report",
        "",
        *summary(sensitivity, plan, report, command),
        "## Search",
        "",
        f"Budget: {budgets}. Candidate weight widths: {list(space.bits)}"
        + (f" per group of {space.channel_group} output channel(s)" if space.granularity == "channel" else "")
        + "; activations: "
        f"{(space.act_bits[0] if len(space.act_bits) == 1 else list(space.act_bits)) or 'float'}"
        + (f" ({plan.settings.act_choice_note})" if plan.settings.act_choice_note else "")
        + f". Sensitivity loss: {sensitivity.loss}; metric: {sensitivity.metric}"
        + (" (weights and inputs)" if sensitivity.has_activations else "")
        + "; "
        f"{_probes_text(sensitivity)} (stopped by {sensitivity.stop_reason})"
        + (" — read from cache." if sensitivity.from_cache else "."),
        "",
        f"Quantizer: {report.quantizer.describe()} (the same for Ω's quantization errors, the plan, the baselines and the exports).",
        "",
        f"Predicted size {format_bytes(plan.predicted['size_bytes'])}, measured from the exported tensors "
        f"{format_bytes(report.plan.size_bytes)}; {report.plan.bops / 1e9:.2f} GBOPs; total Ω {plan.predicted['omega']:.4g}"
        + (
            f"; {report.plan.bits_per_weight:.4f} bits per quantized weight (codes and scales)"
            if report.plan.bits_per_weight is not None
            else ""
        )
        + ".",
        "",
        *([latency_line(plan) + ".", ""] if "latency_s" in plan.predicted else []),
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
    if report.proxy is not None:
        parts += [
            "## Does Ω predict?",
            "",
            report.proxy.summary() + " (`--proxy-check`).",
            "",
            f"![{PROXY_PLOT}]({PROXY_PLOT})",
            "",
        ]
    for name in plots:
        if not (name == PROXY_PLOT and report.proxy is not None):
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


def write_outputs(
    out_dir: Path, sensitivity: Sensitivity, plan: Plan, report: Report, command: str | None = None
) -> list[Path]:
    """plan.json, report.json, report.md and layers.png (and the proxy check's plot), each written atomically;
    `command`: the command line report.md's summary names (None: the Python call)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "plan.json", out_dir / "report.json", out_dir / "report.md", out_dir / "layers.png"]
    plot_layers(sensitivity, plan, paths[3])
    if report.proxy is not None:
        paths.append(out_dir / PROXY_PLOT)
        plot_proxy(report.proxy, paths[-1])
    plots = tuple(name for name in OPTIONAL_PLOTS if (out_dir / name).exists())
    write_text_atomic(paths[2], markdown_report(sensitivity, plan, report, plots, command))
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
    lines.append(solver_note(solution.solver_json(), solution.seconds))
    return "\n".join(lines)
