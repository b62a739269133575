"""The summary report.md opens with: how the plan was made, its budget, the result against the best
uniform plan that fits the same budget, and what to try next."""

from __future__ import annotations

from dataclasses import replace

from mpq.cost.budget import format_bytes, within_budgets
from mpq.plan import Plan
from mpq.report.text import pct
from mpq.sensitivity.registry import metric_of
from mpq.sensitivity.result import Sensitivity
from mpq.verify.measure import NEAR_BUDGET
from mpq.verify.report import Measurement, Report

ACT_CAP = 0.5  # uniform W8 (same activations) with at least this share of the plan's KL: activations cap the result
WEIGHT_ONLY_GAP = 4.0  # uniform W8 with quantized inputs this many times farther from FP32 than with float inputs


def best_uniform(report: Report) -> Measurement | None:
    """The uniform baseline closest to FP32 (Report.distance) among those that fit the plan's budgets
    (None: none fits)."""
    fitting = [m for m in report.baselines if m.fits_budget]
    return min(fitting, key=report.distance) if fitting else None


def _measured(report: Report, m: Measurement) -> str:
    top1 = f", top-1 {pct(m.top1)}" if m.top1 is not None else ""
    ppl = f", perplexity {m.perplexity:.4g}" if m.perplexity is not None else ""
    if report.outputs.embeddings:
        return f"{format_bytes(m.size_bytes)}, cosine to FP32 {m.cosine_to_fp32:.5f}{top1}"
    if m.n_tokens is not None:
        return (
            f"{format_bytes(m.size_bytes)}, KL(FP32‖q) per token mean {m.kl_to_fp32:.4g}, p99 {m.kl_to_fp32_p99:.4g}, "
            f"p99.9 {m.kl_to_fp32_p999:.4g}, same top token {pct(m.fp32_agreement)}{top1}{ppl}"
        )
    return (
        f"{format_bytes(m.size_bytes)}, KL(FP32‖q) {m.kl_to_fp32:.4g}, agreement with FP32 "
        f"{pct(m.fp32_agreement)}{top1}{ppl}"
    )


def _near_budget(report: Report, plan: Plan) -> list[str]:
    """A line per uniform baseline that misses the budgets by at most NEAR_BUDGET, with whether the plan beats it."""
    near = [replace(b, limit=b.limit * (1 + NEAR_BUDGET)) for b in plan.budgets]
    over = [m for m in report.baselines if not m.fits_budget and near and within_budgets(m.costs, near, False)]
    ours = report.distance(report.plan)
    return [
        f"- Slightly over the budget (up to {NEAR_BUDGET:.0%}, does not fit): {m.name}, {_measured(report, m)}; "
        + (
            "the plan is closer to FP32"
            if ours < report.distance(m)
            else "it is as close to FP32 as the plan or closer"
        )
        for m in over
    ]


def _verdict(report: Report, uniform: Measurement | None) -> str:
    plan = report.plan
    if uniform is None:
        return "no uniform width fits the budget, so the plan is the only quantized model within it"
    what = report.distance_name
    ours, theirs = report.distance(plan), report.distance(uniform)
    if ours < theirs:
        ratio = theirs / ours if ours > 0 else float("inf")
        return f"the plan's {what} is {ratio:.2g}× lower than {uniform.name}'s, the best uniform plan that fits"
    return (
        f"{uniform.name}, a uniform plan that fits, does as well as the plan or better ({what} {theirs:.4g} "
        f"against {ours:.4g})"
    )


