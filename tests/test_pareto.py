"""Pareto sweeps on the tiny model: every point is the brute-force optimum at its budget, Omega never rises
with the budget, unreachable points are marked, measured points agree with predictions; the files."""

from __future__ import annotations

import csv
import itertools
import json

import pytest

import mpq
from mpq.cost.layer_cost import Choice, model_costs
from mpq.errors import BudgetInfeasible, MpqError
from mpq.inputs.prepare import as_dataset, as_prepared
from mpq.report.pareto_files import write_pareto
from mpq.solver.sweep import parse_sweep, verified_indices
from tests.helpers import USER_MODELS, mlp_data, run_cli

BITS = (2, 4, 8)
SWEEP = "120B:240B:13"  # the tiny model needs 132 B at 2 bits and 236 B at 8 bits


@pytest.fixture
def sweep(tiny_model, tiny_data, tmp_path, tmp_path_factory):
    cache = (
        tmp_path_factory.getbasetemp() / "pareto-cache"
    )  # shared: later sweeps read the sensitivity and measurements
    result = mpq.pareto(
        tiny_model, tiny_data, SWEEP, bits=BITS, max_probes=4, verify_points=3, cache_dir=cache, progress=False
    )
    return result, tmp_path


def brute_force_omega(prepared, sensitivity, limit: float, margin: float) -> float | None:
    layers = prepared.graph.layers
    best = None
    for combo in itertools.product(BITS, repeat=len(layers)):
        choices = {layer.name: Choice(b, 8) for layer, b in zip(layers, combo)}
        if model_costs(layers, choices, prepared.graph.float_bytes)["size_bytes"] <= limit:
            value = sum(sensitivity.layers[n].omega(c.weight_bits, margin) for n, c in choices.items())
            best = value if best is None else min(best, value)
    return best


def test_every_point_is_the_optimum_at_its_budget_and_omega_never_rises(sweep, tiny_model, tiny_data):
    result, _ = sweep
    assert [p.budget.limit for p in result.points] == [120.0 + 10 * i for i in range(13)]
    prepared = as_prepared(tiny_model, as_dataset(tiny_data))
    feasible = result.feasible_points
    assert [p.feasible for p in result.points] == [False, False] + [True] * 11  # 132 B is the least size
    assert all("132 B" in p.infeasible_reason for p in result.points[:2])
    for point in feasible:
        assert point.plan.predicted["size_bytes"] <= point.budget.limit
        assert point.plan.predicted["omega"] == pytest.approx(
            brute_force_omega(prepared, result.sensitivity, point.budget.limit, 2.0), rel=1e-9
        )
        assert point.plan.solver["proven_optimal"]
    omegas = [p.plan.predicted["omega"] for p in feasible]
    assert all(a >= b for a, b in zip(omegas, omegas[1:]))
    assert omegas[0] > omegas[-1]
    assert len({p.plan.predicted["size_bytes"] for p in feasible}) >= 4  # a real front, not one plan


def test_verified_points_and_uniform_widths_are_measured(sweep):
    result, _ = sweep
    feasible = result.feasible_points
    verified = [p for p in feasible if p.measured is not None]
    assert verified == [feasible[0], feasible[5], feasible[10]]  # evenly spread, both ends
    for point in verified:
        assert point.measured.size_bytes == point.plan.predicted["size_bytes"]  # counted from the exported tensors
        assert point.measured.bops == point.plan.predicted["bops"]
        assert point.measured.n_eval == 6  # the quarter of the 24 samples held out (no eval_data)
    assert [u.name for u in result.uniform] == ["uniform W2A8", "uniform W4A8", "uniform W8A8"]
    assert [u.predicted["size_bytes"] for u in result.uniform] == [132, 166, 236]
    assert all(u.measured.size_bytes == u.predicted["size_bytes"] for u in result.uniform)
    # at 240 B every layer can take 8 bits: the plan is uniform W8A8 and measures the same
    assert feasible[-1].plan.predicted["omega"] == pytest.approx(result.uniform[-1].predicted["omega"], rel=1e-12)
    assert feasible[-1].measured.kl_to_fp32 == result.uniform[-1].measured.kl_to_fp32
    assert result.fp32["size_bytes"] > 236


