"""HAWQ-V2 sensitivity: Omega_l(b) = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2, per layer and per channel."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mpq.cache import Cache
from mpq.calibration import weight_clip_ratios
from mpq.data import Dataset
from mpq.graph import LayerInfo, PreparedModel
from mpq.sensitivity.error import channel_error_table
from mpq.losses import Loss, resolve_loss
from mpq.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.sensitivity.hessian import HessianTraces, ProbeSettings, hutchinson_traces


@dataclass
class LayerSensitivity:
    """One layer's Hessian trace (with standard error) and quantization errors per width."""

    layer: LayerInfo
    hessian_trace: float
    hessian_trace_stderr: float
    probes: int
    quant_error: dict[int, float]
    channel_trace: np.ndarray
    channel_trace_stderr: np.ndarray
    channel_quant_error: dict[int, np.ndarray] = field(repr=False)

    def bounded_trace(self, margin: float = 0.0) -> float:
        """max(Tr + margin * stderr, 0): with margin > 0, the upper edge of the estimate's confidence
        interval, so a layer whose trace is uncertain is not taken for an insensitive one."""
        return max(self.hessian_trace + margin * self.hessian_trace_stderr, 0.0)

    def omega(self, bits: int, margin: float = 0.0) -> float:
        """Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2, the trace bounded as in `bounded_trace`."""
        return self.bounded_trace(margin) / self.layer.params * self.quant_error[bits]

    def warning(self, tol: float) -> str | None:
        if self.hessian_trace <= 2 * self.hessian_trace_stderr:
            return "trace not clearly positive"
        if self.hessian_trace_stderr > tol * self.hessian_trace:
            return f"relative stderr {self.hessian_trace_stderr / self.hessian_trace:.0%} above tolerance"
        return None


@dataclass
class Sensitivity:
    """Everything the solver needs: per-layer sensitivities, layer costs and the float remainder."""

    model_fingerprint: str
    data_fingerprint: str
    loss: str
    layers: dict[str, LayerSensitivity]
    float_bytes: int
    settings: ProbeSettings
    seconds: float
    stop_reason: str
    from_cache: bool = False
    resumed_probes: int = 0  # probes read from the checkpoint of an interrupted run
    act_tie_groups: list[list[str]] = field(default_factory=list)  # layers sharing one activation quantizer
    quantizer: Quantizer = DEFAULT_QUANTIZER  # the quantization errors are those of its weight quantizer

    def warnings(self) -> dict[str, str]:
        found = {name: s.warning(self.settings.tol) for name, s in self.layers.items()}
        return {name: w for name, w in found.items() if w}

    def to_json(self) -> dict:
        """The `mpq sensitivity --json` contract (traces of the Hessian block, not divided by params)."""
        return {
            "schema": "mpq.sensitivity/1",
            "loss": self.loss,
            "probes": max((s.probes for s in self.layers.values()), default=0),
            "stop_reason": self.stop_reason,
            "resumed_probes": self.resumed_probes,
            "tolerance": self.settings.tol,
            "layers": {
                name: {
                    "params": s.layer.params,
                    "hessian_trace": s.hessian_trace,
                    "hessian_trace_stderr": s.hessian_trace_stderr,
                    "probes": s.probes,
                    "warning": s.warning(self.settings.tol),
                }
                for name, s in self.layers.items()
            },
        }


def _traces_to_json(traces: HessianTraces) -> dict:
    return {
        "trace": traces.trace.tolist(),
        "stderr": traces.stderr.tolist(),
        "probes": traces.probes,
        "channel_trace": [c.tolist() for c in traces.channel_trace],
        "channel_stderr": [c.tolist() for c in traces.channel_stderr],
        "seconds": traces.seconds,
        "stop_reason": traces.stop_reason,
        "resumed_from": traces.resumed_from,
        "layer_names": traces.layer_names,
    }


def _traces_from_json(data: dict) -> HessianTraces:
    return HessianTraces(
        layer_names=data["layer_names"],
        trace=np.array(data["trace"]),
        stderr=np.array(data["stderr"]),
        probes=data["probes"],
        channel_trace=[np.array(c) for c in data["channel_trace"]],
        channel_stderr=[np.array(c) for c in data["channel_stderr"]],
        seconds=data["seconds"],
        stop_reason=data["stop_reason"],
        resumed_from=data.get("resumed_from", 0),
    )


def analyze_prepared(
    prepared: PreparedModel,
    data: Dataset,
    settings: ProbeSettings = ProbeSettings(),
    cache: Cache = Cache(None),
    progress: bool = True,
    loss: Loss | None = None,
    quantizer: Quantizer = DEFAULT_QUANTIZER,
) -> Sensitivity:
    """Hessian traces (cached on disk) and quantization errors of every quantizable layer, the
    errors those of `quantizer`'s weight quantizer (the one the plan is verified with).

    An unfinished estimate is checkpointed in the cache after every probe and resumed by the next run.
    """
    loss = loss or resolve_loss(None, data.y is not None)
    names = [layer.name for layer in prepared.graph.layers]
    key = {
        "model": prepared.fingerprint,
        "data": data.fingerprint(),
        "loss": loss.name,
        "settings": settings.to_json(),
        "layers": names,
    }
    cached = cache.load("sensitivity", key)
    if cached is not None:
        traces, from_cache = _traces_from_json(cached), True
    else:
        checkpoint = cache.entry("hessian-checkpoint", {**key, "settings": {**key["settings"], "max_seconds": None}})
        targets = loss.targets_for(prepared.folded, data)
        traces = hutchinson_traces(prepared.folded, names, data.x, targets, settings, progress, loss_fn=loss.fn, checkpoint=checkpoint)
        from_cache = False
        cache.save("sensitivity", key, _traces_to_json(traces))
        if checkpoint is not None:
            checkpoint.clear()
    errors = channel_error_table(prepared.folded, names, clip_ratios=weight_clip_ratios(prepared, quantizer.weight_clip, cache))
    layers = {}
    for i, layer in enumerate(prepared.graph.layers):
        layers[layer.name] = LayerSensitivity(
            layer=layer,
            hessian_trace=float(traces.trace[i]),
            hessian_trace_stderr=float(traces.stderr[i]),
            probes=traces.probes,
            quant_error={b: float(e.sum()) for b, e in errors[layer.name].items()},
            channel_trace=traces.channel_trace[i],
            channel_trace_stderr=traces.channel_stderr[i],
            channel_quant_error=errors[layer.name],
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
        quantizer=quantizer,
    )
