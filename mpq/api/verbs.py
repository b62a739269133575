"""The Python API: analyze -> solve -> verify, and search, which does all three.

    import mpq
    sens = mpq.analyze(model, data)                       # Hessian traces and quantization errors
    plan = mpq.solve(sens, budget="4MB", bits=(4, 6, 8))  # the least-Omega widths within budget
    report = mpq.verify(model, plan, data)                # measured against FP32 and uniform widths
    result = mpq.search(model, data, budget="4MB")       # all three

`model` is any torch.nn.Module (never changed in place); `data` an mpq.Dataset, a tensor of inputs,
or an (x, y) tuple. Integer inputs (token ids) are passed to the model unchanged. Budgets are strings
("4MB", "20GBOPs", "2.5ms") or mpq.Budget objects, one or a list (all must hold); a latency budget needs
`latency=`: a shipped device name ("nvidia-t4"), a device .toml, or a latency table .csv (`mpq profile`),
or mpq.latency_model(spec, batch=...). Bad input raises
mpq.MpqError with a message that says what to do; unreachable budgets raise mpq.BudgetInfeasible.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn

from mpq.cache import open_cache
from mpq.cost.budget import as_budgets
from mpq.cost.latency import coverage_note, latency_from_settings, latency_model
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo
from mpq.inputs.prepare import as_dataset, as_prepared
from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import check_bits
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity, analyze_prepared
from mpq.sensitivity.hessian import ProbeSettings
from mpq.sensitivity.losses import resolve_loss
from mpq.sensitivity.metrics import check_metric
from mpq.solver.build import act_widths, build_problem, candidate_choices
from mpq.solver.channels import (
    build_channel_problem,
    channel_omega,
    check_granularity,
    layer_plans,
)
from mpq.solver.milp import DEFAULT_SOLVER
from mpq.solver.pins import resolve_keep
from mpq.solver.presolve import binary_variables, solve_presolved
from mpq.solver.problem import solve_problem
from mpq.verify.measure import verify_prepared
from mpq.verify.report import Report

DEFAULT_BITS = (4, 5, 6, 7, 8)
DEFAULT_ACT_BITS = 8
DEFAULT_TRACE_MARGIN = 2.0
ACT_CHOICE_NOTE = "activation widths are chosen by cost only (Omega is the weight sensitivity)"
ACT_SENSITIVITY_NOTE = "activation widths are chosen by sensitivity (Omega adds each input's T/m * E||Q_a(x) - x||^2)"




def analyze(
    model,
    data,
    *,
    tol: float = 0.05,
    max_probes: int = 32,
    min_probes: int = 8,
    max_seconds: float = 600.0,
    batch_size: int = 8,
    seed: int = 0,
    cache_dir=None,
    progress: bool | None = None,
    loss=None,
    quantize_embeddings: bool = False,
    metric: str = "hessian",
    activations: bool = False,
    hvp: str = "fwd-rev",
    chunk_size: int = 0,
    probing: str = "per-layer",
    quantizer: "str | Quantizer | None" = None,
) -> Sensitivity:
    """Per-layer (and per-channel) Hessian traces with standard errors, and quantization errors.

    Probes until every layer's standard error is below `tol` x its trace, or `max_probes`, or
    `max_seconds`. Results are cached under `cache_dir` (None: the default folder; False: no cache);
    an interrupted run resumes from the probes it finished.

    `loss`: "labels" (cross-entropy with y; the default when the data has labels), "fp32"
    (cross-entropy against the FP32 predictions; the default without), "mse" or "kl" to the FP32
    outputs (for models that are not classifiers), "module:callable", or a function
    loss(output, target) where target is y when given, else the FP32 outputs.

    `quantize_embeddings`: nn.Embedding tables become layers too (weights per row, no input quantizer).

    `metric`: "hessian" (Hutchinson traces), "fisher" (empirical Fisher trace, exact over the data),
    "eigenvalue" (top eigenvalue of each layer's Hessian block; Omega = lambda_max * ||Q_b(W) - W||^2) or
    "output_mse" (measured: the model output's MSE to FP32 with only that layer quantized), "output_kl"
    (measured: KL(FP32 || q) with only that layer quantized, by the quantizer's weights and bias) or
    "kl_quadratic" (Omega_l(b) = 1/2 E[delta^T M delta], the second-order KL to FP32 in the layer's actual
    quantization error, clipping and bias correction included; weights only); see mpq.sensitivity.metrics. `activations`: also each layer's input (the curvature with respect to
    it under the same metric, and the quantization error of the verifier's activation quantizer),
    so that `solve` chooses activation widths by sensitivity.
    `hvp`: "fwd-rev" (forward over reverse, the faster) or "rev-rev" (reverse over reverse, for
    losses torch.func cannot trace). `chunk_size`: samples per chunk of a probe's batch (0: all at
    once); smaller chunks bound the memory, the result is the same to float rounding.
    `probing`: "per-layer" (one product per layer and probe, no cross-layer terms; each layer stops
    at the tolerance on its own) or "all-layers" (one product per probe for every layer, with the
    cross terms' variance); see mpq.sensitivity.hessian and reports/hessian.md.
    Under torch.distributed (torchrun), the probes are split across the ranks.
    `quantizer`: a preset name ("default", "minmax", "percentile", "mse", "aciq") or an mpq.Quantizer;
    the quantization errors are those of its weights, and plans solved from this sensitivity record it,
    so that they are verified and exported with it (None: the default).
    `progress`: bars on stderr (True: always, False: never, None: only when stderr is a terminal; mpq.progress).
    """
    check_metric(metric)
    if not 0 < tol < 1:
        raise MpqError(f"tol={tol} must lie between 0 and 1 (e.g. 0.05 for 5%)")
    if max_probes < 2 or min_probes < 2:
        raise MpqError("max_probes and min_probes must be at least 2 (a standard error needs two probes)")
    if batch_size < 1:
        raise MpqError(f"batch_size={batch_size} must be at least 1")
    data = as_dataset(data)
    resolved = resolve_loss(loss, data.y is not None)
    prepared = as_prepared(model, data, quantize_embeddings)
    settings = ProbeSettings(tol=tol, min_probes=min(min_probes, max_probes), max_probes=max_probes, max_seconds=max_seconds, batch_size=batch_size, seed=seed,
                             hvp=hvp, chunk_size=chunk_size, probing=probing)
    return analyze_prepared(prepared, data, settings, open_cache(cache_dir), progress, resolved, metric, activations, resolve_quantizer(quantizer))



def _act_widths_by_sensitivity(sensitivity: Sensitivity, acts: tuple, act_sensitivity: bool | None) -> bool:
    """Whether Omega includes the inputs' sensitivity: only with several activation widths to choose from."""
    if act_sensitivity and not sensitivity.has_activations:
        raise MpqError("act_sensitivity=True needs the inputs' sensitivity: analyze with activations=True")
    return len(acts) > 1 and sensitivity.has_activations and act_sensitivity is not False


def solve(
    sensitivity: Sensitivity,
    budget="4MB",
    *,
    bits: Iterable[int] = DEFAULT_BITS,
    act_bits: "int | None | Sequence[int | None]" = DEFAULT_ACT_BITS,
    trace_margin: float = DEFAULT_TRACE_MARGIN,
    keep: "dict[str, int] | None" = None,
    keep_first: int | None = None,
    keep_last: int | None = None,
    granularity: str = "layer",
    channel_group: int = 1,
    act_sensitivity: bool | None = None,
    latency=None,
    solver: str = DEFAULT_SOLVER,
    time_limit_s: float | None = None,
) -> Plan:
    """The widths of least total Omega meeting every budget (one budget or a list, strings or Budget).

    Omega uses each layer's trace plus `trace_margin` standard errors (0 = the plain HAWQ-V2 estimate).
    `act_bits`: one activation width, None (float inputs) or several to choose from; layers reading
    one input tensor take one activation width. `keep={"fc": 8}` pins weight widths; `keep_first` /
    `keep_last` pin the first / last quantizable layer in execution order. `latency`: a device name, a
    device .toml, a latency table .csv or mpq.latency_model(...): gives latency_s costs (needed by a
    latency budget) and limits the choices to the widths it has latencies for.
    `granularity="channel"`: one weight width per group of `channel_group` consecutive output channels
    (mpq.channels; Omega from per-channel traces); the activation width stays one per layer and is
    chosen by cost only.
    With several activation widths, Omega of a (w, a) choice is Omega_w + Omega_act(a) when the
    sensitivity holds the inputs' (analyze(..., activations=True); `act_sensitivity=None` uses them
    when present, False ignores them, True requires them); else activation widths go by cost only.
    `solver`: "cbc" or "highs"; `time_limit_s` stops it early with the best plan found (plan.solver
    records whether optimality was proven and the relative gap).
    Raises BudgetInfeasible, naming the smallest budget that can be met, when none fits.
    """
    check_granularity(granularity, channel_group, sensitivity.metric)
    acts = act_widths(act_bits)
    by_sensitivity = granularity == "layer" and _act_widths_by_sensitivity(sensitivity, acts, act_sensitivity)
    budgets = as_budgets(budget)
    bits = tuple(sorted(set(bits)))
    if not bits:
        raise MpqError("give at least one candidate weight width, e.g. bits=(4, 8)")
    layers = [s.layer for s in sensitivity.layers.values()]
    pins = resolve_keep([layer.name for layer in layers], keep, keep_first, keep_last)
    latency = latency_model(latency)
    channel_settings, latency_settings = {}, {}
    if granularity == "channel":
        if latency is not None:
            raise MpqError("latency budgets and tables work with one width per layer only: drop --granularity channel or the latency model")
        omega = channel_omega(sensitivity, trace_margin)
        channel_problem = build_channel_problem(layers, sensitivity.float_bytes, budgets, bits, acts, omega, channel_group, pins, sensitivity.act_tie_groups)
        solution, reduction = solve_presolved(channel_problem.problem, time_limit_s, solver)
        layers = layer_plans(channel_problem, solution)
        channel_settings = {
            "width_granularity": "channel",
            "channel_group": channel_group,
            "binary_variables": channel_problem.binary_variables,
            "dominated_choices_dropped": channel_problem.dropped_choices,
            "binary_variables_after_presolve": binary_variables(reduction.problem) if reduction else channel_problem.binary_variables,
        }
    else:

        def omega(name: str, c: Choice) -> float:
            s = sensitivity.layers[name]
            return s.omega(c.weight_bits, trace_margin) + (s.act_omega(c.act_bits, trace_margin) if by_sensitivity else 0.0)

        problem = build_problem(layers, sensitivity.float_bytes, budgets, bits, acts, omega, pins, sensitivity.act_tie_groups, latency)
        solution = solve_problem(problem, time_limit_s, solver)
        if latency is not None:
            latency_settings = {"latency": _latency_settings(layers, candidate_choices(layers, bits, acts, pins), latency)}
        layers = {n: LayerPlan(weight_bits=c.weight_bits, act_bits=c.act_bits) for n, c in solution.choices.items()}
    return Plan(
        layers=layers,
        model={
            "fingerprint": sensitivity.model_fingerprint,
            "layers": len(layers),
            "params": sum(s.layer.params for s in sensitivity.layers.values()),
        },
        budgets=budgets,
        predicted={
            "size_bytes": int(solution.costs["size_bytes"]),
            "bops": solution.costs["bops"],
            "omega": solution.objective,
            **({"latency_s": solution.costs["latency_s"]} if latency is not None else {}),
        },
        settings={
            "bits": list(bits),
            "act_bits": acts[0] if len(acts) == 1 else list(acts),
            **(
                {"act_bits_choice": ACT_SENSITIVITY_NOTE if by_sensitivity else ACT_CHOICE_NOTE, "act_sensitivity": by_sensitivity, "act_tie_groups": [list(g) for g in sensitivity.act_tie_groups]}
                if len(acts) > 1
                else {}
            ),
            "metric": sensitivity.metric,
            **channel_settings,
            "keep": pins,
            "trace_margin": trace_margin,
            "loss": sensitivity.loss,
            "probes": sensitivity.settings.max_probes,
            "tol": sensitivity.settings.tol,
            "seed": sensitivity.settings.seed,
            **latency_settings,
            "quantizer": sensitivity.quantizer.to_json(),
        },
        solver=solution.solver_json(),
    )


def _latency_settings(layers: list[LayerInfo], choices: dict[str, list[Choice]], latency) -> dict:
    """What a plan records of its latency model: where it came from, the batch, and the choices it lacked."""
    note = coverage_note(layers, choices, latency)
    return latency.to_json() | ({"note": note} if note else {})


def _plans_embeddings(model, plan: Plan) -> bool:
    """Whether `plan` quantizes an nn.Embedding of `model` (then embeddings are layers when verifying)."""
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    return any(isinstance(modules.get(name), nn.Embedding) for name in plan.layers)


def verify(
    model, plan: Plan, data, *, baseline_bits: Iterable[int] = DEFAULT_BITS, batch_size: int = 25, cache_dir=None, latency=None,
    quantizer: "str | Quantizer | None" = None, progress: bool | None = None,
) -> Report:
    """Apply `plan` with fake quantization and measure it, FP32, uniform W8 and fitting uniform widths.
    `progress`: a bar over the models measured on stderr (None: only when stderr is a terminal).

    All are quantized with the plan's quantizer (plan.settings["quantizer"]; the default for plans
    without one), or with `quantizer` (a preset name or mpq.Quantizer) when given.
    Latencies are predicted (never measured here) by `latency` (as in `solve`), or by the latency model the
    plan was solved with when it can still be loaded; latency budgets are checked against them.

    Raises MpqError when the plan was made for another model (fingerprint or layer names differ).
    The report holds top-1 (with labels), agreement and KL with FP32, and the mean cosine similarity
    of outputs to FP32 (the fidelity measure for embeddings and other non-classifier outputs).
    """
    if not isinstance(plan, Plan):
        raise MpqError(f"plan must be an mpq.Plan (mpq.Plan.load(path) reads one), not {type(plan).__name__}")
    for lp in plan.layers.values():
        check_bits(lp.weight_bits)
        for run in lp.channel_bits or ():
            check_bits(run.weight_bits)
        if lp.act_bits is not None:
            check_bits(lp.act_bits)
    data = as_dataset(data)
    prepared = as_prepared(model, data, _plans_embeddings(model, plan))
    act_bits = max((lp.act_bits for lp in plan.layers.values() if lp.act_bits), default=None if plan.layers else DEFAULT_ACT_BITS)
    latency, latency_note = _verify_latency(plan, latency)
    chosen = None if quantizer is None else resolve_quantizer(quantizer)
    report = verify_prepared(prepared, plan, data, tuple(baseline_bits), act_bits, batch_size, open_cache(cache_dir), latency, chosen, progress)
    report.notes += [latency_note] if latency_note else []
    if prepared.graph.uncalled:
        report.notes.append(
            f"left in float (never called as modules, e.g. nn.MultiheadAttention projections): {', '.join(prepared.graph.uncalled)}"
        )
    return report


def _verify_latency(plan: Plan, latency) -> tuple:
    """The latency model to predict with, and a note when the plan's own can no longer be loaded."""
    if latency is not None:
        return latency_model(latency), None
    try:
        return latency_from_settings(plan.settings), None
    except MpqError as exc:
        return None, f"latency not predicted: the plan's latency model cannot be loaded ({exc})"



