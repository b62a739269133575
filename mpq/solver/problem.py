"""The bit-allocation integer program, solved exactly with PuLP (CBC or HiGHS, mpq.solver.milp).

    minimise    sum_{l,k} Omega_{l,k} x_{l,k}
    subject to  sum_k x_{l,k} = 1                              for every layer l
                fixed_j + sum_{l,k} cost_j(l,k) x_{l,k} <= B_j  for every budget j
                x_{a,k} = x_{b,k}                              for layers a, b of one tie group
                sum_{k: act_k = w} x_{a,k} = sum_{k: act_k = w} x_{b,k}   for layers a, b of one
                                                               activation tie group, every act width w
                sum_{k: weight_k = b_l} x_{l,k} = 1            for every layer l the user keeps at b_l bits
                x_{l,k} in {0, 1}
Then, when some layer can take one weight width with several activation widths, a second stage keeps
total Omega at its least and maximises sum_{l,k} a_k x_{l,k} (a float input counts 32 bits): Omega may
ignore activation widths, and then the widest that the budgets allow are taken.
A time limit may stop the solver before it proves optimality: the best plan found is then returned
with its relative gap (mpq.solver.milp); the second stage gets what is left of the time limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pulp

from mpq.cost.budget import Budget, exceeds, format_cost
from mpq.cost.costs import CostKind
from mpq.cost.layer_cost import Choice
from mpq.errors import BudgetInfeasible, MpqError
from mpq.plan.records import SolverRecord, SolverStatus
from mpq.solver.milp import DEFAULT_SOLVER, INFEASIBLE, OPTIMAL, SolverRun, check_solver, check_time_limit, run_solver

ROW_SCALE = 1e6  # every budget row is rescaled so that its limit reads 1e6: keeps CBC's tolerances meaningful
# Omega is rescaled so that its largest value reads 1e6. The solvers' tolerances on the objective are absolute
# (CBC's cutoff increment, HiGHS's): with the largest at 1, real problems, whose Omega spans six decades and more,
# came out up to 1e-3 (relative) above the exact optimum of a dynamic program (tests/test_solver_choice.py).
OBJECTIVE_SCALE = 1e6


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
    act_tie_groups: list[list[str]] = field(default_factory=list)  # layers fed by one activation quantizer
    keep: dict[str, int] = field(default_factory=dict)  # layer -> weight width the user pinned


@dataclass
class Solution:
    choices: dict[str, Choice]
    objective: float
    costs: dict[str, float]
    status: SolverStatus
    seconds: float
    solver: str = DEFAULT_SOLVER
    proven_optimal: bool = True  # total Omega is proven least (False: a time limit stopped the solver)
    gap: float | None = 0.0  # relative gap of total Omega to the solver's lower bound (None: unknown)
    time_limit_s: float | None = None

    def solver_json(self) -> SolverRecord:
        """What plan.json records about the solve (no wall time: a plan stays byte-identical for a seed)."""
        return SolverRecord(self.solver, self.status, self.proven_optimal, self.gap, self.time_limit_s)


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


def allowed_choices(problem: Problem, group: list[str]) -> list[Choice]:
    """The choices a tie group (or one layer) can take, given the widths the user keeps."""
    kept = {problem.keep[n] for n in group if n in problem.keep}
    return [c for c in problem.choices[group[0]] if all(c.weight_bits == b for b in kept)]


def _act_components(problem: Problem) -> list[list[list[str]]]:
    """Tie groups joined into components by the activation tie groups (all of a component share act bits)."""
    groups = _groups(problem)
    owner = {name: i for i, group in enumerate(groups) for name in group}
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for act_group in problem.act_tie_groups:
        for other in act_group[1:]:
            parent[root(owner[other])] = root(owner[act_group[0]])
    components: dict[int, list[list[str]]] = {}
    for i, group in enumerate(groups):
        components.setdefault(root(i), []).append(group)
    return list(components.values())


def _act_widths(problem: Problem, group: list[str]) -> set:
    return {c.act_bits for c in allowed_choices(problem, group)}


def smallest_cost(problem: Problem, kind: str) -> float:
    """The least value of one cost that any assignment reaches (respecting ties and kept widths).

    Within a component of activation-tied groups: for each common act width, each group takes its
    cheapest choice at that width; the component takes the cheapest act width.
    """
    total = problem.fixed_costs.get(kind, 0.0)
    for component in _act_components(problem):
        common = set.intersection(*(_act_widths(problem, g) for g in component))
        total += min(
            sum(
                min(sum(problem.costs[n][c][kind] for n in g) for c in allowed_choices(problem, g) if c.act_bits == a)
                for g in component
            )
            for a in common
        )
    return total


def _check_well_formed(problem: Problem) -> None:
    for group in problem.tie_groups + problem.act_tie_groups:
        unknown = [n for n in group if n not in problem.choices]
        if unknown:
            raise MpqError(f"a tie group names {unknown[0]}, which is not a layer of the problem")
    for budget in problem.budgets:
        for name in problem.layers:
            if any(budget.kind not in problem.costs[name][c] for c in problem.choices[name]):
                raise MpqError(
                    f"budget {budget.text} needs a {budget.kind} cost for every layer, and layer {name} has none"
                )
    for group in problem.tie_groups:
        if any(set(problem.choices[n]) != set(problem.choices[group[0]]) for n in group):
            raise MpqError(f"layers {', '.join(group)} must take equal bits but have different candidate widths")
    for name, bits in problem.keep.items():
        if name not in problem.choices:
            raise MpqError(f"cannot keep layer {name} at {bits} bits: there is no such layer")
    for group in _groups(problem):
        if not allowed_choices(problem, group):
            widths = sorted({c.weight_bits for c in problem.choices[group[0]]})
            kept = ", ".join(f"{n}={problem.keep[n]}" for n in group if n in problem.keep)
            raise MpqError(f"cannot keep {kept}: the candidate weight widths there are {widths}")
    for component in _act_components(problem):
        if not set.intersection(*(_act_widths(problem, g) for g in component)):
            names = ", ".join(n for g in component for n in g)
            raise MpqError(f"layers {names} read one activation quantizer but have no activation width in common")


def check_feasible(problem: Problem) -> None:
    """Raise MpqError for an ill-formed problem, BudgetInfeasible when a budget alone cannot be met."""
    _check_well_formed(problem)
    for budget in problem.budgets:
        least = smallest_cost(problem, budget.kind)
        if exceeds(budget, least):
            raise BudgetInfeasible(
                f"no plan meets the budget {budget.text} ({format_cost(budget.kind, budget.limit)}): the smallest "
                f"that can be met is {format_cost(budget.kind, least, round_up=True)}; "
                f"{_what_to_try(problem, budget, least)}"
            )


def _what_to_try(problem: Problem, budget: Budget, least: float) -> str:
    """Narrower widths help only when the quantized layers, not what stays in float, are over the budget."""
    fixed = problem.fixed_costs.get(budget.kind, 0.0)
    if budget.kind == CostKind.SIZE_BYTES and fixed >= 0.5 * least:
        return (
            f"{format_cost(budget.kind, fixed, round_up=True)} of it stays in float (embeddings, norms, other "
            "parameters): "
            "raise the budget, or quantize the embeddings too (--quantize-embeddings)"
        )
    if budget.kind == "bits_per_weight":  # the weight scales count too
        return (
            "raise the budget, allow narrower widths (--bits), or store fewer scales: a larger --group-size, "
            "or none (one scale per output channel)"
        )
    return "raise the budget or allow narrower widths"


def _objective_scale(problem: Problem) -> float:
    largest = max((abs(v) for per_layer in problem.omega.values() for v in per_layer.values()), default=0.0)
    return OBJECTIVE_SCALE / largest if largest > 0 else 1.0


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
        program += (
            spent <= (budget.limit - problem.fixed_costs.get(budget.kind, 0.0)) / unit,
            f"budget_{j}_{budget.kind}",
        )
    index = {name: i for i, name in enumerate(problem.layers)}
    for group in problem.tie_groups:
        first = group[0]
        for other in group[1:]:
            for c in problem.choices[first]:
                program += x[first, c] == x[other, c], f"tie_{index[first]}_{index[other]}_{c.label()}"
    for group in problem.act_tie_groups:
        first = group[0]
        for other in group[1:]:
            for a in sorted({c.act_bits for n in (first, other) for c in problem.choices[n]}, key=lambda w: w or 0):
                at_a = [pulp.lpSum(x[n, c] for c in problem.choices[n] if c.act_bits == a) for n in (first, other)]
                program += at_a[0] == at_a[1], f"act_tie_{index[first]}_{index[other]}_A{a or 'f'}"
    for name, bits in problem.keep.items():
        program += (
            pulp.lpSum(x[name, c] for c in problem.choices[name] if c.weight_bits == bits) == 1,
            f"keep_{index[name]}_W{bits}",
        )
    return program, x


def act_width_is_free(problem: Problem) -> bool:
    """Whether some layer can take one weight width with several activation widths."""
    return any(len({c.weight_bits for c in cs}) < len(cs) for cs in problem.choices.values())


def weight_width_ties(problem: Problem) -> bool:
    """Whether some layer has two weight widths of equal Omega at one activation width (e.g. a bounded trace
    of 0), so that least total Omega alone does not say which to take."""
    return any(
        len({(problem.omega[name][c], c.act_bits) for c in cs}) < len(cs) for name, cs in problem.choices.items()
    )


def _tie_breaks(problem: Problem, x: dict) -> list[tuple[str, pulp.LpAffineExpression]]:
    """The later stages, each minimized among the plans optimal for all stages before it: the most activation
    bits (a float input counts 32; Omega may ignore activation widths, then this picks the widest the budgets
    allow), then the most weight bits (among widths of equal Omega, the wider)."""
    stages = []
    if act_width_is_free(problem):
        stages.append(("most_activation_bits", pulp.lpSum(-(c.act_bits or 32) * var for (_, c), var in x.items())))
    if weight_width_ties(problem):
        stages.append(("most_weight_bits", pulp.lpSum(-c.weight_bits * var for (_, c), var in x.items())))
    return stages


def _next_stage(program: pulp.LpProblem, kept: str, objective, solver: str, time_limit_s: float | None) -> SolverRun:
    """Hold the current objective at its optimum (constraint `kept`), then minimize `objective`."""
    best = pulp.value(program.objective)
    program += program.objective <= best + 1e-9 * max(1.0, abs(best)), kept
    program.setObjective(objective)
    return run_solver(program, solver, time_limit_s)


def _chosen(problem: Problem, x: dict) -> dict[str, Choice]:
    return {name: next(c for c in problem.choices[name] if x[name, c].value() > 0.5) for name in problem.layers}


def check_finite(problem: Problem) -> None:
    """MpqError naming the first layer whose Omega or cost is not a finite number (PuLP cannot take it)."""
    for name in problem.layers:
        for choice in problem.choices[name]:
            bad = {"Omega": problem.omega[name][choice]} | {k: v for k, v in problem.costs[name][choice].items()}
            for what, value in bad.items():
                if not math.isfinite(value):
                    raise MpqError(
                        f"{what} of layer {name} at {choice.label()} is {value}: the sensitivity (or cost) is not a "
                        "finite number; "
                        "check that the loss is finite, give the probing time for at least two probes "
                        "(--max-seconds), or rerun with --no-cache"
                    )


def solve_problem(problem: Problem, time_limit_s: float | None = None, solver: str = DEFAULT_SOLVER) -> Solution:
    """The choice per layer of least total Omega that meets every budget (proven optimal unless
    `time_limit_s` stops the solver first); among several of least Omega, the one with the widest activations,
    then the widest weights (_tie_breaks)."""
    solver = check_solver(solver)
    check_time_limit(time_limit_s)
    check_feasible(problem)
    check_finite(problem)
    start = time.perf_counter()
    program, x = build_program(problem)
    run = run_solver(program, solver, time_limit_s)
    if run.status == INFEASIBLE:
        least = ", ".join(
            f"{b.text} alone needs {format_cost(b.kind, smallest_cost(problem, b.kind), round_up=True)}"
            for b in problem.budgets
        )
        raise BudgetInfeasible(f"no plan meets all budgets at once ({least}); loosen one of them")
    if not run.has_solution:
        if time_limit_s is not None:
            raise MpqError(
                f"the solver ({solver}) found no plan within the time limit of {time_limit_s:g} s; raise the time limit"
            )
        raise RuntimeError(f"the integer program ended with status {run.status}")
    choices = _chosen(problem, x)
    kept = "least_total_omega"
    for stage, objective in _tie_breaks(problem, x):
        left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - start)
        if (left is not None and left <= 0) or not _next_stage(program, kept, objective, solver, left).has_solution:
            break
        choices, kept = _chosen(problem, x), stage
    costs = total_costs(problem, choices)
    for budget in problem.budgets:
        if exceeds(budget, costs[budget.kind]):
            raise RuntimeError(f"solver returned a plan over budget {budget.text}: {costs[budget.kind]}")
    objective = sum(problem.omega[name][choices[name]] for name in problem.layers)
    return Solution(
        choices=choices,
        objective=objective,
        costs=costs,
        status=run.status,
        seconds=time.perf_counter() - start,
        solver=solver,
        proven_optimal=run.status == OPTIMAL,
        gap=run.gap,
        time_limit_s=time_limit_s,
    )