def test_files_hold_every_point_and_uniform_width(sweep):
    result, tmp_path = sweep
    paths = write_pareto(tmp_path / "out", result)
    assert [p.name for p in paths] == ["pareto.json", "pareto.csv", "pareto.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].stat().st_size > 10_000
    rows = list(csv.DictReader(paths[1].open()))
    assert len(rows) == 13 + 3
    assert [r["config"] for r in rows[13:]] == ["uniform W2A8", "uniform W4A8", "uniform W8A8"]
    assert [r["feasible"] for r in rows[:3]] == ["False", "False", "True"] and rows[0]["omega"] == ""
    assert sum(r["verified"] == "True" for r in rows) == 3 + 3
    data = json.loads(paths[0].read_text())
    assert data["schema"] == "mpq.pareto/1" and data["kind"] == "size_bytes" and len(data["points"]) == 13
    point = data["points"][5]
    assert float(rows[5]["omega"]) == point["predicted"]["omega"]
    assert mpq.Plan.from_json(point["plan"]).layers == result.points[5].plan.layers  # each point's plan can be loaded


def test_sweep_budgets_from_ranges_and_lists():
    sizes = parse_sweep("2MB:6MB")
    assert len(sizes) == 30 and sizes[0].limit == 2e6 and sizes[-1].limit == 6e6
    assert all(abs(b.limit - (2e6 + i * 4e6 / 29)) <= 10 for i, b in enumerate(sizes))  # 6 significant digits
    assert all(mpq.parse_budget(b.text).limit == b.limit for b in sizes)
    assert [b.limit for b in parse_sweep("10GBOPs:40GBOPs:4")] == [10e9, 20e9, 30e9, 40e9]
    assert [b.text for b in parse_sweep("3MB,1MB,2MB")] == ["1MB", "2MB", "3MB"]
    for bad, message in [
        ("2MB:20GBOPs", "one kind"),
        ("2MB,20GBOPs", "one kind"),
        ("1ms:2ms", "sizes"),
        ("2MB:6MB:1", "at least 2 steps"),
        ("6MB:2MB", "smaller to the larger"),
    ]:
        with pytest.raises(MpqError, match=message):
            parse_sweep(bad)
    assert verified_indices(11, 3) == [0, 5, 10] and verified_indices(2, 6) == [0, 1]
    assert verified_indices(5, "all") == [0, 1, 2, 3, 4] and verified_indices(5, 0) == []


def test_cli_writes_the_files_and_exits_3_when_no_point_can_be_met(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz", n=24)
    common = [
        "pareto",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--bits",
        "2,8",
        "--max-probes",
        "2",
        "--quiet",
        "--cache-dir",
        tmp_path / "cache",
        "--solver",
        "highs",
    ]
    status, out, err = run_cli(
        capsys,
        *common,
        "--budget",
        "100B,250B,400B",
        "--also-budget",
        "1MBOPs",
        "--verify-points",
        "all",
        "--out",
        tmp_path / "out",
    )
    assert status == 0, err
    rows = list(csv.DictReader((tmp_path / "out" / "pareto.csv").open()))
    assert [r["feasible"] for r in rows[:3]] == ["False", "True", "True"] and len(rows) == 3 + 2
    assert all(r["verified"] == "True" for r in rows[1:])
    assert "| mpq | 100B | infeasible |" in out and "solved 3 points" in out
    status, _, err = run_cli(capsys, *common, "--budget", "50B:100B:3", "--out", tmp_path / "out2")
    assert status == BudgetInfeasible.exit_status and "no budget of the sweep can be met" in err
    assert err.count("\n") == 1
