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
from mpq.api.verbs import analyze, solve
from mpq.cache import open_cache
from mpq.cost.budget import Budget, as_budgets, within_budgets
from mpq.cost.layer_cost import model_costs
from mpq.errors import BudgetInfeasible
from mpq.inputs.graph import PreparedModel
from mpq.inputs.prepare import as_dataset, prepared_on, split_for_measurement
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.progress import bar, note
from mpq.quant.formats import WeightFormat
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.settings import ProbeSettings
from mpq.solver.build import build_problem
from mpq.solver.omega import plan_omega
from mpq.solver.pins import resolve_keep
from mpq.solver.problem import check_feasible
from mpq.solver.sweep import DEFAULT_VERIFY_POINTS, parse_sweep, verified_indices
from mpq.verify.measure import fitted_and_held_out, measure_plan, uniform_plan
from mpq.verify.pareto import ParetoPoint, ParetoResult, UniformPoint
from mpq.verify.report import Measurement


def _reachable(
    prepared: PreparedModel, budgets: list[Budget], fixed: list[Budget], bits, act_bits, pins, fmt: WeightFormat
) -> list[str | None]:
    """Per budget, None when each budget alone can be met, else the BudgetInfeasible message (no Hessian work)."""
    graph = prepared.graph
    reasons = []
    for budget in budgets:
        try:
            problem = build_problem(
                graph.layers,
                graph.float_bytes,
                [budget, *fixed],
                bits,
                act_bits,
                lambda n, c: 0.0,
                pins,
                graph.act_tie_groups,
                fmt=fmt,
            )
            check_feasible(problem)
            reasons.append(None)
        except BudgetInfeasible as exc:
            reasons.append(str(exc))
    return reasons


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
        predicted = {
            "size_bytes": int(costs["size_bytes"]),
            "bops": costs["bops"],
            "bits_per_weight": costs["bits_per_weight"],
            "omega": omega,
        }
        points.append(UniformPoint(b, act_bits, predicted, group_size=group))
    return points


def pareto(
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
    BOPs or bits per weight, e.g. "3bpw:6bpw"); `also_budgets` hold at every point (e.g. "20GBOPs" while sweeping sizes). `verify_points`:
    how many feasible points to measure, evenly spread (ends included), "all", or 0 to measure nothing
    (then the uniform widths are not measured either). The rest (`device` too) as in `mpq.search`.
    Raises BudgetInfeasible when no point of the sweep can be met.
    """
    space, probes, solver = search_configs("pareto", space, probes, solver, legacy)
    bits, acts, trace_margin = space.bits, space.act_bits, space.trace_margin
    start = time.perf_counter()
    data = as_dataset(data)
    sweep = parse_sweep(budgets)
    fixed = as_budgets(also_budgets) if (isinstance(also_budgets, (str, Budget)) or list(also_budgets)) else []
    verified_indices(len(sweep), verify_points)  # check it before the Hessian work
    prepared, data = prepared_on(model, data, quantize_embeddings, device)
    data, held_out = split_for_measurement(prepared, data, eval_data, eval_split)
    pins = resolve_keep([layer.name for layer in prepared.graph.layers], space.keep, space.keep_first, space.keep_last)
    reasons = _reachable(prepared, sweep, fixed, bits, acts, pins, resolve_quantizer(quantizer).format)
    if all(reasons):
        raise BudgetInfeasible(f"no budget of the sweep can be met ({sweep[-1].text}: {reasons[-1]})")
    t0 = time.perf_counter()
    sensitivity = analyze(
        prepared,
        data,
        probes=probes,
        metric=metric,
        quantizer=quantizer,
        loss=loss,
        cache_dir=cache_dir,
        progress=progress,
    )
    t1 = time.perf_counter()
    points = [
        _solve_point(sensitivity, b, fixed, reason, replace(space, keep=pins, keep_first=None, keep_last=None), solver)
        for b, reason in zip(sweep, reasons)
    ]
    if not any(p.feasible for p in points):
        raise BudgetInfeasible(
            f"no budget of the sweep can be met together with the fixed budgets: {points[-1].infeasible_reason}"
        )
    t2 = time.perf_counter()
    note(
        f"pareto: solved {len(points)} points in {t2 - t1:.1f} s ({sum(p.feasible for p in points)} feasible)", progress
    )
    widest_act = acts[-1]
    uniform = uniform_points(prepared, sensitivity, bits, widest_act, trace_margin)
    feasible = [p for p in points if p.feasible]
    chosen = [feasible[i] for i in verified_indices(len(feasible), verify_points)]
    fp32 = (
        _measure(prepared, data, chosen, uniform, eval_batch_size, cache_dir, progress, sensitivity.quantizer, held_out)
        if chosen
        else {}
    )
    return ParetoResult(
        kind=sweep[0].kind,
        points=points,
        uniform=uniform,
        sensitivity=sensitivity,
        fixed_budgets=fixed,
        fp32=fp32,
        settings={
            "bits": list(bits),
            "act_bits": acts[0] if len(acts) == 1 else list(acts),
            "keep": pins,
            "trace_margin": trace_margin,
            "loss": sensitivity.loss,
            "probes": sensitivity.settings.max_probes,
            "seed": sensitivity.settings.seed,
            "solver": solver.name,
            "time_limit_s": solver.time_limit_s,
            "verify_points": verify_points,
        },
        timings_s={
            "sensitivity": t1 - t0,
            "solve": t2 - t1,
            "verify": time.perf_counter() - t2,
            "total": time.perf_counter() - start,
        },
    )


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
        plan = solve(sensitivity, [budget, *fixed], space=space, solver=solver)
    except BudgetInfeasible as exc:
        return ParetoPoint(budget, None, str(exc), solve_seconds=time.perf_counter() - start)
    return ParetoPoint(budget, plan, solve_seconds=time.perf_counter() - start)


def _measure(
    prepared,
    data,
    chosen: list[ParetoPoint],
    uniform: list[UniformPoint],
    batch_size: int,
    cache_dir,
    progress: bool | None,
    quantizer: Quantizer,
    eval_data=None,
) -> dict:
    """Measure the chosen points and the uniform widths (each distinct plan once, all with `quantizer` fitted on
    `data`, measured on `eval_data` or else on `data`); the FP32 summary."""
    cache = open_cache(cache_dir)
    calibration, data, reference = fitted_and_held_out(prepared, data, eval_data, quantizer, batch_size, cache)
    seen: dict[str, Measurement] = {}

    def measured(plan: Plan, name: str, shown) -> Measurement:
        key = repr(sorted((n, lp.weight_bits, lp.act_bits) for n, lp in plan.layers.items()))
        if key not in seen:
            shown.set_postfix_str(name)
            seen[key] = measure_plan(prepared, plan, data, reference, name, batch_size, cache, calibration=calibration)
        shown.update(1)
        return replace(seen[key], name=name)

    with bar(len(chosen) + len(uniform), "pareto: measuring", progress, unit="plan") as shown:
        for point in chosen:
            point.measured = measured(point.plan, f"mpq plan at {point.budget.text}", shown)
            fits = within_budgets(
                point.measured.costs, point.plan.budgets, latency_known=False
            )  # a sweep has no latency model
            point.measured = replace(point.measured, fits_budget=fits)
        for u in uniform:
            u.measured = measured(uniform_plan(prepared, u.weight_bits, u.act_bits, u.group_size), u.name, shown)
    return {"size_bytes": reference.size_bytes, "top1": reference.top1}
