"""The integer program against brute force on small random problems."""

import itertools
import math
import random

import pytest

from mpq.cost.budget import Budget
from mpq.cost.layer_cost import Choice
from mpq.errors import BudgetInfeasible, MpqError
from mpq.solver.problem import Problem, smallest_cost, solve_problem, total_costs

CHOICES = [Choice(2, 8), Choice(4, 8), Choice(8, 8)]


def random_problem(rng: random.Random, n_layers: int, kinds: list[str], ties: bool) -> Problem:
    names = [f"layer{i}" for i in range(n_layers)]
    omega, costs = {}, {}
    for name in names:
        base = rng.uniform(0.1, 10.0)
        omega[name] = {c: base * rng.uniform(0.5, 1.5) * 4.0**-c.weight_bits for c in CHOICES}
        size = rng.randint(10, 1000)
        macs = rng.randint(100, 10000)
        costs[name] = {
            c: {"size_bytes": size * c.weight_bits / 8 + 4, "bops": macs * c.weight_bits * 8.0} for c in CHOICES
        }
    problem = Problem(
        layers=names,
        choices={n: CHOICES for n in names},
        omega=omega,
        costs=costs,
        fixed_costs={"size_bytes": 100.0, "bops": 0.0},
        budgets=[],
    )
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


PAIRS = [Choice(w, a) for w in (2, 4, 8) for a in (4, 8)]
KINDS = ("size_bytes", "bops", "latency_s")


def pair_problem(rng: random.Random, kinds: list[str], ties: bool, act_ties: bool, keep: dict[str, int]) -> Problem:
    """5 layers, choices (weight, act) in {2,4,8} x {4,8}; Omega depends on both widths."""
    names = [f"layer{i}" for i in range(5)]
    omega, costs = {}, {}
    for name in names:
        w_base, a_base = rng.uniform(0.1, 10.0), rng.uniform(0.1, 10.0)
        omega[name] = {c: w_base * 4.0**-c.weight_bits + a_base * 4.0**-c.act_bits for c in PAIRS}
        size, macs, seconds = rng.randint(10, 1000), rng.randint(100, 10000), rng.uniform(1e-4, 1e-3)
        costs[name] = {
            c: {
                "size_bytes": size * c.weight_bits / 8 + 8,
                "bops": float(macs * c.weight_bits * c.act_bits),
                "latency_s": seconds * (0.5 + c.weight_bits * c.act_bits / 64) * rng.uniform(0.9, 1.1),
            }
            for c in PAIRS
        }
    problem = Problem(
        layers=names,
        choices={n: PAIRS for n in names},
        omega=omega,
        costs=costs,
        fixed_costs={"size_bytes": 50.0},
        budgets=[],
        keep=keep,
    )
    if ties:
        problem.tie_groups = [["layer1", "layer2"]]
    if act_ties:
        problem.act_tie_groups = [["layer0", "layer2"], ["layer3", "layer4"]]
    for kind in kinds:
        low, high = smallest_cost(problem, kind), total_costs(problem, {n: Choice(8, 8) for n in names})[kind]
        problem.budgets.append(Budget(kind, low + rng.uniform(0.1, 0.7) * (high - low), f"random {kind}"))
    return problem


def admissible(problem: Problem):
    """Every assignment that respects tie groups, activation tie groups and kept widths."""
    for combo in itertools.product(PAIRS, repeat=len(problem.layers)):
        choices = dict(zip(problem.layers, combo))
        if any(len({choices[n] for n in g}) > 1 for g in problem.tie_groups):
            continue
        if any(len({choices[n].act_bits for n in g}) > 1 for g in problem.act_tie_groups):
            continue
        if any(choices[n].weight_bits != b for n, b in problem.keep.items()):
            continue
        yield choices


@pytest.mark.parametrize("seed", range(8))
def test_act_ties_pins_and_several_budgets_equal_brute_force(seed):
    rng = random.Random(100 + seed)
    kinds = [list(KINDS[:2]), list(KINDS), ["bops", "latency_s"], list(KINDS)][seed % 4]
    keep = [{}, {"layer4": 8}, {"layer0": 2}, {"layer1": 4, "layer3": 8}][seed % 4]
    problem = pair_problem(rng, kinds, ties=seed % 2 == 0, act_ties=True, keep=keep)
    candidates = list(admissible(problem))
    for kind in KINDS:  # the least reachable cost respects every tie and pin
        assert smallest_cost(problem, kind) == pytest.approx(
            min(total_costs(problem, c)[kind] for c in candidates), rel=1e-12
        )
    feasible = [c for c in candidates if all(total_costs(problem, c)[b.kind] <= b.limit for b in problem.budgets)]
    best = min(sum(problem.omega[n][c[n]] for n in problem.layers) for c in feasible)
    solution = solve_problem(problem)
    assert solution.objective == pytest.approx(best, rel=1e-9)
    assert solution.choices in candidates
    for budget in problem.budgets:
        assert solution.costs[budget.kind] <= budget.limit


