"""Pareto fronts: the least-Omega plan at each of many budgets, and what the evaluator measures on some.

For budgets B_1 < B_2 < ... < B_n of one kind (bytes or BOPs), point i is the plan of mpq.solve at B_i
(together with any fixed budgets that hold at every point):

    Omega*(B_i) = min { sum_l Omega_l(b_l) : cost(b) <= B_i, fixed budgets hold }

The feasible set grows with B, so Omega*(B_i) is non-increasing in i. Points below the smallest
reachable budget are infeasible (marked, not an error unless every point is). The sensitivity is
computed once (cached); a chosen subset of points and every uniform width (at the widest candidate
activation width) are measured with the evaluator (mpq.verify.measure_plan).

    result = mpq.pareto(model, data, budgets="2MB:6MB:30", verify_points=6)
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from mpq.api import (
    DEFAULT_ACT_BITS,
    DEFAULT_BITS,
    DEFAULT_TRACE_MARGIN,
    _as_budgets,
    _as_dataset,
    _as_prepared,
    _cache,
    act_widths,
    analyze,
    build_problem,
    solve,
)
from mpq.budget import SCALE_OF_UNIT, Budget, parse_budget
from mpq.calibration import calibrate
from mpq.cost import model_costs
from mpq.errors import BudgetInfeasible, MpqError
from mpq.graph import PreparedModel
from mpq.milp import DEFAULT_SOLVER
from mpq.pins import resolve_keep
from mpq.plan import Plan
from mpq.quantizer import Quantizer
from mpq.sensitivity import Sensitivity
from mpq.solver import check_feasible
from mpq.verify import Measurement, fp32_reference, measure_plan, uniform_plan

SWEEP_KINDS = ("size_bytes", "bops")
DEFAULT_STEPS = 30
DEFAULT_VERIFY_POINTS = 6
_RANGE = re.compile(r"^\s*([^:]+):([^:]+?)(?::\s*([0-9]+))?\s*$")
_UNIT = re.compile(r"[A-Za-z]+\s*$")


@dataclass
class ParetoPoint:
    """One budget of the sweep: its plan (None when no plan meets it) and, when verified, its measurement."""

    budget: Budget
    plan: Plan | None
    infeasible_reason: str | None = None
    measured: Measurement | None = None
    solve_seconds: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.plan is not None


@dataclass
class UniformPoint:
    """Every layer at one weight width (and the sweep's widest activation width): predicted and measured."""

    weight_bits: int
    act_bits: int | None
    predicted: dict
    measured: Measurement | None = None

    @property
    def name(self) -> str:
        return f"uniform W{self.weight_bits}" + (f"A{self.act_bits}" if self.act_bits else "")


@dataclass
class ParetoResult:
    kind: str  # the budget kind swept: size_bytes or bops
    points: list[ParetoPoint]
    uniform: list[UniformPoint]
    sensitivity: Sensitivity
    fixed_budgets: list[Budget] = field(default_factory=list)
    fp32: dict = field(default_factory=dict)  # size_bytes and top1 of the FP32 model (when measured)
    settings: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    @property
    def feasible_points(self) -> list[ParetoPoint]:
        return [p for p in self.points if p.feasible]

    def to_json(self) -> dict:
        return {
            "schema": "mpq.pareto/1",
            "kind": self.kind,
            "fixed_budgets": [b.to_json() for b in self.fixed_budgets],
            "model": {"fingerprint": self.sensitivity.model_fingerprint, "layers": len(self.sensitivity.layers)},
            "settings": self.settings,
            "fp32": self.fp32,
            "points": [
                {
                    "budget": p.budget.to_json(),
                    "feasible": p.feasible,
                    "infeasible_reason": p.infeasible_reason,
                    "predicted": p.plan.predicted if p.plan else None,
                    "solver": p.plan.solver if p.plan else None,
                    "solve_seconds": p.solve_seconds,
                    "measured": p.measured.to_json() if p.measured else None,
                    "plan": p.plan.to_json() if p.plan else None,
                }
                for p in self.points
            ],
            "uniform": [
                {"name": u.name, "weight_bits": u.weight_bits, "act_bits": u.act_bits, "predicted": u.predicted,
                 "measured": u.measured.to_json() if u.measured else None}
                for u in self.uniform
            ],
            "timings_s": self.timings_s,
        }


def _unit(text: str) -> str:
    match = _UNIT.search(text)
    if not match:
        raise MpqError(f"cannot read budget {text!r}: write a number and a unit, e.g. 4MB or 20GBOPs")
    return match.group(0).strip()


def _sweep_kind(budgets: list[Budget]) -> str:
    kinds = {b.kind for b in budgets}
    if len(kinds) > 1:
        raise MpqError(f"the budgets of one sweep must be of one kind, not {' and '.join(sorted(kinds))}; give others with --also-budget")
    kind = kinds.pop()
    if kind not in SWEEP_KINDS:
        raise MpqError(f"a sweep runs over sizes (e.g. 2MB:6MB) or BOPs (e.g. 10GBOPs:40GBOPs), not {kind}")
    return kind


def budget_range(low: Budget, high: Budget, steps: int, unit: str) -> list[Budget]:
    """`steps` budgets evenly spaced from `low` to `high`, each written in `unit` to 6 significant digits
    (whole bytes for B) and read back from that text, so that text and limit agree."""
    if steps < 2:
        raise MpqError(f"a budget range needs at least 2 steps, not {steps}")
    if not low.limit < high.limit:
        raise MpqError(f"a budget range goes from the smaller to the larger budget: {low.text}:{high.text}")
    scale = SCALE_OF_UNIT[unit.lower()]
    values = np.linspace(low.limit, high.limit, steps)
    if unit.lower() == "b":  # whole bytes
        return [parse_budget(f"{int(v)}B") for v in values]
    return [parse_budget(f"{v / scale:.6g}{unit}") for v in values]


def parse_sweep(spec: "str | Budget | Iterable[str | Budget]") -> list[Budget]:
    """Sweep budgets from "2MB:6MB" (30 steps), "2MB:6MB:STEPS", "2MB,3MB,4MB" or a list; sorted, one kind."""
    if isinstance(spec, str) and ":" in spec:
        match = _RANGE.match(spec)
        if not match:
            raise MpqError(f"cannot read budget range {spec!r}: write LOW:HIGH or LOW:HIGH:STEPS, e.g. 2MB:6MB:30")
        low, high = parse_budget(match.group(1)), parse_budget(match.group(2))
        _sweep_kind([low, high])
        budgets = budget_range(low, high, int(match.group(3) or DEFAULT_STEPS), _unit(match.group(2)))
    else:
        items = [b for b in spec.split(",") if b.strip()] if isinstance(spec, str) else spec
        budgets = _as_budgets(items)
    _sweep_kind(budgets)
    unique = {b.limit: b for b in budgets}
    return [unique[limit] for limit in sorted(unique)]


def verified_indices(count: int, wanted: "int | str") -> list[int]:
    """`wanted` indices evenly spread over range(count), both ends included; "all" gives every one."""
    if wanted == "all":
        return list(range(count))
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
        raise MpqError(f"verify_points={wanted!r} must be a whole number of points (0 or more) or \"all\"")
    if wanted == 0 or count == 0:
        return []
    if wanted == 1:
        return [count - 1]
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(wanted, count))})


