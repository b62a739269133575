"""HAWQ-V2 sensitivity: Omega_l(b) = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2, per layer and per channel.

Other metrics (`metric=`, mpq.sensitivity.metrics) put another trace-like number T_l in place of
Tr(H_l) (the empirical Fisher's trace, or n_l times the block's top eigenvalue), or measure Omega
directly (output_mse, mpq.sensitivity.output_error), or take the second-order term of the KL divergence
in the layer's actual quantization error (kl_quadratic, mpq.sensitivity.kl_quadratic). With `activations=True`, each layer's input gets
the same treatment (mpq.sensitivity.activation): Omega of a (weight, act) choice adds Omega_act(a).
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, module_calls_visible
from mpq.quant.calibration import bias_shifts, weight_clip_ratios
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.sensitivity.anchor import ANCHOR_BITS, anchor_indices, anchor_ratio
from mpq.sensitivity.activation import (
    ActivationSensitivity,
    act_quant_params,
    input_groups,
    input_quant_errors,
    perturbed_inputs,
)
from mpq.sensitivity.distributed import Ranks
from mpq.sensitivity.error import ALL_BITS, channel_error_table
from mpq.sensitivity.hessian import HessianTraces
from mpq.sensitivity.kl_quadratic import DRAWS, KlQuadratic, kl_quadratic_omegas, parameter_deltas
from mpq.sensitivity.losses import Loss, resolve_loss
from mpq.sensitivity.output_error import OutputError, input_output_errors, weight_output_errors
from mpq.sensitivity.registry import HessianTrace, Metric, OutputMSE, metric_of
from mpq.sensitivity.result import LayerSensitivity, Sensitivity, finite, traces_from_json, traces_to_json
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import KnownPart, capped_layers

REFERENCE_BATCH = 25  # samples per forward pass of the FP32 reference (ranges) and measured errors


CACHE_KINDS = {
    "weights": ("sensitivity", "hessian-checkpoint"),
    "inputs": ("activation-sensitivity", "activation-checkpoint"),
}


def _cached_curvature(
    what: str,
    key: dict,
    metric: Metric,
    model,
    names: list[str],
    data: Dataset,
    targets,
    settings: ProbeSettings,
    cache: Cache,
    progress: bool,
    loss: Loss,
) -> tuple[HessianTraces, dict[str, list], bool]:
    """(traces, the metric's per-layer fields, whether from the cache); a Hutchinson estimate is
    checkpointed after every probe and resumed by the next run."""
    kind, checkpoint_kind = CACHE_KINDS[what]
    ranks = Ranks.current()  # under torchrun: rank 0 reads and writes the cache, all ranks probe
    cached = ranks.broadcast(cache.load(kind, key) if ranks.is_main else None)
    if cached is not None:
        return traces_from_json(cached), cached.get("details", {}), True
    checkpoint = None
    if metric.checkpointed:
        checkpoint = cache.entry(checkpoint_kind, {**key, "settings": {**key["settings"], "max_seconds": None}})
    traces, details = metric.traces(model, names, data.x, targets(), settings, progress, loss.fn, checkpoint)
    if ranks.is_main:
        cache.save(kind, key, {**traces_to_json(traces), **({"details": details} if details else {})})
        if checkpoint is not None:
            checkpoint.clear()
    return traces, details, False


def _cached_output_errors(cache: Cache, key: dict, measure) -> list[dict[int, OutputError]]:
    """Measured output errors, one {bits: OutputError} per layer or input group, cached under `key`."""
    cached = cache.load("output-mse", key)
    if cached is None:
        cached = [{str(b): [e.mse, e.sqnr_db, e.kl] for b, e in errors.items()} for errors in measure()]
        cache.save("output-mse", key, cached)
    return [{int(b): OutputError(*pair) for b, pair in errors.items()} for errors in cached]


def _bias_shifts(prepared: PreparedModel, data: Dataset, quantizer: Quantizer, ratios, cache: Cache) -> dict:
    """The quantizer's bias shifts per layer and width (mpq.quant.calibration.bias_shifts), {} without bias correction."""
    return (
        bias_shifts(prepared, data, ratios, quantizer.weight_clip, REFERENCE_BATCH, cache, quantizer.format)
        if quantizer.bias_correction
        else {}
    )


def _cached_kl_quadratic(
    prepared: PreparedModel,
    data: Dataset,
    quantizer: Quantizer,
    ratios,
    shifts,
    key: dict,
    settings: ProbeSettings,
    cache: Cache,
    progress: bool,
) -> tuple[KlQuadratic, bool]:
    """The kl_quadratic estimate for the quantizer's weights (clip `ratios`, bias correction: `shifts()`), cached; and whether it came from the cache."""
    names = key["layers"]
    # under kl_quadratic's name and without kl_anchored's setting for every quadratic metric: kl_anchored scales the same estimate
    settings_key = {k: v for k, v in key["settings"].items() if k != "anchor_samples"}
    full_key = {
        **key,
        "settings": settings_key,
        "metric": "kl_quadratic",
        "quantizer": quantizer.to_json(),
        "draws": DRAWS,
        "bits": list(ALL_BITS),
    }
    cached = cache.load("kl-quadratic", full_key)
    from_cache = cached is not None
    if cached is None:
        result = kl_quadratic_omegas(
            prepared.folded,
            names,
            data.x,
            ALL_BITS,
            ratios,
            shifts(),
            settings.batch_size,
            DRAWS,
            settings.seed,
            progress,
            quantizer.format,
        )
        cached = {
            "omega": result.omega,
            "stderr": result.stderr,
            "samples": result.samples,
            "draws": result.draws,
            "seconds": result.seconds,
            "channel_omega": {
                n: {b: c.tolist() for b, c in per_width.items()} for n, per_width in result.channel_omega.items()
            },
        }
        cache.save("kl-quadratic", full_key, cached)
    per_width = lambda table, cast: {n: {int(b): cast(v) for b, v in t.items()} for n, t in table.items()}  # noqa: E731
    return KlQuadratic(
        omega=per_width(cached["omega"], float),
        stderr=per_width(cached["stderr"], float),
        channel_omega=per_width(cached["channel_omega"], np.asarray),
        samples=cached["samples"],
        draws=cached["draws"],
        seconds=cached["seconds"],
    ), from_cache


def _cached_anchor_kls(
    prepared: PreparedModel,
    data: Dataset,
    quantizer: Quantizer,
    ratios,
    shifts,
    key: dict,
    samples: int,
    cache: Cache,
    progress: bool,
) -> dict[str, float]:
    """Every layer's measured one-layer KL at ANCHOR_BITS on `samples` anchor samples (mpq.sensitivity.anchor), cached."""
    names = key["layers"]
    anchor_key = {k: v for k, v in key.items() if k not in ("metric", "settings")} | {
        "quantizer": quantizer.to_json(),
        "bits": ANCHOR_BITS,
        "samples": samples,
    }
    cached = cache.load("kl-anchor", anchor_key)
    if cached is None:
        deltas = lambda name: parameter_deltas(
            prepared.folded.get_submodule(name),
            (ANCHOR_BITS,),
            ratios.get(name),
            shifts().get(name),
            quantizer.format,
        )  # noqa: E731
        x = data.x[anchor_indices(len(data), samples).to(data.x.device)]
        errors = weight_output_errors(prepared.folded, names, x, (ANCHOR_BITS,), REFERENCE_BATCH, progress, deltas)
        cached = {n: errors[n][ANCHOR_BITS].kl for n in names}
        cache.save("kl-anchor", anchor_key, cached)
    return {n: float(v) for n, v in cached.items()}


def _measured_fields(errors: dict[int, OutputError], metric: OutputMSE) -> tuple[dict[int, float], dict]:
    """(Omega per width: the output MSE or KL the metric names, the JSON fields)."""
    omega = {b: getattr(e, metric.field) for b, e in errors.items()}
    return omega, {
        metric.name: {str(b): v for b, v in omega.items()},
        "output_sqnr_db": {str(b): finite(e.sqnr_db) for b, e in errors.items()},
    }


def _per_layer(details: dict[str, list], i: int) -> dict:
    return {k: values[i] for k, values in details.items()}


def _activation_sensitivities(
    prepared: PreparedModel,
    data: Dataset,
    settings: ProbeSettings,
    cache: Cache,
    progress: bool,
    loss: Loss,
    metric: Metric,
    key: dict,
    targets,
) -> dict[str, ActivationSensitivity]:
    """Every quantizable input's sensitivity under `metric` (see mpq.sensitivity.activation)."""
    from mpq.quant.reference import fp32_reference

    groups = input_groups(prepared.graph.layers, prepared.graph.act_tie_groups)
    if not groups:
        return {}
    members = [n for g in groups for n in g]
    ranges = fp32_reference(prepared, data, REFERENCE_BATCH, cache).input_ranges
    error_key = {"model": prepared.fingerprint, "data": key["data"], "layers": members, "bits": list(ALL_BITS)}
    errors = cache.load("act-quant-error", error_key)
    if errors is None:
        errors = input_quant_errors(prepared.folded, members, ranges, data.x, ALL_BITS, REFERENCE_BATCH)
        cache.save("act-quant-error", error_key, errors)
    errors = {n: {int(b): e for b, e in per_width.items()} for n, per_width in errors.items()}
    shapes = [prepared.graph.by_name[g[0]].input_shape for g in groups]
    act_key = {**key, "metric": metric.name, "inputs": groups}
    if metric.kind == "measured":
        params = lambda name, bits: act_quant_params(ranges, name, bits)  # noqa: E731
        measured = _cached_output_errors(
            cache,
            {**act_key, "bits": list(ALL_BITS)},
            lambda: input_output_errors(prepared.folded, groups, params, data.x, ALL_BITS, REFERENCE_BATCH),
        )
        nan = float("nan")
        estimates = [(nan, nan, 0, *_measured_fields(m, metric)) for m in measured]
    else:
        with perturbed_inputs(prepared.folded, groups, shapes) as wrapper:
            traces, details, _ = _cached_curvature(
                "inputs", act_key, metric, wrapper, wrapper.names, data, targets, settings, cache, progress, loss
            )
        estimates = [
            (float(traces.trace[g]), float(traces.stderr[g]), traces.probes_of(g), None, _per_layer(details, g))
            for g in range(len(groups))
        ]
    result = {}
    for group, shape, (trace, stderr, probes, measured_omega, fields) in zip(groups, shapes, estimates):
        for name in group:
            result[name] = ActivationSensitivity(
                group=group,
                trace=trace,
                trace_stderr=stderr,
                probes=probes,
                elements=math.prod(shape),
                quant_error=errors[name],
                measured_omega=measured_omega,
                details=fields,
            )
    return result


def _check_two_probes(traces: HessianTraces, settings: ProbeSettings) -> None:
    """A standard error needs two probes: when the time cap stopped some layer before, say what to raise."""
    fewest = min(traces.probes_of(i) for i in range(len(traces.layer_names)))
    if (
        fewest < 2 and traces.stop_reason == "max_seconds"
    ):  # (an exact estimate, e.g. gauss_newton over every class, needs no probes)
        raise MpqError(
            f"the probing stopped after {settings.max_seconds:g} s with {fewest} probe(s) of some layer, and a standard error needs two: "
            "raise --max-seconds (max_seconds=), or lower --batch-size"
        )


def _capped(traces: HessianTraces, settings: ProbeSettings) -> np.ndarray:
    """Per layer: a cap stopped its estimate above the tolerance. A Hutchinson estimate cached before
    estimates said so (no `capped`) is judged by the rule hutchinson_traces applies."""
    if traces.capped is not None:
        return traces.capped
    if traces.layer_probes is None:  # no per-layer probe counts: not a Hutchinson estimate, no cap to name
        return np.zeros(len(traces.layer_names), dtype=bool)
    return capped_layers(
        KnownPart.none(len(traces.layer_names)), traces.trace, traces.stderr, settings.tol, traces.stop_reason
    )


def output_dims(prepared: PreparedModel, data: Dataset) -> int:
    """How many dimensions the model's output has (2: [batch, classes]), from one sample."""
    with torch.no_grad(), module_calls_visible():
        return prepared.folded(data.x[:1]).dim()


def analyze_prepared(
    prepared: PreparedModel,
    data: Dataset,
    settings: ProbeSettings = ProbeSettings(),
    cache: Cache = Cache(None),
    progress: bool | None = None,
    loss: Loss | None = None,
    metric: str = "hessian",
    activations: bool = False,
    quantizer: Quantizer = DEFAULT_QUANTIZER,
) -> Sensitivity:
    """Per-layer sensitivities under `metric` (cached on disk) and quantization errors of every
    quantizable layer, the errors those of `quantizer`'s weight quantizer (the one the plan is verified
    with); with `activations`, every layer's input too.

    An unfinished Hutchinson estimate is checkpointed in the cache after every probe and resumed by the next run.
    """
    embeddings = prepared.outputs.embeddings
    name, metric = metric, metric_of(metric)
    if activations and not metric.inputs:
        raise MpqError(
            f"the {name} metric covers weights only: choose activation widths by cost (--no-act-sensitivity) or use another --metric for the inputs' sensitivity"
        )
    loss = (
        resolve_loss(metric.fixed_loss, data.y is not None, embeddings)
        if metric.fixed_loss
        else (loss or resolve_loss(None, data.y is not None, embeddings))
    )
    if metric.kind == "curvature":  # the measured and quadratic metrics do not use the loss
        metric.check_loss(loss.name, output_dims(prepared, data))
        loss.check(prepared.folded, data)
    names = [layer.name for layer in prepared.graph.layers]
    key = {
        "model": prepared.fingerprint,
        "data": data.fingerprint(),
        "loss": loss.name,
        "settings": settings.to_json(),
        "layers": names,
        **({"metric": name} if not isinstance(metric, HessianTrace) else {}),  # the default keeps its earlier key
        **({"estimator": metric.cache_tag} if metric.cache_tag else {}),
    }
    targets = functools.cache(lambda: loss.targets_for(prepared.folded, data))  # computed once, when needed
    nan = float("nan")
    no_traces = lambda seconds, reason: HessianTraces(  # noqa: E731
        layer_names=names,
        trace=np.full(len(names), nan),
        stderr=np.full(len(names), nan),
        probes=0,
        channel_trace=[np.full(layer.out_channels, nan) for layer in prepared.graph.layers],
        channel_stderr=[np.full(layer.out_channels, nan) for layer in prepared.graph.layers],
        seconds=seconds,
        stop_reason=reason,
    )
    ratios = weight_clip_ratios(prepared, quantizer.weight_clip, cache, quantizer.format)
    shifts = functools.cache(lambda: _bias_shifts(prepared, data, quantizer, ratios, cache))  # once, when needed
    quadratic = None
    if metric.kind == "quadratic":
        quadratic, from_cache = _cached_kl_quadratic(
            prepared, data, quantizer, ratios, shifts, key, settings, cache, progress
        )
        unscaled, anchors = quadratic, {}
        if metric.anchored:
            started = time.perf_counter()
            anchor_kls = _cached_anchor_kls(
                prepared, data, quantizer, ratios, shifts, key, settings.anchor_samples, cache, progress
            )
            anchors = {n: (kl, anchor_ratio(kl, quadratic.omega[n][ANCHOR_BITS])) for n, kl in anchor_kls.items()}
            quadratic = quadratic.scaled({n: r for n, (_, r) in anchors.items()})
            quadratic.seconds += time.perf_counter() - started
        traces, details = no_traces(quadratic.seconds, "measured"), {}
    elif metric.kind == "measured":
        started = time.perf_counter()

        def measure() -> list[
            dict[int, OutputError]
        ]:  # every layer measured once (a comprehension over the call measured all of them per layer)
            deltas = None
            if metric.uses_quantizer:  # the quantizer's weights and corrected bias
                deltas = lambda name: parameter_deltas(
                    prepared.folded.get_submodule(name),
                    ALL_BITS,
                    ratios.get(name),
                    shifts().get(name),
                    quantizer.format,
                )  # noqa: E731
            errors = weight_output_errors(prepared.folded, names, data.x, ALL_BITS, REFERENCE_BATCH, progress, deltas)
            return [errors[n] for n in names]

        quantizer_key = {"quantizer": quantizer.to_json()} if metric.uses_quantizer else {}
        measured = _cached_output_errors(cache, {**key, **quantizer_key, "bits": list(ALL_BITS)}, measure)
        traces, details, from_cache = no_traces(time.perf_counter() - started, "measured"), {}, False
    else:
        traces, details, from_cache = _cached_curvature(
            "weights", key, metric, prepared.folded, names, data, targets, settings, cache, progress, loss
        )
        _check_two_probes(traces, settings)
    capped = _capped(traces, settings)
    inputs = (
        _activation_sensitivities(prepared, data, settings, cache, progress, loss, metric, key, targets)
        if activations
        else {}
    )
    errors = channel_error_table(prepared.folded, names, clip_ratios=ratios, fmt=quantizer.format)
    layers = {}
    for i, layer in enumerate(prepared.graph.layers):
        measured_omega, measured_stderr, channel_measured = None, None, None
        if metric.kind == "measured":
            measured_omega, fields = _measured_fields(measured[i], metric)
        elif quadratic is not None:
            measured_omega, measured_stderr = quadratic.omega[layer.name], quadratic.stderr[layer.name]
            channel_measured = quadratic.channel_omega[layer.name]
            fields = {
                "kl_quadratic": {str(b): v for b, v in unscaled.omega[layer.name].items()},
                "kl_quadratic_stderr": {str(b): v for b, v in unscaled.stderr[layer.name].items()},
                "samples": quadratic.samples,
                "draws": quadratic.draws,
            }
            if layer.name in anchors:
                fields |= {"anchor_kl": anchors[layer.name][0], "anchor_ratio": anchors[layer.name][1]}
        else:
            fields = _per_layer(details, i)
        layers[layer.name] = LayerSensitivity(
            layer=layer,
            hessian_trace=float(traces.trace[i]),
            hessian_trace_stderr=float(traces.stderr[i]),
            probes=traces.probes_of(i),
            quant_error={b: float(e.sum()) for b, e in errors[layer.name].items()},
            channel_trace=traces.channel_trace[i],
            channel_trace_stderr=traces.channel_stderr[i],
            channel_quant_error=errors[layer.name],
            metric=name,
            measured_omega=measured_omega,
            measured_stderr=measured_stderr,
            channel_measured_omega=channel_measured,
            details=fields,
            activation=inputs.get(layer.name),
            capped=bool(capped[i]),
        )
    return Sensitivity(
        model_fingerprint=prepared.fingerprint,
        data_fingerprint=key["data"],
        loss=loss.name,
        layers=layers,
        float_bytes=prepared.graph.float_bytes,
        settings=settings,
        seconds=traces.seconds,
        stop_reason=traces.stop_reason,
        from_cache=from_cache,
        resumed_probes=traces.resumed_from,
        act_tie_groups=prepared.graph.act_tie_groups,
        metric=name,
        quantizer=quantizer,
        notes=list(traces.notes),
    )
