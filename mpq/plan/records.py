"""The typed parts of a plan: which model it was made for, what it predicts, how the solver ended.

Each writes the JSON object plan.json has always held (the keys in the order they were read, for a plan read back),
and reads by key like that object too, so code written against the dicts keeps working."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum

from mpq.cost.costs import CostKind, Costs


class SolverStatus(str, Enum):
    """How a solver call ended: optimal (proven), feasible (stopped by the time limit with a plan), infeasible, or
    not solved (stopped with no plan)."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"
    NOT_SOLVED = "not solved"

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class _Record(Mapping):
    """A frozen dataclass of optional fields that reads as its JSON object; `extra` keeps keys it does not know."""

    def to_json(self) -> dict:
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "order")}
        out = {k: v.value if isinstance(v, Enum) else v for k, v in known.items() if v is not None}
        out |= self.extra
        if not self.order:
            return out
        return {k: out[k] for k in self.order if k in out} | {k: v for k, v in out.items() if k not in self.order}

    @classmethod
    def from_json(cls, data: Mapping) -> "_Record":
        names = {f.name for f in fields(cls)} - {"extra", "order"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in known}  # unknown keys and nulls, written back as read
        return cls(**known, extra=extra, order=tuple(data))

    def __getitem__(self, key: str):
        return self.to_json()[key]

    def __iter__(self):
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True, eq=False)
class PlanModel(_Record):
    """The model a plan was made for: its fingerprint (mpq.inputs.graph), layer and parameter counts; for a plan
    solved from a table (mpq solve --table), the table's path, and its hash as the fingerprint."""

    fingerprint: str | None = None
    layers: int | None = None
    params: int | None = None
    table: str | None = None
    extra: dict = field(default_factory=dict)
    order: tuple = ()


@dataclass(frozen=True, eq=False)
class Predicted(_Record):
    """What the cost model predicts of a plan (mpq.cost) and its total Omega."""

    size_bytes: int | None = None
    bops: float | None = None
    omega: float | None = None
    bits_per_weight: float | None = None
    latency_s: float | None = None
    extra: dict = field(default_factory=dict)
    order: tuple = ()

    def costs(self) -> Costs:
        """The predicted costs by kind (the ones known)."""
        values = {kind: getattr(self, kind.value) for kind in CostKind}
        return Costs({k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True, eq=False)
class SolverRecord(_Record):
    """How the solve ended (no wall time: a plan stays byte-identical for a seed): the solver, its status, whether
    optimality was proven, the relative gap to its bound (None: unknown) and the time limit."""

    name: str | None = None
    status: SolverStatus | None = None
    proven_optimal: bool | None = None
    gap: float | None = None
    time_limit_s: float | None = None
    extra: dict = field(default_factory=dict)
    order: tuple = ("name", "status", "proven_optimal", "gap", "time_limit_s")

    def __post_init__(self) -> None:
        if isinstance(self.status, str) and self.status in {s.value for s in SolverStatus}:
            object.__setattr__(self, "status", SolverStatus(self.status))

    def to_json(self) -> dict:
        """Its fields; gap and time_limit_s are written as null when unknown (as plans always held them)."""
        out = super().to_json()
        if self.name is None:
            return out
        nulls = {k: None for k in ("gap", "time_limit_s") if k not in out}
        return {k: (out | nulls)[k] for k in (*self.order, *out) if k in out or k in nulls}
