"""Pareto fronts: the least-Omega plan at each of many budgets, and what the evaluator measures on some.

For budgets B_1 < B_2 < ... < B_n of one kind (bytes or BOPs), point i is the plan of mpq.solve at B_i
(together with any fixed budgets that hold at every point):

    Omega*(B_i) = min { sum_l Omega_l(b_l) : cost(b) <= B_i, fixed budgets hold }

The feasible set grows with B, so Omega*(B_i) is non-increasing in i. Points below the smallest
reachable budget are infeasible (marked, not an error unless every point is). The sensitivity is
computed once (cached); a chosen subset of points and every uniform width (at the widest candidate
activation width) are measured with the evaluator (mpq.verify.measure.measure_plan).

    result = mpq.pareto(model, data, budgets="2MB:6MB:30", verify_points=6)
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from mpq.api.options import search_configs
from mpq.api.search import SWEEP_KEYWORDS
from mpq.api.stages import AnalyzeOptions, Run, analyze_inputs, solve_sensitivity
from mpq.cache import open_cache
from mpq.cost.budget import Budget, as_budgets, within_budgets
from mpq.cost.costs import CostKind
from mpq.cost.layer_cost import model_costs
from mpq.errors import BudgetInfeasible
from mpq.inputs.graph import PreparedModel
from mpq.inputs.prepare import Inputs, as_dataset, prepare_inputs, with_held_out
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.keywords import checks_keywords
from mpq.plan.records import Predicted
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.progress import bar, note
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.settings import ProbeSettings
from mpq.solver.allocate import check_reachable, pins
from mpq.solver.build import Layers
from mpq.solver.omega import plan_omega
from mpq.solver.sweep import DEFAULT_VERIFY_POINTS, parse_sweep, verified_indices
from mpq.verify.measure import fitted_and_held_out, measure_plan, uniform_plan
from mpq.verify.pareto import ParetoPoint, ParetoResult, UniformPoint
from mpq.verify.report import Measurement

UNIFORM_ORDER = ("size_bytes", "bops", "bits_per_weight", "omega")  # pareto.json's uniform points


def _reachable(
    layers: Layers, budgets: list[Budget], fixed: list[Budget], space: SearchSpace
) -> tuple[SearchSpace, list[str | None]]:
    """`space` with its pins resolved, and per budget None when each budget alone can be met, else the
    BudgetInfeasible message (no Hessian work); BudgetInfeasible when none can. Told per layer, whatever the
    granularity (per-channel sizes round per group, a few bytes apart)."""
    pinned = replace(space, keep=pins(layers, space), keep_first=None, keep_last=None)
    reasons = []
    for budget in budgets:
        try:
            check_reachable(layers, [budget, *fixed], replace(pinned, granularity="layer"))
            reasons.append(None)
        except BudgetInfeasible as exc:
            reasons.append(str(exc))
    if all(reasons):
        raise BudgetInfeasible(f"no budget of the sweep can be met ({budgets[-1].text}: {reasons[-1]})")
    return pinned, reasons


def uniform_points(
    prepared: PreparedModel, sensitivity: Sensitivity, bits: Sequence[int], act_bits: int | None, trace_margin: float
) -> list[UniformPoint]:
    """Every candidate weight width for every layer (scales at the sensitivity's group size): predicted size, BOPs,
    bits per weight and total Omega."""
    points = []
    group = sensitivity.quantizer.group_size
    for b in sorted(set(bits)):
        plan = uniform_plan(prepared, b, act_bits, group)
        costs = model_costs(
            prepared.graph.layers,
            {n: lp.choice for n, lp in plan.layers.items()},
            prepared.graph.float_bytes,
            fmt=sensitivity.quantizer.format,
        )
        omega = plan_omega(sensitivity, plan, trace_margin, inputs=False)
        predicted = Predicted(
            size_bytes=int(costs[CostKind.SIZE_BYTES]),
            bops=costs[CostKind.BOPS],
            bits_per_weight=costs[CostKind.BITS_PER_WEIGHT],
            omega=omega,
            order=UNIFORM_ORDER,
        )
        points.append(UniformPoint(b, act_bits, predicted, group_size=group))
    return points


@checks_keywords("verify_points", *SWEEP_KEYWORDS)
def pareto(  # noqa: PLR0913 - the public API's keywords (DESIGN.md)
    model,
    data,
    budgets="2MB:6MB",
    *,
    also_budgets=(),
    space: SearchSpace | None = None,
    probes: ProbeSettings | None = None,
    solver: "SolverSettings | str | None" = None,
    metric: str | None = None,
    quantizer: "str | Quantizer | None" = None,
    loss=None,
    eval_data=None,
    eval_split: float = EVAL_SPLIT,
    verify_points: "int | str" = DEFAULT_VERIFY_POINTS,
    eval_batch_size: int = 25,
    quantize_embeddings: bool = False,
    cache_dir=None,
    progress: bool | None = None,
    device=None,
    **legacy,
) -> ParetoResult:
    """The least-Omega plan at every budget of a sweep, `verify_points` of them measured, and the uniform widths.

    `budgets`: "2MB:6MB" (30 evenly spaced), "2MB:6MB:STEPS", "2MB,3MB,4MB" or a list (one kind: sizes,
    BOPs or bits per weight, e.g. "3bpw:6bpw"); `also_budgets` hold at every point (e.g. "20GBOPs" while sweeping
    sizes). `verify_points`: how many feasible points to measure, evenly spread (ends included), "all", or 0 to
    measure nothing (then the uniform widths are not measured either). The rest (`device` too) as in `mpq.search`.
    Raises BudgetInfeasible when no point of the sweep can be met.
    """
    space, probes, solver = search_configs("pareto", space, probes, solver, legacy)
    start = time.perf_counter()
    data = as_dataset(data)
    sweep = parse_sweep(budgets)
    fixed = as_budgets(also_budgets) if (isinstance(also_budgets, (str, Budget)) or list(also_budgets)) else []
    verified_indices(len(sweep), verify_points)  # check it before the Hessian work
    inputs = with_held_out(prepare_inputs(model, data, quantize_embeddings, device), eval_data, eval_split)
    quantizer = resolve_quantizer(quantizer)
    pinned, reasons = _reachable(Layers.of_graph(inputs.prepared.graph, quantizer.format), sweep, fixed, space)
    run = Run(open_cache(cache_dir), progress)
    t0 = time.perf_counter()
    sensitivity = analyze_inputs(inputs, AnalyzeOptions(probes, quantizer, metric, loss), run)
    t1 = time.perf_counter()
    points = _solve_sweep(sensitivity, sweep, fixed, reasons, pinned, solver)
    t2 = time.perf_counter()
    feasible = [p for p in points if p.feasible]
    note(f"pareto: solved {len(points)} points in {t2 - t1:.1f} s ({len(feasible)} feasible)", progress)
    uniform = uniform_points(inputs.prepared, sensitivity, space.bits, space.act_bits[-1], space.trace_margin)
    chosen = [feasible[i] for i in verified_indices(len(feasible), verify_points)]
    fp32 = _measure(inputs, chosen, uniform, eval_batch_size, run, sensitivity.quantizer) if chosen else {}
    return ParetoResult(
        kind=sweep[0].kind,
        points=points,
        uniform=uniform,
        sensitivity=sensitivity,
        fixed_budgets=fixed,
        fp32=fp32,
        settings=_settings(space, pinned.keep, sensitivity, solver, verify_points),
        timings_s=_timings(start, t0, t1, t2),
    )


def _timings(start: float, t0: float, t1: float, t2: float) -> dict[str, float]:
    """Seconds of the sensitivity (from t0), the solves (from t1), the measurements (from t2) and in all."""
    now = time.perf_counter()
    return {"sensitivity": t1 - t0, "solve": t2 - t1, "verify": now - t2, "total": now - start}


def _solve_sweep(
    sensitivity: Sensitivity,
    sweep: list[Budget],
    fixed: list[Budget],
    reasons: list[str | None],
    space: SearchSpace,
    solver: SolverSettings,
) -> list[ParetoPoint]:
    """Every point of the sweep solved (the unreachable ones marked); BudgetInfeasible when none is feasible."""
    points = [_solve_point(sensitivity, b, fixed, reason, space, solver) for b, reason in zip(sweep, reasons)]
    if not any(p.feasible for p in points):
        raise BudgetInfeasible(
            f"no budget of the sweep can be met together with the fixed budgets: {points[-1].infeasible_reason}"
        )
    return points


def _settings(space: SearchSpace, pins: dict, sensitivity: Sensitivity, solver: SolverSettings, verify_points) -> dict:
    """What pareto.json records of the sweep's settings."""
    acts = space.act_bits
    return {
        "bits": list(space.bits),
        "act_bits": acts[0] if len(acts) == 1 else list(acts),
        "keep": pins,
        "trace_margin": space.trace_margin,
        "loss": sensitivity.loss,
        "probes": sensitivity.settings.max_probes,
        "seed": sensitivity.settings.seed,
        "solver": solver.name,
        "time_limit_s": solver.time_limit_s,
        "verify_points": verify_points,
    }


def _solve_point(
    sensitivity: Sensitivity,
    budget: Budget,
    fixed: list[Budget],
    reason: str | None,
    space: SearchSpace,
    solver: SolverSettings,
) -> ParetoPoint:
    if reason:
        return ParetoPoint(budget, None, reason)
    start = time.perf_counter()
    try:
        plan = solve_sensitivity(sensitivity, [budget, *fixed], space, solver)
    except BudgetInfeasible as exc:
        return ParetoPoint(budget, None, str(exc), solve_seconds=time.perf_counter() - start)
    return ParetoPoint(budget, plan, solve_seconds=time.perf_counter() - start)


def _measure(
    inputs: Inputs,
    chosen: list[ParetoPoint],
    uniform: list[UniformPoint],
    batch_size: int,
    run: Run,
    quantizer: Quantizer,
) -> dict:
    """Measure the chosen points and the uniform widths (each distinct plan once, all with `quantizer` fitted on
    the fit data, measured on the held-out data or else on the fit data); the FP32 summary."""
    prepared = inputs.prepared
    args = (prepared, inputs.fit, inputs.held_out, quantizer, batch_size, run.cache)
    fitted = fitted_and_held_out(*args)
    seen: dict[str, Measurement] = {}

    def measured(plan: Plan, name: str, shown) -> Measurement:
        key = repr(sorted((n, lp.weight_bits, lp.act_bits) for n, lp in plan.layers.items()))
        if key not in seen:
            shown.set_postfix_str(name)
            seen[key] = measure_plan(prepared, plan, fitted, name, batch_size, run.cache)
        shown.update(1)
        return replace(seen[key], name=name)

    with bar(len(chosen) + len(uniform), "pareto: measuring", run.progress, unit="plan") as shown:
        for point in chosen:
            point.measured = measured(point.plan, f"mpq plan at {point.budget.text}", shown)
            # a sweep has no latency model
            fits = within_budgets(point.measured.costs, point.plan.budgets, latency_known=False)
            point.measured = replace(point.measured, fits_budget=fits)
        for u in uniform:
            u.measured = measured(uniform_plan(prepared, u.weight_bits, u.act_bits, u.group_size), u.name, shown)
    return {"size_bytes": fitted.reference.size_bytes, "top1": fitted.reference.top1}