def _reachable(prepared: PreparedModel, budgets: list[Budget], fixed: list[Budget], bits, act_bits, pins) -> list[str | None]:
    """Per budget, None when each budget alone can be met, else the BudgetInfeasible message (no Hessian work)."""
    graph = prepared.graph
    reasons = []
    for budget in budgets:
        try:
            check_feasible(build_problem(graph.layers, graph.float_bytes, [budget, *fixed], bits, act_bits, lambda n, c: 0.0, pins, graph.act_tie_groups))
            reasons.append(None)
        except BudgetInfeasible as exc:
            reasons.append(str(exc))
    return reasons


def uniform_points(prepared: PreparedModel, sensitivity: Sensitivity, bits: Sequence[int], act_bits: int | None, trace_margin: float) -> list[UniformPoint]:
    """Every candidate weight width for every layer: predicted size, BOPs and total Omega."""
    points = []
    for b in sorted(set(bits)):
        plan = uniform_plan(prepared, b, act_bits)
        costs = model_costs(prepared.graph.layers, {n: lp.choice for n, lp in plan.layers.items()}, prepared.graph.float_bytes)
        omega = sum(s.omega(b, trace_margin) for s in sensitivity.layers.values())
        points.append(UniformPoint(b, act_bits, {"size_bytes": int(costs["size_bytes"]), "bops": costs["bops"], "omega": omega}))
    return points


def _log(progress: bool, text: str) -> None:
    if progress:
        print(f"pareto: {text}", file=sys.stderr, flush=True)


