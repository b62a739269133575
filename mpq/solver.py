"""The bit-allocation integer program, solved exactly with PuLP (CBC).

    minimise    sum_{l,k} Omega_{l,k} x_{l,k}
    subject to  sum_k x_{l,k} = 1                              for every layer l
                fixed_j + sum_{l,k} cost_j(l,k) x_{l,k} <= B_j  for every budget j
                x_{a,k} = x_{b,k}                              for layers a, b of one tie group
                x_{l,k} in {0, 1}
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import pulp

from mpq.budget import Budget, format_cost
from mpq.cost import Choice
from mpq.errors import BudgetInfeasible, MpqError

ROW_SCALE = 1e6  # every budget row is rescaled so that its limit reads 1e6: keeps CBC's tolerances meaningful


@dataclass
class Problem:
    """One integer program: per layer, its choices with their Omega and costs (by budget kind)."""

    layers: list[str]
    choices: dict[str, list[Choice]]
    omega: dict[str, dict[Choice, float]]
    costs: dict[str, dict[Choice, dict[str, float]]]
    fixed_costs: dict[str, float]
    budgets: list[Budget]
    tie_groups: list[list[str]] = field(default_factory=list)


@dataclass
class Solution:
    choices: dict[str, Choice]
    objective: float
    costs: dict[str, float]
    status: str
    seconds: float


def total_costs(problem: Problem, choices: dict[str, Choice]) -> dict[str, float]:
    totals = dict(problem.fixed_costs)
    for name in problem.layers:
        for kind, value in problem.costs[name][choices[name]].items():
            totals[kind] = totals.get(kind, 0.0) + value
    return totals


def _groups(problem: Problem) -> list[list[str]]:
    """Tie groups plus a singleton group for every layer in none."""
    tied = {name for group in problem.tie_groups for name in group}
    return [list(g) for g in problem.tie_groups] + [[name] for name in problem.layers if name not in tied]


def smallest_cost(problem: Problem, kind: str) -> float:
    """The least value of one cost that any assignment reaches (respecting tie groups)."""
    total = problem.fixed_costs.get(kind, 0.0)
    for group in _groups(problem):
        total += min(sum(problem.costs[name][c][kind] for name in group) for c in problem.choices[group[0]])
    return total


def check_feasible(problem: Problem) -> None:
    """Raise MpqError for an ill-formed problem, BudgetInfeasible when a budget alone cannot be met."""
    for budget in problem.budgets:
        for name in problem.layers:
            if any(budget.kind not in problem.costs[name][c] for c in problem.choices[name]):
                raise MpqError(f"budget {budget.text} needs a {budget.kind} cost for every layer, and layer {name} has none")
    for group in problem.tie_groups:
        if any(set(problem.choices[n]) != set(problem.choices[group[0]]) for n in group):
            raise MpqError(f"layers {', '.join(group)} must take equal bits but have different candidate widths")
    for budget in problem.budgets:
        least = smallest_cost(problem, budget.kind)
        if least > budget.limit:
            raise BudgetInfeasible(
                f"no plan meets the budget {budget.text} ({format_cost(budget.kind, budget.limit)}): the smallest "
                f"that can be met is {format_cost(budget.kind, least)}; raise the budget or allow narrower widths"
            )


def _objective_scale(problem: Problem) -> float:
    largest = max((abs(v) for per_layer in problem.omega.values() for v in per_layer.values()), default=0.0)
    return 1.0 / largest if largest > 0 else 1.0


def _binary(program: pulp.LpProblem, name: str) -> pulp.LpVariable:
    if hasattr(program, "add_variable"):  # PuLP >= 3.3
        return program.add_variable(name, cat="Binary")
    return pulp.LpVariable(name, cat="Binary")


def build_program(problem: Problem) -> tuple[pulp.LpProblem, dict[tuple[str, Choice], pulp.LpVariable]]:
    program = pulp.LpProblem("mpq_bit_allocation", pulp.LpMinimize)
    x = {
        (name, c): _binary(program, f"x_{i}_{c.label()}")
        for i, name in enumerate(problem.layers)
        for c in problem.choices[name]
    }
    scale = _objective_scale(problem)
    program += pulp.lpSum(scale * problem.omega[name][c] * var for (name, c), var in x.items()), "total_omega"
    for i, name in enumerate(problem.layers):
        program += pulp.lpSum(x[name, c] for c in problem.choices[name]) == 1, f"one_choice_{i}"
    for j, budget in enumerate(problem.budgets):
        unit = budget.limit / ROW_SCALE
        spent = pulp.lpSum(problem.costs[name][c][budget.kind] / unit * var for (name, c), var in x.items())
        program += spent <= (budget.limit - problem.fixed_costs.get(budget.kind, 0.0)) / unit, f"budget_{j}_{budget.kind}"
    index = {name: i for i, name in enumerate(problem.layers)}
    for group in problem.tie_groups:
        first = group[0]
        for other in group[1:]:
            for c in problem.choices[first]:
                program += x[first, c] == x[other, c], f"tie_{index[first]}_{index[other]}_{c.label()}"
    return program, x


def solve_problem(problem: Problem, time_limit_s: float | None = None) -> Solution:
    """The choice per layer of least total Omega that meets every budget (proven optimal)."""
    check_feasible(problem)
    start = time.perf_counter()
    program, x = build_program(problem)
    with warnings.catch_warnings():  # PuLP 3 warns that its bundled CBC goes away in PuLP 4 (pinned below 4)
        warnings.simplefilter("ignore", DeprecationWarning)
        program.solve(pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s))
    status = pulp.LpStatus[program.status]
    if status == "Infeasible":
        least = ", ".join(f"{b.text} alone needs {format_cost(b.kind, smallest_cost(problem, b.kind))}" for b in problem.budgets)
        raise BudgetInfeasible(f"no plan meets all budgets at once ({least}); loosen one of them")
    if status != "Optimal":
        raise RuntimeError(f"the integer program ended with status {status}")
    choices = {name: next(c for c in problem.choices[name] if x[name, c].value() > 0.5) for name in problem.layers}
    costs = total_costs(problem, choices)
    for budget in problem.budgets:
        if costs[budget.kind] > budget.limit:
            raise RuntimeError(f"solver returned a plan over budget {budget.text}: {costs[budget.kind]}")
    objective = sum(problem.omega[name][choices[name]] for name in problem.layers)
    return Solution(choices=choices, objective=objective, costs=costs, status=status, seconds=time.perf_counter() - start)
