"""Exact reductions of the bit-allocation integer program (mpq.solver.problem) before CBC sees it.

The program is a multiple-choice knapsack: each unit u takes one choice k, minimise sum Omega_{u,k}.
Two reductions, both exact (every optimal plan survives them):

1. Dominance: a choice that another choice of the same unit and activation width beats or equals in
   Omega and in every cost is dropped (of equal ones, the first is kept).

2. Lagrangian reduced-cost fixing, for a program with one budget (sum_u c_{u,k_u} <= B) and no tie
   groups. For any mu >= 0 and any feasible plan x,
       sum Omega(x) >= L(mu) + sum_u rc_{u,k_u},   L(mu) = sum_u min_k (Omega_{u,k} + mu c_{u,k}) - mu B,
       rc_{u,k} = Omega_{u,k} + mu c_{u,k} - min_j (Omega_{u,j} + mu c_{u,j}) >= 0,
   so a choice with rc_{u,k} > z_inc - L(mu), z_inc the Omega of a known feasible plan, is in no plan
   as good as that one, and is dropped; a unit left with one choice is fixed and leaves the program.
   mu is the multiplier of the LP relaxation, found by the greedy of the multiple-choice knapsack
   (Sinha and Zoltners, 1979): every unit starts at its cheapest choice; the edges of the units' lower
   convex hulls in (cost, Omega) are taken in order of Omega saved per unit of cost while the budget
   lasts; mu is the rate of the first edge that does not fit, and the edges taken (plus later ones that
   still fit) give z_inc. The bound holds for any mu, so rounding in mu costs speed, never exactness.
   In the program left for CBC each unit's Omega is shifted by its least (a constant per unit: the
   same plans are optimal), so that CBC's absolute tolerances act on the differences that decide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mpq.cost.budget import exceeds
from mpq.cost.layer_cost import Choice
from mpq.solver.milp import DEFAULT_SOLVER
from mpq.solver.problem import Problem, Solution, check_feasible, solve_problem, total_costs

RELATIVE_TOLERANCE = 1e-9  # a choice is dropped only when its reduced cost exceeds the gap by this much (relative)


def binary_variables(problem: Problem) -> int:
    """One binary per unit and choice."""
    return sum(len(cs) for cs in problem.choices.values())


def drop_dominated(
    choices: list[Choice], omega: dict[Choice, float], costs: dict[Choice, dict[str, float]]
) -> list[Choice]:
    """The choices that no other choice of the same activation width beats or equals in Omega and every cost
    (of equal ones, the first is kept)."""

    def dominates(j: Choice, k: Choice) -> bool:
        return (
            j.act_bits == k.act_bits
            and omega[j] <= omega[k]
            and all(costs[j][kind] <= costs[k][kind] for kind in costs[k])
        )

    return [
        k for k in choices if not any(dominates(j, k) and (j < k or not dominates(k, j)) for j in choices if j != k)
    ]


@dataclass
class Reduction:
    """A smaller program (Omega shifted per unit), the units fixed outside it, and the bound that justified it."""

    problem: Problem
    fixed: dict[str, Choice]
    lower_bound: float  # L(mu): no plan has less total Omega
    incumbent: float  # total Omega of a feasible plan the greedy found
    multiplier: float  # mu
    dropped_choices: int


def _lower_hull(points: list[tuple[float, float, Choice]]) -> list[tuple[float, float, Choice]]:
    """The lower-left convex hull of (cost, Omega) points, cost rising and Omega falling."""
    hull: list[tuple[float, float, Choice]] = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if hull and p[1] >= hull[-1][1]:
            continue  # costs at least as much and saves nothing
        while len(hull) >= 2:
            (c1, o1, _), (c2, o2, _) = hull[-2], hull[-1]
            if (o2 - o1) * (p[0] - c1) >= (p[1] - o1) * (c2 - c1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _greedy(problem: Problem, kind: str, room: float) -> tuple[float, dict[str, Choice]]:
    """(mu, a feasible plan): the LP relaxation's multiplier and the greedy's integer plan (see module doc)."""
    hulls = {
        u: _lower_hull([(problem.costs[u][c][kind], problem.omega[u][c], c) for c in problem.choices[u]])
        for u in problem.layers
    }
    plan = {u: hull[0][2] for u, hull in hulls.items()}
    room -= sum(hull[0][0] for hull in hulls.values())
    edges = [
        ((h[i][1] - h[i + 1][1]) / (h[i + 1][0] - h[i][0]), u, i) for u, h in hulls.items() for i in range(len(h) - 1)
    ]
    edges.sort(key=lambda e: -e[0])
    mu, blocked = 0.0, set()
    for rate, u, i in edges:
        hull = hulls[u]
        step = hull[i + 1][0] - hull[i][0]
        if u in blocked or plan[u] != hull[i][2] or step > room:
            if not mu and u not in blocked and plan[u] == hull[i][2]:
                mu = rate  # the LP's fractional edge: its rate is the multiplier
            blocked.add(u)
            continue
        plan[u] = hull[i + 1][2]
        room -= step
    return mu, plan


def lagrangian_reduction(problem: Problem) -> Reduction | None:
    """Reduced-cost fixing (module doc); None where it does not apply (several budgets, tie groups)."""
    if len(problem.budgets) != 1 or problem.tie_groups or problem.act_tie_groups or not problem.layers:
        return None
    budget = problem.budgets[0]
    kind = budget.kind
    room = budget.limit - problem.fixed_costs.get(kind, 0.0)
    mu, plan = _greedy(problem, kind, room)
    incumbent = sum(problem.omega[u][c] for u, c in plan.items())
    priced = {
        u: {c: problem.omega[u][c] + mu * problem.costs[u][c][kind] for c in problem.choices[u]} for u in problem.layers
    }
    least = {u: min(p.values()) for u, p in priced.items()}
    lower_bound = sum(least.values()) - mu * room
    gap = incumbent - lower_bound
    slack = gap + RELATIVE_TOLERANCE * (abs(incumbent) + abs(lower_bound) + abs(mu * room))
    kept = {u: [c for c in problem.choices[u] if priced[u][c] - least[u] <= slack] for u in problem.layers}
    fixed = {u: cs[0] for u, cs in kept.items() if len(cs) == 1}
    free = [u for u in problem.layers if u not in fixed]
    free_set = set(free)
    fixed_costs = dict(problem.fixed_costs)
    for u, c in fixed.items():
        for k, v in problem.costs[u][c].items():
            fixed_costs[k] = fixed_costs.get(k, 0.0) + v
    reduced = replace(
        problem,
        layers=free,
        choices={u: kept[u] for u in free},
        omega={u: {c: problem.omega[u][c] - min(problem.omega[u][k] for k in kept[u]) for c in kept[u]} for u in free},
        costs={u: {c: problem.costs[u][c] for c in kept[u]} for u in free},
        fixed_costs=fixed_costs,
        keep={u: b for u, b in problem.keep.items() if u in free_set},
    )
    dropped = sum(len(problem.choices[u]) - len(kept[u]) for u in problem.layers)
    return Reduction(reduced, fixed, lower_bound, incumbent, mu, dropped)


def solve_presolved(
    problem: Problem, time_limit_s: float | None = None, solver: str = DEFAULT_SOLVER
) -> tuple[Solution, Reduction | None]:
    """solve_problem's answer (proven optimal unless `time_limit_s` stops `solver` first), with the Lagrangian
    reduction applied first where it applies; also the reduction (None where it did not apply)."""
    check_feasible(problem)
    start = time.perf_counter()
    reduction = lagrangian_reduction(problem)
    if reduction is None:
        return solve_problem(problem, time_limit_s, solver), None
    choices = dict(reduction.fixed)
    rest = None
    if reduction.problem.layers:
        rest = solve_problem(reduction.problem, time_limit_s, solver)
        choices.update(rest.choices)
    choices = {u: choices[u] for u in problem.layers}
    costs = total_costs(problem, choices)
    for budget in problem.budgets:
        if exceeds(budget, costs[budget.kind]):
            raise RuntimeError(f"the reduced program returned a plan over budget {budget.text}: {costs[budget.kind]}")
    objective = sum(problem.omega[u][c] for u, c in choices.items())
    solved = Solution(
        choices=choices,
        objective=objective,
        costs=costs,
        status="Optimal",
        seconds=time.perf_counter() - start,
        solver=solver,
        time_limit_s=time_limit_s,
    )
    if rest is not None:  # the reduced program's solver status stands for the whole (the fixed units are exact)
        solved = replace(solved, status=rest.status, proven_optimal=rest.proven_optimal, gap=rest.gap)
    return solved, reduction