def pareto(
    model,
    data,
    budgets="2MB:6MB",
    *,
    also_budgets=(),
    bits: Iterable[int] = DEFAULT_BITS,
    act_bits: "int | None | Sequence[int | None]" = DEFAULT_ACT_BITS,
    trace_margin: float = DEFAULT_TRACE_MARGIN,
    keep: "dict[str, int] | None" = None,
    keep_first: int | None = None,
    keep_last: int | None = None,
    verify_points: "int | str" = DEFAULT_VERIFY_POINTS,
    solver: str = DEFAULT_SOLVER,
    time_limit_s: float | None = None,
    cache_dir=None,
    progress: bool = True,
    eval_batch_size: int = 25,
    quantize_embeddings: bool = False,
    **analyze_options,
) -> ParetoResult:
    """The least-Omega plan at every budget of a sweep, `verify_points` of them measured, and the uniform widths.

    `budgets`: "2MB:6MB" (30 evenly spaced), "2MB:6MB:STEPS", "2MB,3MB,4MB" or a list (one kind: sizes or
    BOPs); `also_budgets` hold at every point (e.g. "20GBOPs" while sweeping sizes). `verify_points`:
    how many feasible points to measure, evenly spread (ends included), "all", or 0 to measure nothing
    (then the uniform widths are not measured either). The rest as in `mpq.search`.
    Raises BudgetInfeasible when no point of the sweep can be met.
    """
    start = time.perf_counter()
    data = _as_dataset(data)
    sweep = parse_sweep(budgets)
    fixed = _as_budgets(also_budgets) if (isinstance(also_budgets, (str, Budget)) or list(also_budgets)) else []
    bits = tuple(sorted(set(bits)))
    acts = act_widths(act_bits)
    verified_indices(len(sweep), verify_points)  # check it before the Hessian work
    prepared = _as_prepared(model, data, quantize_embeddings)
    pins = resolve_keep([layer.name for layer in prepared.graph.layers], keep, keep_first, keep_last)
    reasons = _reachable(prepared, sweep, fixed, bits, acts, pins)
    if all(reasons):
        raise BudgetInfeasible(f"no budget of the sweep can be met ({sweep[-1].text}: {reasons[-1]})")
    t0 = time.perf_counter()
    sensitivity = analyze(prepared, data, cache_dir=cache_dir, progress=progress, quantize_embeddings=quantize_embeddings, **analyze_options)
    t1 = time.perf_counter()
    points = [_solve_point(sensitivity, b, fixed, reason, bits, acts, trace_margin, pins, solver, time_limit_s) for b, reason in zip(sweep, reasons)]
    if not any(p.feasible for p in points):
        raise BudgetInfeasible(f"no budget of the sweep can be met together with the fixed budgets: {points[-1].infeasible_reason}")
    t2 = time.perf_counter()
    _log(progress, f"solved {len(points)} points in {t2 - t1:.1f} s ({sum(p.feasible for p in points)} feasible)")
    widest_act = acts[-1]
    uniform = uniform_points(prepared, sensitivity, bits, widest_act, trace_margin)
    feasible = [p for p in points if p.feasible]
    chosen = [feasible[i] for i in verified_indices(len(feasible), verify_points)]
    fp32 = _measure(prepared, data, chosen, uniform, eval_batch_size, cache_dir, progress, sensitivity.quantizer) if chosen else {}
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
            "solver": solver,
            "time_limit_s": time_limit_s,
            "verify_points": verify_points,
        },
        timings_s={
            "sensitivity": t1 - t0,
            "solve": t2 - t1,
            "verify": time.perf_counter() - t2,
            "total": time.perf_counter() - start,
        },
    )


def _solve_point(sensitivity, budget, fixed, reason, bits, acts, trace_margin, pins, solver, time_limit_s) -> ParetoPoint:
    if reason:
        return ParetoPoint(budget, None, reason)
    start = time.perf_counter()
    try:
        plan = solve(sensitivity, [budget, *fixed], bits=bits, act_bits=acts, trace_margin=trace_margin, keep=pins, solver=solver, time_limit_s=time_limit_s)
    except BudgetInfeasible as exc:
        return ParetoPoint(budget, None, str(exc), solve_seconds=time.perf_counter() - start)
    return ParetoPoint(budget, plan, solve_seconds=time.perf_counter() - start)


def _measure(prepared, data, chosen: list[ParetoPoint], uniform: list[UniformPoint], batch_size: int, cache_dir, progress: bool, quantizer: Quantizer) -> dict:
    """Measure the chosen points and the uniform widths (each distinct plan once, all with `quantizer`); the FP32 summary."""
    cache = _cache(cache_dir)
    reference = fp32_reference(prepared, data, batch_size, cache)
    calibration = calibrate(prepared, data, reference.input_ranges, quantizer, batch_size, cache)
    seen: dict[str, Measurement] = {}

    def measured(plan: Plan, name: str) -> Measurement:
        key = repr(sorted((n, lp.weight_bits, lp.act_bits) for n, lp in plan.layers.items()))
        if key not in seen:
            _log(progress, f"measuring {name} ({len(seen) + 1} of at most {len(chosen) + len(uniform)})")
            seen[key] = measure_plan(prepared, plan, data, reference, name, batch_size, cache, calibration=calibration)
        return replace(seen[key], name=name)

    for point in chosen:
        point.measured = measured(point.plan, f"mpq plan at {point.budget.text}")
        fits = all(point.measured.__dict__.get(b.kind, 0) <= b.limit for b in point.plan.budgets)
        point.measured = replace(point.measured, fits_budget=fits)
    for u in uniform:
        u.measured = measured(uniform_plan(prepared, u.weight_bits, u.act_bits), u.name)
    return {"size_bytes": reference.size_bytes, "top1": reference.top1}
