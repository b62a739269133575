"""A Pareto sweep's result as typed values: each budget's plan and, when verified, its measurement,
beside every uniform width (the sweep itself is mpq.api.pareto)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpq.cost.budget import Budget
from mpq.plan import Plan
from mpq.plan.records import Predicted
from mpq.sensitivity import Sensitivity
from mpq.verify.measure import uniform_name
from mpq.verify.report import Measurement


@dataclass
class ParetoPoint:
    """One budget of the sweep: its plan (None when no plan meets it) and, when verified, its measurement."""

    budget: Budget
    plan: Plan | None
    infeasible_reason: str | None = None
    measured: Measurement | None = None
    solve_seconds: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.plan is not None


@dataclass
class UniformPoint:
    """Every layer at one weight width (and the sweep's widest activation width): predicted and measured."""

    weight_bits: int
    act_bits: int | None
    predicted: Predicted
    measured: Measurement | None = None
    group_size: int | None = None  # weights per scale group (None: a scale per output channel)

    @property
    def name(self) -> str:
        return uniform_name(self.weight_bits, self.act_bits, self.group_size)


@dataclass
class ParetoResult:
    kind: str  # the budget kind swept: size_bytes, bops or bits_per_weight
    points: list[ParetoPoint]
    uniform: list[UniformPoint]
    sensitivity: Sensitivity
    fixed_budgets: list[Budget] = field(default_factory=list)
    fp32: dict = field(default_factory=dict)  # size_bytes and top1 of the FP32 model (when measured)
    settings: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    @property
    def feasible_points(self) -> list[ParetoPoint]:
        return [p for p in self.points if p.feasible]

    def to_json(self) -> dict:
        return {
            "schema": "mpq.pareto/1",
            "kind": self.kind,
            "fixed_budgets": [b.to_json() for b in self.fixed_budgets],
            "model": {"fingerprint": self.sensitivity.model_fingerprint, "layers": len(self.sensitivity.layers)},
            "settings": self.settings,
            "fp32": self.fp32,
            "points": [
                {
                    "budget": p.budget.to_json(),
                    "feasible": p.feasible,
                    "infeasible_reason": p.infeasible_reason,
                    "predicted": p.plan.predicted.to_json() if p.plan else None,
                    "solver": p.plan.solver.to_json() if p.plan else None,
                    "solve_seconds": p.solve_seconds,
                    "measured": p.measured.to_json() if p.measured else None,
                    "plan": p.plan.to_json() if p.plan else None,
                }
                for p in self.points
            ],
            "uniform": [
                {
                    "name": u.name,
                    "weight_bits": u.weight_bits,
                    "act_bits": u.act_bits,
                    "predicted": u.predicted.to_json(),
                    "measured": u.measured.to_json() if u.measured else None,
                }
                for u in self.uniform
            ],
            "timings_s": self.timings_s,
        }
