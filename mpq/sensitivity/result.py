"""What a sensitivity analysis gives: per layer its curvature estimate (with standard error, probes and the
metric's own fields) and quantization errors, and Omega for any width; JSON for the cache and `--json`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mpq.inputs.graph import LayerInfo
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.sensitivity.activation import ActivationSensitivity
from mpq.sensitivity.estimates import LayerEstimate, Trace, finite
from mpq.sensitivity.registry import metric_of
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import CAPS


@dataclass
class LayerSensitivity:
    """One layer's sensitivity under a metric: Omega for every width (`omega_table`, with its standard error) and
    per output channel, the quantization errors, and the trace-like T_l Omega comes from under a curvature metric
    (`trace`; None under the measured and quadratic metrics, whose Omega is estimated directly)."""

    layer: LayerInfo
    metric: str
    omega_table: dict[int, float]
    quant_error: dict[int, float]
    channel_quant_error: dict[int, np.ndarray] = field(repr=False)
    omega_stderr: dict[int, float] | None = None
    channel_omega_table: dict[int, np.ndarray] | None = field(default=None, repr=False)  # None: no per-channel Omega
    channel_omega_stderr: dict[int, np.ndarray] | None = field(default=None, repr=False)
    trace: Trace | None = None
    details: dict = field(default_factory=dict)  # the metric's own fields, as written to JSON
    activation: ActivationSensitivity | None = None  # the input's sensitivity, when analyzed
    capped: bool = False  # a cap (max_probes, max_seconds) stopped its estimate above the tolerance

    @classmethod
    def of(cls, layer: LayerInfo, metric: str, estimate: LayerEstimate, errors: dict[int, np.ndarray], activation):
        """The record of one layer's estimate; a trace T gives Omega(b) = T / n * err(b) (per channel with n_c)."""
        quant_error = {b: float(e.sum()) for b, e in errors.items()}
        tables = _trace_tables(layer, estimate.trace, quant_error, errors) if estimate.trace else {}
        return cls(
            layer=layer,
            metric=metric,
            omega_table=estimate.omega if estimate.omega is not None else tables["omega_table"],
            quant_error=quant_error,
            channel_quant_error=errors,
            omega_stderr=estimate.omega_stderr if estimate.omega is not None else tables["omega_stderr"],
            channel_omega_table=estimate.channel_omega if estimate.trace is None else tables["channel_omega_table"],
            channel_omega_stderr=tables.get("channel_omega_stderr"),
            trace=estimate.trace,
            details=estimate.details,
            activation=activation,
            capped=estimate.capped,
        )

    @property
    def probes(self) -> int:
        return self.trace.probes if self.trace is not None else 0

    @property
    def hessian_trace(self) -> float:
        """T_l of a curvature metric (Tr(H_l) for hessian and gauss_newton)."""
        if self.trace is None:
            raise AttributeError(f"the {self.metric} metric estimates Omega directly and has no trace: use omega(bits)")
        return self.trace.value

    @property
    def hessian_trace_stderr(self) -> float:
        return self.trace.stderr if self.trace is not None else float("nan")

    @property
    def channel_trace(self) -> np.ndarray:
        return self.trace.channel

    @property
    def channel_trace_stderr(self) -> np.ndarray:
        return self.trace.channel_stderr

    @property
    def measured_omega(self) -> dict[int, float] | None:
        """Omega per width as a measured or quadratic metric estimated it (None under a curvature metric)."""
        return self.omega_table if self.trace is None else None

    @property
    def measured_stderr(self) -> dict[int, float] | None:
        return self.omega_stderr if self.trace is None else None

    @property
    def estimator(self) -> str:
        """How the number was estimated: the metric's estimator, or what the metric says of this layer
        (gauss_newton: gauss-newton, gauss-newton+residual, or gauss-newton (residual skipped))."""
        return self.details.get("estimator") or metric_of(self.metric).estimator

    def omega(self, bits: int, margin: float = 0.0) -> float:
        """max(Omega(b) + margin * stderr, 0): with margin > 0, the upper edge of the estimate's confidence
        interval, so a layer whose estimate is uncertain is not taken for an insensitive one."""
        value = self.omega_table[bits]
        if margin and self.omega_stderr is not None:
            value = value + margin * self.omega_stderr[bits]
        return max(value, 0.0)

    def channel_omega(self, bits: int, margin: float = 0.0) -> np.ndarray:
        """Per output channel c: max(Omega_c(b) + margin * stderr_c, 0) (no margin where the metric gives none)."""
        table = self.channel_omega_table[bits]
        if margin and self.channel_omega_stderr is not None:
            table = table + margin * self.channel_omega_stderr[bits]
        return np.maximum(table, 0.0)

    def act_omega(self, act_bits: int | None, margin: float = 0.0) -> float:
        """This layer's share of its input's Omega_act(a); 0 without activation sensitivity or for a float input."""
        return 0.0 if self.activation is None else self.activation.omega(act_bits, margin)

    def warning(self, tol: float) -> str | None:
        trace, stderr = (self.trace.value, self.trace.stderr) if self.trace is not None else (math.nan, math.nan)
        return metric_of(self.metric).warning(trace, stderr, tol, self.details)


def _trace_tables(layer: LayerInfo, trace: Trace, quant_error: dict[int, float], errors: dict[int, np.ndarray]):
    """Omega and its standard error per width and per channel from a trace: T / n * ||Q_b(W) - W||^2."""
    per_channel = layer.params / layer.out_channels
    return {
        "omega_table": {b: trace.value / layer.params * e for b, e in quant_error.items()},
        "omega_stderr": {b: trace.stderr / layer.params * e for b, e in quant_error.items()},
        "channel_omega_table": {b: trace.channel / per_channel * e for b, e in errors.items()},
        "channel_omega_stderr": {b: trace.channel_stderr / per_channel * e for b, e in errors.items()},
    }


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
        return (
            f"{len(self.layers)} of {self.total} layers stopped above the {self.tol * 100:g}% tolerance at "
            f"the {at} cap: raise {options}"
        )


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
            note = s.activation and s.activation.warning(metric_of(self.metric), self.settings.tol)
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
                    **_trace_json(s.trace),
                    "omega": {str(b): finite(v) for b, v in s.omega_table.items()},
                    "probes": s.probes,
                    "warning": s.warning(self.settings.tol),
                    "estimator": s.estimator,
                    **s.details,
                    **({"activation": s.activation.to_json()} if s.activation is not None else {}),
                }
                for name, s in self.layers.items()
            },
        }


def _trace_json(trace: Trace | None) -> dict:
    """A curvature metric's trace under the contract's names (traces of the block, not divided by params)."""
    if trace is None:
        return {}
    return {"hessian_trace": finite(trace.value), "hessian_trace_stderr": finite(trace.stderr)}