def test_act_ties_change_the_optimum_and_bind_only_act_bits():
    rng = random.Random(7)
    tied = pair_problem(rng, ["bops"], ties=False, act_ties=True, keep={})
    free = Problem(**{**tied.__dict__, "act_tie_groups": []})
    changed = 0
    for fraction in (0.2, 0.35, 0.5, 0.65):
        low = smallest_cost(free, "bops")
        high = total_costs(free, {n: Choice(8, 8) for n in free.layers})["bops"]
        budgets = [Budget("bops", low + fraction * (high - low), "x")]
        a, b = (
            solve_problem(Problem(**{**tied.__dict__, "budgets": budgets})),
            solve_problem(Problem(**{**free.__dict__, "budgets": budgets})),
        )
        assert a.choices["layer0"].act_bits == a.choices["layer2"].act_bits
        assert a.choices["layer3"].act_bits == a.choices["layer4"].act_bits
        assert a.objective >= b.objective - 1e-12
        changed += a.choices != b.choices
    assert changed >= 1
    # weight widths inside an act tie group stay free: some solution ties acts with different weights
    assert any(
        s.choices[x].weight_bits != s.choices[y].weight_bits
        for s in [
            solve_problem(
                Problem(
                    **{
                        **tied.__dict__,
                        "budgets": [
                            Budget("bops", total_costs(tied, {n: Choice(8, 8) for n in tied.layers})["bops"] * f, "y")
                        ],
                    }
                )
            )
            for f in (0.3, 0.5, 0.7)
        ]
        for x, y in tied.act_tie_groups
    )


def test_keep_outside_the_candidates_is_a_user_error():
    problem = pair_problem(random.Random(1), [], ties=False, act_ties=False, keep={"layer0": 6})
    problem.budgets = [Budget("bops", 1e12, "1TBOPs")]
    with pytest.raises(MpqError, match="candidate weight widths there are \\[2, 4, 8\\]"):
        solve_problem(problem)


def test_act_tied_layers_with_no_common_act_width_are_a_user_error():
    problem = pair_problem(random.Random(2), [], ties=False, act_ties=True, keep={})
    problem.choices = dict(
        problem.choices, layer2=[c for c in PAIRS if c.act_bits == 4], layer0=[c for c in PAIRS if c.act_bits == 8]
    )
    with pytest.raises(MpqError, match="no activation width in common"):
        solve_problem(problem)


def test_omega_ties_go_to_the_widest_activations_the_budgets_allow():
    rng = random.Random(5)
    problem = pair_problem(rng, ["size_bytes", "bops"], ties=False, act_ties=True, keep={})
    problem.omega = {n: {c: rng.uniform(0.1, 1.0) * 4.0**-c.weight_bits for c in PAIRS} for n in problem.layers}
    problem.omega = {
        n: {c: problem.omega[n][Choice(c.weight_bits, 4)] for c in PAIRS} for n in problem.layers
    }  # Omega ignores act bits
    feasible = [
        c for c in admissible(problem) if all(total_costs(problem, c)[b.kind] <= b.limit for b in problem.budgets)
    ]
    value = lambda c: sum(problem.omega[n][c[n]] for n in problem.layers)  # noqa: E731
    best = min(value(c) for c in feasible)
    widest = max(sum(c[n].act_bits for n in problem.layers) for c in feasible if value(c) <= best * (1 + 1e-12))
    solution = solve_problem(problem)
    assert solution.objective == pytest.approx(best, rel=1e-12)
    assert sum(c.act_bits for c in solution.choices.values()) == widest
    assert widest < 8 * len(problem.layers)  # the BOPs budget does push some act widths down


@pytest.mark.parametrize("seed", range(8))
def test_omega_ties_in_weight_width_go_to_the_widest_weights_the_budget_allows(seed):
    rng = random.Random(100 + seed)
    problem = random_problem(rng, n_layers=7, kinds=["size_bytes"], ties=False)
    flat = problem.layers[: 2 + seed % 3]  # layers whose Omega is 0 at every width (e.g. a bounded trace of 0)
    problem.omega = {n: ({c: 0.0 for c in CHOICES} if n in flat else problem.omega[n]) for n in problem.layers}
    expected, _ = brute_force(problem)
    feasible = []
    for combo in itertools.product(CHOICES, repeat=len(problem.layers)):
        choices = dict(zip(problem.layers, combo))
        if all(total_costs(problem, choices)[b.kind] <= b.limit for b in problem.budgets):
            feasible.append(choices)
    least = [c for c in feasible if sum(problem.omega[n][c[n]] for n in problem.layers) <= expected * (1 + 1e-12)]
    widest = max(sum(c[n].weight_bits for n in problem.layers) for c in least)
    solution = solve_problem(problem)
    assert solution.objective == pytest.approx(expected, rel=1e-9)
    assert sum(c.weight_bits for c in solution.choices.values()) == widest
