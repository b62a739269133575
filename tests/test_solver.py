"""The integer program against brute force on small random problems."""

import itertools
import math
import random

import pytest

from mpq.budget import Budget
from mpq.cost import Choice
from mpq.errors import BudgetInfeasible
from mpq.solver import Problem, smallest_cost, solve_problem, total_costs

CHOICES = [Choice(2, 8), Choice(4, 8), Choice(8, 8)]


def random_problem(rng: random.Random, n_layers: int, kinds: list[str], ties: bool) -> Problem:
    names = [f"layer{i}" for i in range(n_layers)]
    omega, costs = {}, {}
    for name in names:
        base = rng.uniform(0.1, 10.0)
        omega[name] = {c: base * rng.uniform(0.5, 1.5) * 4.0 ** -c.weight_bits for c in CHOICES}
        size = rng.randint(10, 1000)
        macs = rng.randint(100, 10000)
        costs[name] = {c: {"size_bytes": size * c.weight_bits / 8 + 4, "bops": macs * c.weight_bits * 8.0} for c in CHOICES}
    problem = Problem(layers=names, choices={n: CHOICES for n in names}, omega=omega, costs=costs, fixed_costs={"size_bytes": 100.0, "bops": 0.0}, budgets=[])
    if ties:
        problem.tie_groups = [names[0:2], names[3:6]]
    for kind in kinds:
        low, high = smallest_cost(problem, kind), total_costs(problem, {n: Choice(8, 8) for n in names})[kind]
        problem.budgets.append(Budget(kind, low + rng.uniform(0.05, 0.8) * (high - low), f"random {kind}"))
    return problem


def brute_force(problem: Problem):
    best, best_choices = None, None
    for combo in itertools.product(CHOICES, repeat=len(problem.layers)):
        choices = dict(zip(problem.layers, combo))
        if any(len({choices[n] for n in group}) > 1 for group in problem.tie_groups):
            continue
        costs = total_costs(problem, choices)
        if any(costs[b.kind] > b.limit for b in problem.budgets):
            continue
        value = sum(problem.omega[n][choices[n]] for n in problem.layers)
        if best is None or value < best:
            best, best_choices = value, choices
    return best, best_choices


@pytest.mark.parametrize("seed", range(12))
def test_solver_equals_brute_force(seed):
    rng = random.Random(seed)
    kinds = [["size_bytes"], ["bops"], ["size_bytes", "bops"]][seed % 3]
    problem = random_problem(rng, n_layers=7, kinds=kinds, ties=seed % 2 == 1)
    expected, _ = brute_force(problem)
    solution = solve_problem(problem)
    assert solution.objective == pytest.approx(expected, rel=1e-9)
    for budget in problem.budgets:
        assert solution.costs[budget.kind] <= budget.limit
    for group in problem.tie_groups:
        assert len({solution.choices[n] for n in group}) == 1


def test_budget_below_the_smallest_reachable_names_it():
    problem = random_problem(random.Random(0), n_layers=4, kinds=["size_bytes"], ties=False)
    least = smallest_cost(problem, "size_bytes")
    problem.budgets = [Budget("size_bytes", least - 1, "tiny")]
    with pytest.raises(BudgetInfeasible, match=f"{math.ceil(least):,} B"):  # rounded up: that budget can be met
        solve_problem(problem)


def test_budgets_each_reachable_but_not_together_are_infeasible():
    names = ["a", "b"]
    small_bytes = {Choice(2, 8): {"size_bytes": 10.0, "bops": 100.0}, Choice(8, 8): {"size_bytes": 40.0, "bops": 10.0}}
    problem = Problem(
        layers=names,
        choices={n: [Choice(2, 8), Choice(8, 8)] for n in names},
        omega={n: {Choice(2, 8): 1.0, Choice(8, 8): 0.0} for n in names},
        costs={n: small_bytes for n in names},
        fixed_costs={"size_bytes": 0.0, "bops": 0.0},
        budgets=[Budget("size_bytes", 20.0, "20B"), Budget("bops", 20.0, "20BOPs")],
    )
    with pytest.raises(BudgetInfeasible, match="all budgets at once"):
        solve_problem(problem)
