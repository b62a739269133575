"""What a sensitivity analysis gives: per layer its curvature estimate (with standard error, probes and the
metric's own fields) and quantization errors, and Omega for any width; JSON for the cache and `--json`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mpq.inputs.graph import LayerInfo
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.sensitivity.activation import ActivationSensitivity
from mpq.sensitivity.hessian import HessianTraces
from mpq.sensitivity.registry import metric_of
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import CAPS


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: those are written as null."""
    return value if math.isfinite(value) else None


@dataclass
class LayerSensitivity:
    """One layer's Hessian trace (with standard error) and quantization errors per width.

    Under another metric, `hessian_trace` holds the trace-like number Omega uses in its place (see
    mpq.sensitivity.metrics; NaN for output_mse, whose Omega is `measured_omega`)."""

    layer: LayerInfo
    hessian_trace: float
    hessian_trace_stderr: float
    probes: int
    quant_error: dict[int, float]
    channel_trace: np.ndarray
    channel_trace_stderr: np.ndarray
    channel_quant_error: dict[int, np.ndarray] = field(repr=False)
    metric: str = "hessian"
    measured_omega: dict[int, float] | None = None  # output_mse, kl_quadratic: Omega(b) itself
    measured_stderr: dict[int, float] | None = None  # kl_quadratic: the standard error of Omega(b)
    channel_measured_omega: dict[int, np.ndarray] | None = field(default=None, repr=False)  # kl_quadratic: per channel
    details: dict = field(default_factory=dict)  # the metric's own fields, as written to JSON
    activation: ActivationSensitivity | None = None  # the input's sensitivity, when analyzed
    capped: bool = False  # a cap (max_probes, max_seconds) stopped its estimate above the tolerance

    @property
    def estimator(self) -> str:
        """How the number was estimated: the metric's estimator, or what the metric says of this layer
        (gauss_newton: gauss-newton, gauss-newton+residual, or gauss-newton (residual skipped))."""
        return self.details.get("estimator") or metric_of(self.metric).estimator

    def bounded_trace(self, margin: float = 0.0) -> float:
        """max(Tr + margin * stderr, 0): with margin > 0, the upper edge of the estimate's confidence
        interval, so a layer whose trace is uncertain is not taken for an insensitive one."""
        return max(self.hessian_trace + margin * self.hessian_trace_stderr, 0.0)

    def omega(self, bits: int, margin: float = 0.0) -> float:
        """Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2, the trace bounded as in `bounded_trace` (output_mse: measured;
        kl_quadratic: the estimate bounded the same way, max(Omega + margin * stderr, 0))."""
        if self.measured_omega is not None:
            stderr = self.measured_stderr[bits] if self.measured_stderr is not None else 0.0
            return max(self.measured_omega[bits] + margin * stderr, 0.0)
        return self.bounded_trace(margin) / self.layer.params * self.quant_error[bits]

    def channel_omega(self, bits: int, margin: float = 0.0) -> np.ndarray:
        """Per output channel c: max(Tr(H_c) + margin * stderr_c, 0) / n_c * ||Q_b(W_c) - W_c||^2, n_c = params / channels
        (kl_quadratic: the channel's own second-order term, no margin)."""
        if self.channel_measured_omega is not None:
            return self.channel_measured_omega[bits]
        trace = np.maximum(self.channel_trace + margin * self.channel_trace_stderr, 0.0)
        return trace / (self.layer.params / self.layer.out_channels) * self.channel_quant_error[bits]

    def act_omega(self, act_bits: int | None, margin: float = 0.0) -> float:
        """This layer's share of its input's Omega_act(a); 0 without activation sensitivity or for a float input."""
        return 0.0 if self.activation is None else self.activation.omega(act_bits, margin)

    def warning(self, tol: float) -> str | None:
        return metric_of(self.metric).warning(self.hessian_trace, self.hessian_trace_stderr, tol, self.details)


@dataclass(frozen=True)
class StoppedShort:
    """Layers whose estimate a cap stopped above the tolerance, of how many, and at which cap."""

    layers: list[str]
    total: int
    tol: float
    cap: str  # "max_probes" or "max_seconds"
    limit: float  # the cap's value: probes or seconds

    def line(self) -> str:
        """The one line the terminal, --json and report.md show above the sensitivity table."""
        at, options = (
            (f"{self.limit:g} s", "--max-seconds or --max-probes")
            if self.cap == "max_seconds"
            else (f"{self.limit:g}-probe", "--max-probes or --max-seconds")
        )
        return f"{len(self.layers)} of {self.total} layers stopped above the {self.tol * 100:g}% tolerance at the {at} cap: raise {options}"


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
    metric: str = "hessian"
    quantizer: Quantizer = DEFAULT_QUANTIZER  # the quantization errors are those of its weight quantizer
    notes: list[str] = field(default_factory=list)  # what the estimate could not do, one sentence each

    def stopped_short(self) -> StoppedShort | None:
        """The layers whose estimate a cap stopped above the tolerance (None: none)."""
        capped = [name for name, s in self.layers.items() if s.capped]
        if not capped:
            return None
        cap = self.stop_reason if self.stop_reason in CAPS else "max_probes"
        limit = self.settings.max_seconds if cap == "max_seconds" else self.settings.max_probes
        return StoppedShort(capped, len(self.layers), self.settings.tol, cap, limit)

    @property
    def has_activations(self) -> bool:
        """Whether the inputs' sensitivity was analyzed (analyze(..., activations=True))."""
        return any(s.activation is not None for s in self.layers.values())

    def warnings(self) -> dict[str, str]:
        found = {name: s.warning(self.settings.tol) for name, s in self.layers.items()}
        for name, s in self.layers.items():
            note = s.activation and s.activation.warning(self.metric, self.settings.tol)
            if note:
                found[name] = "; ".join(filter(None, [found[name], f"input: {note}"]))
        return {name: w for name, w in found.items() if w}

    def to_json(self) -> dict:
        """The `mpq sensitivity --json` contract (traces of the Hessian block, not divided by params)."""
        return {
            "schema": "mpq.sensitivity/1",
            "metric": self.metric,
            "loss": self.loss,
            "probes": max((s.probes for s in self.layers.values()), default=0),
            "stop_reason": self.stop_reason,
            "resumed_probes": self.resumed_probes,
            "tolerance": self.settings.tol,
            "stopped_short": short.line() if (short := self.stopped_short()) else None,
            "notes": list(self.notes),
            "layers": {
                name: {
                    "params": s.layer.params,
                    "hessian_trace": finite(s.hessian_trace),
                    "hessian_trace_stderr": finite(s.hessian_trace_stderr),
                    "probes": s.probes,
                    "warning": s.warning(self.settings.tol),
                    "estimator": s.estimator,
                    **s.details,
                    **({"activation": s.activation.to_json()} if s.activation is not None else {}),
                }
                for name, s in self.layers.items()
            },
        }


def traces_to_json(traces: HessianTraces) -> dict:
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
        **({"layer_probes": traces.layer_probes.tolist()} if traces.layer_probes is not None else {}),
        **({"capped": traces.capped.tolist()} if traces.capped is not None else {}),
        **({"notes": traces.notes} if traces.notes else {}),
    }


def traces_from_json(data: dict) -> HessianTraces:
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
        layer_probes=np.array(data["layer_probes"]) if "layer_probes" in data else None,
        capped=np.array(data["capped"], dtype=bool) if "capped" in data else None,
        notes=list(data.get("notes", [])),
    )
