"""Estimates of the measured metrics (output_mse, output_kl): Ω_l(b) measured with only layer l (or one input)
quantized at b bits, one pass per layer and width, cached."""

from __future__ import annotations

import time

from mpq.quant.widths import ALL_BITS
from mpq.sensitivity.activation import act_quant_params
from mpq.sensitivity.context import REFERENCE_BATCH, AnalysisContext
from mpq.sensitivity.estimates import Estimates, LayerEstimate, finite
from mpq.sensitivity.output_error import OutputError, input_output_errors, weight_output_errors


def cached_output_errors(ctx: AnalysisContext, key: dict, measure) -> list[dict[int, OutputError]]:
    """Measured output errors, one {bits: OutputError} per layer or input group, cached under `key`."""
    cached = ctx.cache.load("output-mse", key)
    if cached is None:
        cached = [{str(b): [e.mse, e.sqnr_db, e.kl] for b, e in errors.items()} for errors in measure()]
        ctx.cache.save("output-mse", key, cached)
    return [{int(b): OutputError(*pair) for b, pair in errors.items()} for errors in cached]


def measured_estimate(errors: dict[int, OutputError], field: str, metric_name: str) -> LayerEstimate:
    """Ω per width (the OutputError `field` the metric names) and the JSON fields."""
    omega = {b: getattr(e, field) for b, e in errors.items()}
    details = {
        metric_name: {str(b): v for b, v in omega.items()},
        "output_sqnr_db": {str(b): finite(e.sqnr_db) for b, e in errors.items()},
    }
    return LayerEstimate(omega=omega, details=details)


def measured_estimates(metric, ctx: AnalysisContext) -> Estimates:
    """Every layer's Ω measured at every width (the quantizer's weights and corrected bias when the metric uses
    the quantizer, plain weights otherwise)."""
    started = time.perf_counter()
    widths = ctx.quantizer.format.widths if metric.uses_quantizer else ALL_BITS
    deltas = (lambda name: ctx.deltas(name, widths)) if metric.uses_quantizer else None

    def measure() -> list[dict[int, OutputError]]:
        errors = weight_output_errors(ctx.model, ctx.names, ctx.data.x, widths, REFERENCE_BATCH, ctx.progress, deltas)
        return [errors[n] for n in ctx.names]

    quantizer_key = {"quantizer": ctx.quantizer.sensitivity_json()} if metric.uses_quantizer else {}
    measured = cached_output_errors(ctx, {**ctx.key, **quantizer_key, "bits": list(widths)}, measure)
    layers = [measured_estimate(m, metric.field, metric.name) for m in measured]
    return Estimates(layers, time.perf_counter() - started, "measured")


def measured_input_estimates(metric, ctx: AnalysisContext, key: dict, groups, ranges) -> list[LayerEstimate]:
    """Each input group's Ω measured with only that input quantized, at every width."""
    params = lambda name, bits: act_quant_params(ranges, name, bits)  # noqa: E731
    measured = cached_output_errors(
        ctx,
        {**key, "bits": list(ALL_BITS)},
        lambda: input_output_errors(ctx.model, groups, params, ctx.data.x, ALL_BITS, REFERENCE_BATCH),
    )
    return [measured_estimate(m, metric.field, metric.name) for m in measured]