def next_steps(sensitivity: Sensitivity, plan: Plan, report: Report) -> list[str]:
    """What to try next, most telling first; one line when nothing stands out."""
    steps = []
    uniform = best_uniform(report)
    measured = report.plan
    warnings = sensitivity.warnings()
    if uniform is not None and report.distance(uniform) <= report.distance(measured):
        steps.append(
            f"A uniform plan wins ({uniform.name}): Ω does not rank the widths well here. Try a measured metric "
            "(`--metric output_kl` or `--metric kl_quadratic`), or `--proxy-check 20` to see how well Ω predicts KL; "
            f"meanwhile {uniform.name} is the better choice at this budget."
        )
    if sensitivity.stop_reason in ("max_probes", "max_seconds"):
        limit = "--max-probes" if sensitivity.stop_reason == "max_probes" else "--max-seconds"
        steps.append(
            f"Probing stopped at `{limit}` before every layer's estimate was within `--tol "
            f"{sensitivity.settings.tol:g}` "
            f"of it: raise `{limit}`"
            + (
                " (finished probes stay in the cache, unless `--no-cache`, and a rerun resumes from them)."
                if metric_of(sensitivity.metric).checkpointed
                else "."
            )
        )
    if warnings:
        names = ", ".join(list(warnings)[:3]) + (", …" if len(warnings) > 3 else "")
        steps.append(
            f"{len(warnings)} layer(s) have estimates not to be trusted ({names}; see Warnings): more probes "
            "(`--max-probes`, `--max-seconds`) or a larger `--batch-size` narrow them; `--keep NAME=8` pins "
            "one you doubt."
        )
    w8 = next((m for m in report.baselines if m.name.startswith("uniform W8")), None)
    act_bits = plan.settings.space.act_bits if plan.settings is not None else ()
    ours = report.distance(measured)
    capped = _activations_cap(report, w8)
    if capped:
        steps.append(capped)
    elif w8 is not None and any(a is not None for a in act_bits) and ours > 0 and report.distance(w8) >= ACT_CAP * ours:
        what = report.distance_name
        steps.append(
            f"Activation quantization caps the result: {w8.name} alone has {what} {report.distance(w8):.4g}, "
            f"{report.distance(w8) / ours:.0%} of the plan's, so narrower weights are not what costs most. "
            "Try another activation observer (`--act-observer mse`, `--quantizer aciq`), or `--act-bits none` "
            "to see the weights alone."
        )
    if not steps:
        steps.append(
            "Nothing stands out. To see what a little more or less size buys, sweep the budget: "
            "`mpq pareto --budget LOW:HIGH` (docs/pareto.md); `mpq export` writes the plan for deployment."
        )
    return steps


def _activations_cap(report: Report, w8: Measurement | None) -> str | None:
    """The step when uniform W8 with quantized inputs is WEIGHT_ONLY_GAP times farther from FP32 (Report.distance)
    than uniform W8 weight-only."""
    weight_only = report.weight_only
    if w8 is None or weight_only is None:
        return None
    what = report.distance_name
    far, near = report.distance(w8), report.distance(weight_only)
    if far <= 0 or far < WEIGHT_ONLY_GAP * near:
        return None
    ratio = f"{far / near:.0f}×" if near > 0 else "infinitely"
    return (
        f"Activation quantization caps the result: {w8.name} is {ratio} farther from FP32 ({what} {far:.3g}) "
        f"than {weight_only.name} with "
        f"float activations ({near:.3g}), so even the widest weights cannot make up for the inputs. Try "
        "weight-only widths: `--act-bits none` "
        "(e.g. with `--group-size 128` and a `--budget` in bits per weight such as 4.25bpw), or another "
        "activation observer (`--act-observer mse`)."
    )


def api_call(plan: Plan) -> str:
    """The Python call that makes such a report (when no command line is known)."""
    budgets = [b.text for b in plan.budgets]
    budget = repr(budgets[0]) if len(budgets) == 1 else repr(budgets)
    return f"mpq.search(model, data, budget={budget})"


def summary(sensitivity: Sensitivity, plan: Plan, report: Report, command: str | None = None) -> list[str]:
    """The lines of report.md's `## Summary` section."""
    made_by = f"`{command}`" if command else f"`{api_call(plan)}` (Python API)"
    budgets = (
        ", ".join(f"{b.text} ({b.limit:,.0f} bytes)" if b.kind == "size_bytes" else b.text for b in plan.budgets)
        or "none"
    )
    uniform = best_uniform(report)
    lines = [
        "## Summary",
        "",
        f"- Made by: {made_by}",
        f"- Budget: {budgets}",
        f"- The plan: {_measured(report, report.plan)}",
        f"- Best uniform plan that fits: {uniform.name}, {_measured(report, uniform)}"
        if uniform
        else "- Best uniform plan that fits: none fits the budget",
        *_near_budget(report, plan),
        f"- Result: {_verdict(report, uniform)}",
        "",
        "What to try next:",
        "",
        *[f"- {step}" for step in next_steps(sensitivity, plan, report)],
        "",
    ]
    return lines
