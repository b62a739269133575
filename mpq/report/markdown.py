"""Writing a search's results: report.md (its sections, from mpq.report.tables and mpq.report.summary),
plan.json, report.json and the plots (mpq.report.plots)."""

from __future__ import annotations

from pathlib import Path

from mpq.cost.budget import format_bytes
from mpq.files import write_json_atomic, write_text_atomic
from mpq.plan import Plan
from mpq.report.plots import plot_layers, plot_proxy
from mpq.report.plots import save_figure as _save_figure  # noqa: F401  (tests/test_files_mode.py reads it here)
from mpq.report.summary import summary
from mpq.report.tables import comparison_table, latency_line, layer_table, sqnr_table
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of
from mpq.verify.measure import NEAR_BUDGET
from mpq.verify.report import Report


def _probes_text(sensitivity: Sensitivity) -> str:
    """How many probes the estimates used: per layer (their range) for per-layer Hutchinson probing."""
    counts = [s.probes for s in sensitivity.layers.values()]
    if metric_of(sensitivity.metric).estimator != "hutchinson":
        return f"{max(counts)} probes/samples/iterations"
    if sensitivity.settings.probing == "per-layer":
        spread = f"{min(counts)}-{max(counts)}" if min(counts) != max(counts) else f"{max(counts)}"
        return f"{spread} Hutchinson probes per layer (per-layer probing)"
    return f"{max(counts)} Hutchinson probes (all layers per probe)"


PROXY_PLOT = "proxy-fidelity.png"
OPTIONAL_PLOTS = {  # written by other commands into the same folder; report.md shows them when present
    "pareto.png": "Pareto front (`mpq pareto`): measured quality against size",
    PROXY_PLOT: "Proxy fidelity: predicted Ω against measured KL (`mpq search --proxy-check N`)",
}


def markdown_report(
    sensitivity: Sensitivity, plan: Plan, report: Report, plots: tuple[str, ...] = (), command: str | None = None
) -> str:
    """report.md, opening with its summary (mpq.report.summary; `command`: the command line that made it, if
    known); `plots` names optional plot files (OPTIONAL_PLOTS) present beside it."""
    parts = [
        "# mpq report",
        "",
        *summary(sensitivity, plan, report, command),
        *_search_section(sensitivity, plan, report),
        *_comparison_section(sensitivity, report),
        *_plot_sections(report, plots),
        *_layer_sections(sensitivity, plan, report),
    ]
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings_s.items())
    parts += ["## Timings", "", timings, ""]
    return "\n".join(parts)


def _search_section(sensitivity: Sensitivity, plan: Plan, report: Report) -> list[str]:
    """What was searched (budgets, widths, metric, probes), the quantizer, and the predicted and measured costs."""
    budgets = ", ".join(b.text for b in plan.budgets)
    space = plan.settings.space
    return [
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
        (
            f"Quantizer: {report.quantizer.describe()} (the same for Ω's quantization errors, the plan, the "
            "baselines and the exports)."
        ),
        "",
        f"Weight format: {report.quantizer.format.describe()}; measured size {report.plan.size_bytes:,} bytes.",
        "",
        f"Predicted size {format_bytes(plan.predicted['size_bytes'])}, measured from the exported tensors "
        f"{format_bytes(report.plan.size_bytes)}; {report.plan.bops / 1e9:.2f} GBOPs; total Ω "
        f"{plan.predicted['omega']:.4g}"
        + (
            f"; {report.plan.bits_per_weight:.4f} bits per quantized weight (codes and scales)"
            if report.plan.bits_per_weight is not None
            else ""
        )
        + ".",
        "",
        *([latency_line(plan) + ".", ""] if "latency_s" in plan.predicted else []),
    ]


def _comparison_section(sensitivity: Sensitivity, report: Report) -> list[str]:
    return [
        "## Plan against FP32 and uniform widths",
        "",
        comparison_table(report),
        "",
        f"Evaluated on {report.plan.n_eval} inputs{_tokens(report)}. Baselines: uniform W8 and every candidate "
        f"uniform width that fits the budget or misses it by at most {NEAR_BUDGET:.0%} (fits budget: no), "
        "with the same activation settings.",
        "",
        (
            "Per layer: the weight width chosen (top) beside its sensitivity "
            f"({sensitivity.metric}: {metric_of(sensitivity.metric).label}) with its standard error where the metric "
            "has one (bottom)."
        ),
        "",
        "![layers](layers.png)",
        "",
    ]


def _tokens(report: Report) -> str:
    """How per-token statistics were counted (language models), or nothing."""
    if report.plan.n_tokens is None:
        return ""
    return (
        f" ({report.plan.n_tokens:,} tokens; KL(FP32‖q) per token, its mean and 99th and 99.9th percentiles, and "
        "the share of tokens whose most likely next token is FP32's, as llama.cpp's --kl-divergence reports them)"
    )


def _plot_sections(report: Report, plots: tuple[str, ...]) -> list[str]:
    """The proxy check (when run) and the optional plots other commands wrote beside report.md."""
    parts = []
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
    return parts


def _layer_sections(sensitivity: Sensitivity, plan: Plan, report: Report) -> list[str]:
    """The per-layer table, then the warnings, the notes and the per-layer SQNR (each only when there are any)."""
    parts = ["## Layers", "", layer_table(sensitivity, plan), ""]
    warnings = sensitivity.warnings()
    if warnings:
        parts += ["## Warnings", ""] + [f"- {n}: {w}" for n, w in warnings.items()] + [""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    if report.layer_sqnr:
        parts += [
            "## Per-layer SQNR",
            "",
            "10·log10(Σs² / Σ(s − s′)²) over the first inputs (mpq.verify.SQNR_SAMPLES): weights against the exported "
            "weights; each input before and after its quantizer; each output against the FP32 model's (error "
            "accumulated so far).",
            "",
            sqnr_table(report),
            "",
        ]
    return parts


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
