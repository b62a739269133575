"""Estimates of the curvature metrics (trace-like T_l: Hutchinson, Fisher, Gauss-Newton, top eigenvalue), cached;
an unfinished Hutchinson estimate is checkpointed after every probe and resumed by the next run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from mpq.errors import MpqError
from mpq.sensitivity.context import AnalysisContext
from mpq.sensitivity.distributed import Ranks
from mpq.sensitivity.estimates import Estimates, LayerEstimate, Trace
from mpq.sensitivity.hessian import HessianTraces
from mpq.sensitivity.trace_store import traces_from_json, traces_to_json
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import KnownPart, capped_layers

CACHE_KINDS = {
    "weights": ("sensitivity", "hessian-checkpoint"),
    "inputs": ("activation-sensitivity", "activation-checkpoint"),
}


def cached_traces(
    ctx: AnalysisContext, what: str, key: dict, metric, model: nn.Module, names: list[str]
) -> tuple[HessianTraces, dict[str, list], bool]:
    """(traces of `model`'s `names`, the metric's per-layer fields, whether from the cache); `what`: weights or
    inputs. Under torchrun rank 0 reads and writes the cache and every rank probes."""
    kind, checkpoint_kind = CACHE_KINDS[what]
    ranks = Ranks.current()
    cached = ranks.broadcast(ctx.cache.load(kind, key) if ranks.is_main else None)
    if cached is not None:
        return traces_from_json(cached), cached.get("details", {}), True
    checkpoint = None
    if metric.checkpointed:
        checkpoint = ctx.cache.entry(checkpoint_kind, {**key, "settings": {**key["settings"], "max_seconds": None}})
    traces, details = metric.traces(
        model, names, ctx.data.x, ctx.targets, ctx.settings, ctx.progress, ctx.loss.fn, checkpoint
    )
    if ranks.is_main:
        ctx.cache.save(kind, key, {**traces_to_json(traces), **({"details": details} if details else {})})
        if checkpoint is not None:
            checkpoint.clear()
    return traces, details, False


def layer_traces(traces: HessianTraces, details: dict[str, list], capped: np.ndarray) -> list[LayerEstimate]:
    """One LayerEstimate per layer (or input group) of `traces`, with the metric's fields of that layer."""
    return [
        LayerEstimate(
            trace=Trace(
                float(traces.trace[i]),
                float(traces.stderr[i]),
                traces.probes_of(i),
                traces.channel_trace[i],
                traces.channel_stderr[i],
            ),
            details={k: values[i] for k, values in details.items()},
            capped=bool(capped[i]),
        )
        for i in range(len(traces.layer_names))
    ]


def curvature_estimates(metric, ctx: AnalysisContext) -> Estimates:
    """Every layer's trace-like T_l under `metric` (a CurvatureMetric), cached."""
    traces, details, from_cache = cached_traces(ctx, "weights", ctx.key, metric, ctx.model, ctx.names)
    traces = _one_probe_fallback(traces, ctx.settings)
    layers = layer_traces(traces, details, _capped(traces, ctx.settings))
    return Estimates(layers, traces.seconds, traces.stop_reason, from_cache, traces.resumed_from, list(traces.notes))


def _one_probe_fallback(traces: HessianTraces, settings: ProbeSettings) -> HessianTraces:
    """A standard error needs two probes: where the time cap stopped a layer at one, its standard error is unknown,
    reported as 0 (no trace margin for it) with a note that says what to raise; none at all is an MpqError (an
    exact estimate, e.g. gauss_newton over every class, needs no probes)."""
    single = [i for i in range(len(traces.layer_names)) if traces.probes_of(i) < 2]
    if not single or traces.stop_reason != "max_seconds":
        return traces
    if any(traces.probes_of(i) == 0 for i in single):
        raise MpqError(
            f"the probing stopped after {settings.max_seconds:g} s before a probe of some layer: raise --max-seconds "
            "(max_seconds=), or lower --batch-size"
        )
    stderr = np.where([traces.probes_of(i) < 2 for i in range(len(traces.layer_names))], 0.0, traces.stderr)
    channels = [np.zeros_like(s) if i in single else s for i, s in enumerate(traces.channel_stderr)]
    names = ", ".join(traces.layer_names[i] for i in single[:3]) + (", ..." if len(single) > 3 else "")
    note = (
        f"warning: the probing stopped after {settings.max_seconds:g} s with one probe of {len(single)} layer(s) "
        f"({names}), and a standard error needs two: theirs is reported as 0 (no trace margin); raise --max-seconds "
        "(max_seconds=) or lower --batch-size for one"
    )
    return replace(traces, stderr=stderr, channel_stderr=channels, notes=[*traces.notes, note])


def _capped(traces: HessianTraces, settings: ProbeSettings) -> np.ndarray:
    """Per layer: a cap stopped its estimate above the tolerance. A Hutchinson estimate cached before estimates said
    so (no `capped`) is judged by the rule hutchinson_traces applies."""
    if traces.capped is not None:
        return traces.capped
    if traces.layer_probes is None:  # no per-layer probe counts: not a Hutchinson estimate, no cap to name
        return np.zeros(len(traces.layer_names), dtype=bool)
    return capped_layers(
        KnownPart.none(len(traces.layer_names)), traces.trace, traces.stderr, settings.tol, traces.stop_reason
    )
