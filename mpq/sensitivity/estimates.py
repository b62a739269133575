"""What a metric's estimate gives per layer: Ω for every width (and per output channel), or a trace-like
number T_l from which Ω_l(b) = T_l / n_l · ||Q_b(W_l) − W_l||² follows, with the metric's own fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: those are written as null."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Trace:
    """A trace-like T_l (Tr(H_l), Tr(F_l), n_l·λ_max) with its standard error, the probes it took, per channel."""

    value: float
    stderr: float
    probes: int
    channel: np.ndarray = field(repr=False)
    channel_stderr: np.ndarray = field(repr=False)


@dataclass
class LayerEstimate:
    """One layer's estimate: either Ω per width (`omega`, with `omega_stderr` and `channel_omega` when the metric
    has them) or a `trace`; `details` are the metric's own JSON fields."""

    omega: dict[int, float] | None = None
    omega_stderr: dict[int, float] | None = None
    channel_omega: dict[int, np.ndarray] | None = field(default=None, repr=False)
    trace: Trace | None = None
    details: dict = field(default_factory=dict)
    capped: bool = False  # a cap (max_probes, max_seconds) stopped it above the tolerance


@dataclass
class Estimates:
    """A metric's estimate of every layer (in the graph's order) and how it went."""

    layers: list[LayerEstimate]
    seconds: float
    stop_reason: str
    from_cache: bool = False
    resumed_from: int = 0  # probes read from the checkpoint of an interrupted run
    notes: list[str] = field(default_factory=list)
