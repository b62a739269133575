"""HiGHS and CBC against brute force; a time limit reports a plan that is not proven optimal and its gap."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mpq.cli.main import main
from mpq.cost.budget import Budget
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.solver.problem import Problem, smallest_cost, solve_problem, total_costs
from tests.test_solver import KINDS, admissible, pair_problem

SOLVERS = ("cbc", "highs")


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(6))
def test_both_solvers_equal_brute_force_with_several_budgets_and_ties(seed, solver):
    rng = random.Random(300 + seed)
    kinds = [list(KINDS[:2]), list(KINDS)][seed % 2]  # 2 or 3 budgets
    problem = pair_problem(rng, kinds, ties=True, act_ties=seed % 3 != 0, keep={"layer3": 8} if seed == 4 else {})
    feasible = [
        c for c in admissible(problem) if all(total_costs(problem, c)[b.kind] <= b.limit for b in problem.budgets)
    ]
    best = min(sum(problem.omega[n][c[n]] for n in problem.layers) for c in feasible)
    solution = solve_problem(problem, solver=solver)
    assert solution.objective == pytest.approx(best, rel=1e-9)
    assert solution.choices["layer1"] == solution.choices["layer2"]
    assert (solution.solver, solution.status, solution.proven_optimal, solution.gap) == (solver, "optimal", True, 0.0)
    for budget in problem.budgets:
        assert solution.costs[budget.kind] <= budget.limit


WIDTHS = [Choice(w, 8) for w in range(2, 9)]


def hard_problem(n_layers: int = 300, seed: int = 3) -> Problem:
    """Many layers, seven widths, size and BOPs budgets at 40% of their span: seconds to prove optimal."""
    rng = random.Random(seed)
    names = [f"l{i}" for i in range(n_layers)]
    omega, costs = {}, {}
    for name in names:
        base = rng.uniform(0.1, 10)
        omega[name] = {c: base * rng.uniform(0.5, 1.5) * 2.0**-c.weight_bits for c in WIDTHS}
        size, macs = rng.randint(1000, 100000), rng.randint(1000, 100000)
        costs[name] = {
            c: {
                "size_bytes": float(size * c.weight_bits // 8 + rng.randint(0, 50)),
                "bops": float(macs * c.weight_bits * 8),
            }
            for c in WIDTHS
        }
    problem = Problem(
        layers=names, choices={n: WIDTHS for n in names}, omega=omega, costs=costs, fixed_costs={}, budgets=[]
    )
    for kind in ("size_bytes", "bops"):
        low, high = smallest_cost(problem, kind), total_costs(problem, {n: Choice(8, 8) for n in names})[kind]
        problem.budgets.append(Budget(kind, low + 0.4 * (high - low), kind))
    return problem


@pytest.fixture(scope="module")
def hard():
    problem = hard_problem()
    return problem, solve_problem(problem, solver="highs")


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_time_limit_returns_the_best_plan_found_with_its_gap(hard, solver):
    problem, optimum = hard
    assert optimum.proven_optimal
    solution = solve_problem(problem, time_limit_s=0.2, solver=solver)
    assert (solution.status, solution.proven_optimal, solution.time_limit_s) == ("feasible", False, 0.2)
    assert solution.solver_json() == {
        "name": solver,
        "status": "feasible",
        "proven_optimal": False,
        "gap": solution.gap,
        "time_limit_s": 0.2,
    }
    assert solution.objective >= optimum.objective * (1 - 1e-12)
    # the solver's lower bound lies below the optimum, so its gap bounds the plan's true distance from it
    assert solution.gap >= (solution.objective - optimum.objective) / solution.objective - 1e-9
    assert 0 < solution.gap <= 1  # Omega >= 0, so every bound is >= 0
    for budget in problem.budgets:
        assert solution.costs[budget.kind] <= budget.limit


def test_unknown_solver_and_bad_time_limit_are_user_errors():
    problem = hard_problem(n_layers=3)
    with pytest.raises(MpqError, match="unknown solver 'gurobi'"):
        solve_problem(problem, solver="gurobi")
    with pytest.raises(MpqError, match="positive number of seconds"):
        solve_problem(problem, time_limit_s=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_plan_json_records_the_solver(tmp_path, capsys, solver):
    table = tmp_path / "t.csv"
    table.write_text(
        "layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s\na,4,8,1.0,500,,\na,8,8,0.1,1000,,\nb,4,8,2.0,500,,\nb,8,8,0.2,1000,,\n"
    )
    status = main(
        [
            "solve",
            "--table",
            str(table),
            "--budget",
            "1600B",
            "--solver",
            solver,
            "--time-limit",
            "30",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert {n: e["weight_bits"] for n, e in plan["layers"].items()} == {"a": 4, "b": 8}
    assert plan["solver"] == {
        "name": solver,
        "status": "optimal",
        "proven_optimal": True,
        "gap": 0.0,
        "time_limit_s": 30.0,
    }
    assert f"solver: {solver}, proven optimal, relative gap 0" in capsys.readouterr().out


def wide_problem(seed: int, n_layers: int = 50) -> Problem:
    """Shaped like a real network: traces spread over six decades, 10^2..10^4.5 parameters, W4..8;
    size in whole bytes, so that a dynamic program over bytes solves it exactly."""
    rng = random.Random(seed)
    names = [f"l{i}" for i in range(n_layers)]
    widths = [Choice(w, 8) for w in range(4, 9)]
    omega, costs = {}, {}
    for name in names:
        trace, params = 10 ** rng.uniform(-6, 0), int(10 ** rng.uniform(2, 4.5))
        omega[name] = {c: trace * params * rng.uniform(0.9, 1.1) * 4.0**-c.weight_bits for c in widths}
        costs[name] = {c: {"size_bytes": float(-(-params * c.weight_bits // 8) + 8)} for c in widths}
    return Problem(
        layers=names, choices={n: widths for n in names}, omega=omega, costs=costs, fixed_costs={}, budgets=[]
    )


def least_omega_by_bytes(problem: Problem, capacity: int) -> np.ndarray:
    """Exact: f[c] = the least total Omega of any plan of at most c bytes (multiple-choice knapsack DP)."""
    best = np.zeros(capacity + 1)
    for name in problem.layers:
        step = np.full(capacity + 1, np.inf)
        for c in problem.choices[name]:
            size = int(problem.costs[name][c]["size_bytes"])
            step[size:] = np.minimum(step[size:], best[: capacity + 1 - size] + problem.omega[name][c])
        best = step
    return best


@pytest.mark.parametrize("seed", [1, 2])
def test_both_solvers_reach_the_exact_optimum_when_omega_spans_six_decades(seed):
    problem = wide_problem(seed)
    low = smallest_cost(problem, "size_bytes")
    high = total_costs(problem, {n: Choice(8, 8) for n in problem.layers})["size_bytes"]
    exact = least_omega_by_bytes(problem, int(high))
    for fraction in np.linspace(0.05, 0.95, 6):
        limit = int(low + fraction * (high - low))
        problem.budgets = [Budget("size_bytes", float(limit), f"{limit}B")]
        for solver in SOLVERS:
            assert solve_problem(problem, solver=solver).objective == pytest.approx(exact[limit], rel=1e-9), (
                solver,
                limit,
            )
