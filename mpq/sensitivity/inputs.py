"""The inputs' sensitivity under a metric (HAWQ-V2's activation sensitivity, mpq.sensitivity.activation): every
quantizable input's trace-like T_g or measured Ω per width, and its quantization errors."""

from __future__ import annotations

import math

from mpq.quant.widths import ALL_BITS
from mpq.sensitivity.activation import ActivationSensitivity, input_groups, input_quant_errors
from mpq.sensitivity.context import REFERENCE_BATCH, AnalysisContext
from mpq.sensitivity.estimates import LayerEstimate


def _quant_errors(ctx: AnalysisContext, members: list[str], ranges) -> dict[str, dict[int, float]]:
    key = {"model": ctx.prepared.fingerprint, "data": ctx.key["data"], "layers": members, "bits": list(ALL_BITS)}
    errors = ctx.cache.load("act-quant-error", key)
    if errors is None:
        errors = input_quant_errors(ctx.model, members, ranges, ctx.data.x, ALL_BITS, REFERENCE_BATCH)
        ctx.cache.save("act-quant-error", key, errors)
    return {n: {int(b): e for b, e in per_width.items()} for n, per_width in errors.items()}


def _sensitivity(group, elements: int, errors, estimate: LayerEstimate) -> ActivationSensitivity:
    nan = float("nan")
    trace = estimate.trace
    return ActivationSensitivity(
        group=group,
        trace=trace.value if trace else nan,
        trace_stderr=trace.stderr if trace else nan,
        probes=trace.probes if trace else 0,
        elements=elements,
        quant_error=errors,
        measured_omega=estimate.omega,
        details=estimate.details,
    )


def input_sensitivities(metric, ctx: AnalysisContext) -> dict[str, ActivationSensitivity]:
    """Every quantizable input's sensitivity under `metric`, by layer (the layers of one group share it)."""
    from mpq.quant.reference import fp32_reference

    graph = ctx.prepared.graph
    groups = input_groups(graph.layers, graph.act_tie_groups)
    if not groups:
        return {}
    ranges = fp32_reference(ctx.prepared, ctx.data, REFERENCE_BATCH, ctx.cache).input_ranges
    errors = _quant_errors(ctx, [n for g in groups for n in g], ranges)
    shapes = [graph.by_name[g[0]].input_shape for g in groups]
    act_key = {**ctx.key, "metric": metric.name, "inputs": groups}
    estimates = metric.estimate_inputs(ctx, act_key, groups, shapes, ranges)
    return {
        name: _sensitivity(group, math.prod(shape), errors[name], estimate)
        for group, shape, estimate in zip(groups, shapes, estimates)
        for name in group
    }
