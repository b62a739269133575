"""Typed plan records: costs by CostKind, the plan's model, predictions and solver record typed, plan.json's shape
kept (keys in the order read, unknown keys and nulls written back)."""

import json

from mpq.cost.budget import parse_budget
from mpq.cost.costs import CostKind, Costs
from mpq.plan import Plan
from mpq.plan.records import Predicted, SolverStatus

OLD = {
    "schema": "mpq.plan/1",
    "model": {"table": "t.csv", "fingerprint": "abc", "layers": 1},
    "budgets": [{"kind": "size_bytes", "limit": 3000.0, "text": "3000B"}],
    "layers": {"a": {"weight_bits": 4, "act_bits": 8, "granularity": "channel"}},
    "predicted": {"size_bytes": 500, "bops": 1000.0, "latency_s": None, "omega": 1.5, "old_key": 7},
    "settings": {},
    "solver": {"name": "cbc", "status": "feasible", "proven_optimal": False, "gap": None, "time_limit_s": 60.0},
}


def test_an_old_plan_reads_typed_and_writes_back_as_it_was():
    plan = Plan.from_json(json.loads(json.dumps(OLD)))
    assert plan.model.fingerprint == "abc" and plan.model.table == "t.csv" and plan.model["layers"] == 1
    assert plan.predicted.size_bytes == 500 and plan.predicted.omega == 1.5 and plan.predicted.latency_s is None
    assert plan.predicted.costs() == {CostKind.SIZE_BYTES: 500, CostKind.BOPS: 1000.0}
    assert plan.solver.status is SolverStatus.FEASIBLE and plan.solver.gap is None
    assert plan.budgets[0].kind is CostKind.SIZE_BYTES
    written = plan.to_json()
    for key in ("model", "predicted", "solver", "budgets"):
        assert json.dumps(written[key]) == json.dumps(OLD[key])


def test_costs_read_by_kind_or_by_its_string():
    costs = Costs.of({"size_bytes": 10.0}).plus({CostKind.SIZE_BYTES: 2.0, "bops": 4.0})
    assert costs["size_bytes"] == costs[CostKind.SIZE_BYTES] == 12.0 and costs[CostKind.BOPS] == 4.0
    assert json.dumps(costs.to_json()) == '{"size_bytes": 12.0, "bops": 4.0}'
    assert parse_budget("2.5ms").kind is CostKind.LATENCY_S and f"{CostKind.BOPS}" == "bops"
    assert Predicted(size_bytes=1, omega=0.5).to_json() == {"size_bytes": 1, "omega": 0.5}
