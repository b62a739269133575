"""The sensitivity analysis: Omega_l(b) of every quantizable layer at every width, under one metric.

One AnalysisContext (mpq.sensitivity.context: the prepared model, the fit data, the loss, the quantizer, settings,
cache) goes to the metric's `estimate` (mpq.sensitivity.registry: one class per metric); the estimates and the
quantizer's error tables make one LayerSensitivity per layer, a uniform Omega table per width and channel.
With `activations=True`, each layer's input gets its sensitivity too (mpq.sensitivity.inputs): Omega of a
(weight, act) choice adds Omega_act(a).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, module_calls_visible
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.sensitivity.context import REFERENCE_BATCH, AnalysisContext
from mpq.sensitivity.curvature import CACHE_KINDS
from mpq.sensitivity.error import channel_error_table
from mpq.sensitivity.inputs import input_sensitivities
from mpq.sensitivity.losses import Loss, resolve_loss
from mpq.sensitivity.registry import Metric, metric_of
from mpq.sensitivity.result import LayerSensitivity, Sensitivity
from mpq.sensitivity.settings import ProbeSettings

__all__ = ["CACHE_KINDS", "REFERENCE_BATCH", "AnalysisOptions", "analyze_prepared", "output_dims"]


def output_dims(prepared: PreparedModel, data: Dataset) -> int:
    """How many dimensions the model's output has (2: [batch, classes]), from one sample."""
    with torch.no_grad(), module_calls_visible():
        return prepared.folded(data.x[:1]).dim()


def _loss(metric: Metric, prepared: PreparedModel, data: Dataset, loss: Loss | None) -> Loss:
    """The loss the metric estimates with (its own, or `loss`, or the default for the data), checked when used."""
    embeddings, labelled = prepared.outputs.embeddings, data.y is not None
    if metric.fixed_loss:
        return resolve_loss(metric.fixed_loss, labelled, embeddings)
    loss = loss or resolve_loss(None, labelled, embeddings)
    if metric.uses_loss:
        metric.check_loss(loss.name, output_dims(prepared, data))
        loss.check(prepared.folded, data)
    return loss


def analysis_context(
    prepared: PreparedModel,
    data: Dataset,
    settings: ProbeSettings,
    cache: Cache,
    progress: bool | None,
    loss: Loss,
    metric: Metric,
    quantizer: Quantizer,
) -> AnalysisContext:
    key = {
        "model": prepared.fingerprint,
        "data": data.fingerprint(),
        "loss": loss.name,
        "settings": settings.to_json(),
        "layers": [layer.name for layer in prepared.graph.layers],
        **metric.cache_fields(),
    }
    return AnalysisContext(prepared, data, settings, cache, progress, loss, quantizer, key)


@dataclass(frozen=True)
class AnalysisOptions:
    """What an analysis measures with: the metric (by name), the loss (None: the data's default), the probe
    settings, the quantizer whose errors Omega is of, and whether the inputs are analyzed too."""

    metric: str = "kl_anchored"
    loss: Loss | None = None
    settings: ProbeSettings = ProbeSettings()
    quantizer: Quantizer = DEFAULT_QUANTIZER
    activations: bool = False


def analyze_prepared(
    prepared: PreparedModel,
    data: Dataset,
    options: AnalysisOptions = AnalysisOptions(),
    cache: Cache = Cache(None),
    progress: bool | None = None,
) -> Sensitivity:
    """Per-layer sensitivities under the options' metric (cached on disk) and the quantization errors of every
    quantizable layer under its quantizer (the one the plan is verified with); with `activations`, every layer's
    input too."""
    name, chosen = options.metric, metric_of(options.metric)
    settings, quantizer, activations = options.settings, options.quantizer, options.activations
    if activations and not chosen.inputs:
        raise MpqError(
            f"the {name} metric covers weights only: choose activation widths by cost (--no-act-sensitivity) or "
            "use another --metric for the inputs' sensitivity"
        )
    loss = _loss(chosen, prepared, data, options.loss)
    ctx = analysis_context(prepared, data, settings, cache, progress, loss, chosen, quantizer)
    estimates = chosen.estimate(ctx)
    inputs = input_sensitivities(chosen, ctx) if activations else {}
    errors = channel_error_table(ctx.model, ctx.names, quantizer.format.widths, ctx.clip_ratios, quantizer.format)
    layers = {
        layer.name: LayerSensitivity.of(layer, name, estimate, errors[layer.name], inputs.get(layer.name))
        for layer, estimate in zip(prepared.graph.layers, estimates.layers)
    }
    return Sensitivity(
        model_fingerprint=prepared.fingerprint,
        data_fingerprint=ctx.key["data"],
        loss=loss.name,
        layers=layers,
        float_bytes=prepared.graph.float_bytes,
        settings=settings,
        seconds=estimates.seconds,
        stop_reason=estimates.stop_reason,
        from_cache=estimates.from_cache,
        resumed_probes=estimates.resumed_from,
        act_tie_groups=prepared.graph.act_tie_groups,
        metric=name,
        quantizer=quantizer,
        notes=list(estimates.notes),
    )
