"""The probe settings of the curvature estimates, validated where they are made (no torch needed to read them)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from mpq.errors import MpqError

HVP_METHODS = ("fwd-rev", "rev-rev")  # forward over reverse (the faster), reverse over reverse
PROBINGS = ("per-layer", "all-layers")


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass(frozen=True)
class ProbeSettings:
    """How the curvature is estimated: probe until every layer's standard error is under `tol` of its
    trace, with at least `min_probes` (lowered to `max_probes` when above it) and at most `max_probes`
    probes or `max_seconds`, `batch_size` samples per Hessian-vector product, seeded by `seed`; kl_anchored
    measures its one-layer KLs on `anchor_samples` samples."""

    tol: float = 0.05
    min_probes: int = 8
    max_probes: int = 32
    max_seconds: float = 600.0
    batch_size: int = 8
    seed: int = 0
    hvp: str = "fwd-rev"  # "fwd-rev" (forward over reverse) or "rev-rev" (reverse over reverse)
    chunk_size: int = 0  # samples per chunk of a probe's batch (0: the whole batch at once)
    probing: str = "per-layer"  # "per-layer" (one product per layer and probe) or "all-layers" (one per probe)
    anchor_samples: int = 48  # kl_anchored: samples its one-layer KLs are measured on (mpq.sensitivity.anchor)

    def __post_init__(self) -> None:
        number = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
        for name in ("min_probes", "max_probes", "batch_size", "seed", "chunk_size", "anchor_samples"):
            if whole(getattr(self, name)):
                object.__setattr__(self, name, int(getattr(self, name)))
        if not number(self.tol) or not 0 < self.tol < 1:
            raise MpqError(f"tol={self.tol!r} must lie between 0 and 1 (e.g. 0.05 for 5%)")
        if not (whole(self.max_probes) and whole(self.min_probes)) or self.max_probes < 2 or self.min_probes < 2:
            raise MpqError(
                "max_probes and min_probes must be whole numbers of at least 2 (a standard error needs two probes)"
            )
        object.__setattr__(self, "min_probes", min(self.min_probes, self.max_probes))
        if not number(self.max_seconds) or self.max_seconds <= 0:
            raise MpqError(f"max_seconds={self.max_seconds!r} must be a positive number of seconds")
        if not whole(self.batch_size) or self.batch_size < 1:
            raise MpqError(f"batch_size={self.batch_size!r} must be a whole number of at least 1")
        if not whole(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise MpqError(f"seed={self.seed!r} must be a whole number from 0 to 2**63 - 1")
        if self.hvp not in HVP_METHODS:
            raise MpqError(f"unknown Hessian-vector product {self.hvp!r}: use one of {', '.join(HVP_METHODS)}")
        if not whole(self.chunk_size) or self.chunk_size < 0:
            raise MpqError(f"chunk_size={self.chunk_size!r} must be a whole number of samples, 0 for the whole batch")
        if not whole(self.anchor_samples) or self.anchor_samples < 1:
            raise MpqError(f"anchor_samples={self.anchor_samples!r} must be a whole number of at least 1")
        if self.probing not in PROBINGS:
            raise MpqError(f"unknown probing {self.probing!r}: use one of {', '.join(PROBINGS)}")

    def to_json(self) -> dict:
        return dict(self.__dict__)
