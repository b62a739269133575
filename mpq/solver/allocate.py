"""The solver's one entry point: the widths of least total Omega within the budgets, one per layer or per group of
output channels (space.granularity picks the integer program: mpq.solver.build or mpq.solver.channels)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mpq.cost.budget import Budget
from mpq.cost.latency import coverage_note
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo
from mpq.plan import LayerPlan
from mpq.plan.settings import ChannelSearch, LatencySource, SearchSpace, SolverSettings
from mpq.sensitivity import Sensitivity
from mpq.solver.build import Layers, build_problem, candidate_choices
from mpq.solver.channels import ChannelProblem, build_channel_problem, channel_omega, layer_plans
from mpq.solver.omega import choice_omega
from mpq.solver.pins import resolve_keep
from mpq.solver.presolve import binary_variables, solve_presolved
from mpq.solver.problem import Problem, Solution, check_feasible, solve_problem

CHANNEL_LATENCY = (
    "latency budgets and tables work with one width per layer only: drop --granularity channel or the latency model"
)


def layers_of(sensitivity: Sensitivity) -> Layers:
    """The layers a sensitivity was measured on, in its quantizer's weight format."""
    layers = [s.layer for s in sensitivity.layers.values()]
    return Layers(layers, sensitivity.float_bytes, sensitivity.act_tie_groups, sensitivity.quantizer.format)


def pins(layers: Layers, space: SearchSpace) -> dict[str, int]:
    """The widths `space` pins (keep, keep_first, keep_last), by layer name."""
    return resolve_keep([layer.name for layer in layers.layers], space.keep, space.keep_first, space.keep_last)


@dataclass
class Allocation:
    """A solved allocation: the plan's layers and what the plan records of how they were found."""

    layers: dict[str, LayerPlan]
    solution: Solution
    pins: dict[str, int]
    act_sensitivity: bool  # whether Omega counted the inputs' sensitivity
    channels: ChannelSearch | None = None
    latency: LatencySource | None = None


def act_widths_by_sensitivity(sensitivity: Sensitivity, space: SearchSpace) -> bool:
    """Whether Omega includes the inputs' sensitivity: only with several activation widths to choose from."""
    if space.act_sensitivity and not sensitivity.has_activations:
        raise MpqError("act_sensitivity=True needs the inputs' sensitivity: analyze with activations=True")
    return space.several_act_widths and sensitivity.has_activations and space.act_sensitivity is not False


def allocation_problem(
    layers: Layers,
    budgets: list[Budget],
    space: SearchSpace,
    latency=None,
    sensitivity: Sensitivity | None = None,
    by_sensitivity: bool = False,
) -> "Problem | ChannelProblem":
    """The integer program of `space.granularity`: per layer (a Problem) or per channel group (a ChannelProblem).
    Omega from `sensitivity` (None: zero everywhere, for telling whether the budgets can be met at all)."""
    pinned = pins(layers, space)
    if space.granularity == "channel":
        if latency is not None:
            raise MpqError(CHANNEL_LATENCY)
        omega = (lambda group, b: 0.0) if sensitivity is None else channel_omega(sensitivity, space.trace_margin)
        return build_channel_problem(layers, budgets, space.bits, space.act_bits, omega, space.channel_group, pinned)

    def omega(name: str, choice: Choice) -> float:
        if sensitivity is None:
            return 0.0
        return choice_omega(sensitivity.layers[name], choice, space.trace_margin, by_sensitivity)

    return build_problem(layers, budgets, space.bits, space.act_bits, omega, pinned, latency)


def check_reachable(layers: Layers, budgets: list[Budget], space: SearchSpace, latency=None) -> None:
    """BudgetInfeasible, naming the smallest budget that can be met, when no plan meets `budgets` (no Omega needed)."""
    problem = allocation_problem(layers, budgets, space, latency)
    check_feasible(problem.problem if isinstance(problem, ChannelProblem) else problem)


def allocate(
    sensitivity: Sensitivity, budgets: list[Budget], space: SearchSpace, solver: SolverSettings, latency=None
) -> Allocation:
    """The widths of least total Omega meeting every budget; BudgetInfeasible when none does."""
    layers = layers_of(sensitivity)
    by_sensitivity = space.granularity == "layer" and act_widths_by_sensitivity(sensitivity, space)
    pinned = pins(layers, space)
    problem = allocation_problem(layers, budgets, space, latency, sensitivity, by_sensitivity)
    if isinstance(problem, ChannelProblem):
        solution, reduction = solve_presolved(problem.problem, solver.time_limit_s, solver.name)
        after = binary_variables(reduction.problem) if reduction else problem.binary_variables
        channels = ChannelSearch(problem.binary_variables, problem.dropped_choices, after)
        chosen = Allocation(layer_plans(problem, solution), solution, pinned, by_sensitivity, channels)
    else:
        solution = solve_problem(problem, solver.time_limit_s, solver.name)
        plans = {n: LayerPlan(weight_bits=c.weight_bits, act_bits=c.act_bits) for n, c in solution.choices.items()}
        chosen = Allocation(plans, solution, pinned, by_sensitivity)
        if latency is not None:
            choices = candidate_choices(layers.layers, space.bits, space.act_bits, pinned)
            chosen.latency = _latency_source(layers.layers, choices, latency)
    if sensitivity.quantizer.group_size is not None:
        chosen.layers = {n: replace(lp, granularity="group") for n, lp in chosen.layers.items()}
    return chosen


def _latency_source(layers: list[LayerInfo], choices: dict[str, list[Choice]], latency) -> LatencySource:
    """What a plan records of its latency model: where it came from, the batch, and the choices it lacked."""
    return LatencySource.from_json(latency.to_json() | {"note": coverage_note(layers, choices, latency)})
