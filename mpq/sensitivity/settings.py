"""The probe settings of the curvature estimates, validated where they are made (no torch needed to read them)."""

from __future__ import annotations

from dataclasses import dataclass

from mpq.params import Options, Real, Whole, check_fields

HVP_METHODS = ("fwd-rev", "rev-rev")  # forward over reverse (the faster), reverse over reverse
PROBINGS = ("per-layer", "all-layers")


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
_PROBES = "a whole number of at least 2 (a standard error needs two probes)"
PROBE_CONSTRAINTS = {
    "tol": Real(0, 1, closed="neither", phrase="a number between 0 and 1 (e.g. 0.05 for 5%)"),
    "min_probes": Whole(2, phrase=_PROBES),
    "max_probes": Whole(2, phrase=_PROBES),
    "max_seconds": Real(0, closed="right", phrase="a positive number of seconds"),
    "batch_size": Whole(1),
    "seed": Whole(0, MAX_SEED, phrase="a whole number from 0 to 2**63 - 1"),
    "hvp": Options(HVP_METHODS),
    "chunk_size": Whole(0, phrase="a whole number of samples, 0 for the whole batch"),
    "probing": Options(PROBINGS),
    "anchor_samples": Whole(1),
}


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
        check_fields(self, PROBE_CONSTRAINTS)
        object.__setattr__(self, "min_probes", min(self.min_probes, self.max_probes))

    def to_json(self) -> dict:
        return dict(self.__dict__)
