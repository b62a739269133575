"""When a probed estimate is good enough: the caps, and the tolerance on a trace of which a part is known."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CAPS = ("max_probes", "max_seconds")  # the stop reasons that are limits, not the tolerance


@dataclass(frozen=True)
class KnownPart:
    """A part K_l of each layer's trace known before probing, with its standard error s_K; the probes
    estimate the rest P_l, and the tolerance holds for the sum: T = K + P, se(T) = √(s_K² + s_P²).
    A layer is done when se(T) ≤ tol · T, or when s_P ≤ DOMINATED · s_K: K's own error then dominates
    (more probes could lower se(T) by under 5%, never to the tolerance)."""

    trace: np.ndarray  # [layers]
    stderr: np.ndarray  # [layers]
    DOMINATED: ClassVar[float] = 1 / 3

    @classmethod
    def none(cls, layers: int) -> "KnownPart":
        return cls(np.zeros(layers), np.zeros(layers))

    def total(self, trace: np.ndarray, stderr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, se(T)) per layer for the probed part's (trace, stderr)."""
        return self.trace + trace, np.hypot(self.stderr, stderr)

    def unsure(self, trace: np.ndarray, stderr: np.ndarray, tol: float) -> np.ndarray:
        """Per layer: the sum not yet within `tol` (or not positive) and the probed part's error not dominated."""
        total, se = self.total(trace, stderr)
        within = (total > 0) & (se <= tol * np.abs(total))
        dominated = (self.stderr > 0) & (stderr <= self.DOMINATED * self.stderr)
        return ~(within | dominated)


def capped_layers(known: KnownPart, trace: np.ndarray, stderr: np.ndarray, tol: float, stop_reason: str) -> np.ndarray:
    """Per layer: a cap (CAPS) stopped the probing with the layer's sum still not within `tol`."""
    return known.unsure(trace, stderr, tol) & (stop_reason in CAPS)
