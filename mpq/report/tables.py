"""The Markdown tables of a search: per layer, the plan against FP32 and the baselines, per-layer SQNR, a
solved problem; and the lines beside them (the sensitivity table's preamble, the predicted latency)."""

from __future__ import annotations

from dataclasses import replace

from mpq.cost.budget import format_bytes, format_cost
from mpq.plan import LayerPlan, Plan
from mpq.report.text import pct
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of
from mpq.solver.milp import solver_note
from mpq.solver.omega import layer_plan_omega, searched_with
from mpq.solver.problem import Problem, Solution
from mpq.verify.report import Measurement, Report


def layer_value(sensitivity: Sensitivity, name: str) -> tuple[float, float | None]:
    s = sensitivity.layers[name]
    return metric_of(sensitivity.metric).layer_shown(s)


def input_value(sensitivity: Sensitivity, name: str) -> tuple[float, float | None] | None:
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
        row = (
            f"| {name} | {s.layer.kind} | {s.layer.params:,} | {_pm(layer_value(sensitivity, name))} | {s.probes} "
            f"| {s.estimator} |"
        )
        if inputs:
            row += f" {_pm(input_value(sensitivity, name))} |"
        if plan is not None:
            lp = plan.layers[name]
            omega = layer_plan_omega(s, lp, *searched_with(plan))
            row += f" {weight_bits_text(lp)} | {lp.act_bits or 'float'} | {omega:.3g} |"
        lines.append(row + f" {warnings.get(name, '')} |")
    return "\n".join(lines)


def weight_bits_text(lp: LayerPlan) -> str:
    """'6', or for per-channel widths the range and the mean bits per weight, e.g. '4-8 (5.62)'."""
    if not lp.channel_bits:
        return str(lp.weight_bits)
    low = min(r.weight_bits for r in lp.channel_bits)
    return str(lp.weight_bits) if low == lp.weight_bits else f"{low}-{lp.weight_bits} ({lp.mean_weight_bits():.2f})"


def _distance_columns(report: Report) -> tuple[list[str], list[str]]:
    """The columns of how far a model is from FP32, and FP32's own cells: for per-token logits (language models)
    KL per token as llama.cpp reports it (mean, 99th and 99.9th percentile) and the same top token share; for other
    logits agreement and KL; none for embeddings."""
    if report.outputs.embeddings:
        return [], []
    if report.plan.n_tokens is not None:
        return ["same top token", "KL mean", "KL p99", "KL p99.9"], ["100.0%", "0", "0", "0"]
    return ["agreement with FP32", "KL(FP32‖q)"], ["100.0%", "0"]


def _distance_cells(report: Report, m: Measurement) -> list[str]:
    if report.outputs.embeddings:
        return []
    if report.plan.n_tokens is not None:
        kls = (m.kl_to_fp32, m.kl_to_fp32_p99, m.kl_to_fp32_p999)
        return [pct(m.fp32_agreement), *("-" if v is None else f"{v:.4f}" for v in kls)]
    return [pct(m.fp32_agreement), f"{m.kl_to_fp32:.4f}"]


def comparison_table(report: Report) -> str:
    """Markdown table of the plan, FP32 and the baselines: agreement and KL for logits (per token for language
    models: mpq.verify.tokens), not for embeddings (where they mean nothing), cosine, a causal LM's perplexity, and
    with a latency model the predicted latencies."""
    logits = not report.outputs.embeddings
    ppl = report.fp32.perplexity is not None
    latency = bool(report.latency_model)
    distance, fp32_distance = _distance_columns(report)
    columns = ["model", "size", "fits budget", "top-1" if logits else "top-1 (nearest FP32 class centroid)"]
    columns += distance + ["cosine to FP32"]
    columns += (["perplexity"] if ppl else []) + ["bits per weight"] + (["predicted latency"] if latency else [])
    fp32 = ["FP32 (BatchNorm folded)", format_bytes(report.fp32.size_bytes), "-", pct(report.fp32.top1)]
    fp32 += fp32_distance + ["1"]
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
        cells += _distance_cells(report, m)
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
    where = (
        f"{'table ' + source.spec if source.source == 'table' else 'roofline of ' + (source.device or '?')}, batch "
        f"{source.batch}"
    )
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
            f"| {r.name} | {r.weight_bits} | {r.act_bits or 'float'} | {_db(r.weight_sqnr_db)} | "
            f"{_db(r.input_sqnr_db)} | {_db(r.output_sqnr_db)} |"
        )
    return "\n".join(lines)


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
