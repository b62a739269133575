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

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from mpq.budget import Budget, parse_budget
from mpq.cache import Cache, default_cache_dir
from mpq.channels import build_channel_problem, channel_omega, check_granularity, layer_plans
from mpq.cost import Choice, layer_costs
from mpq.data import Dataset
from mpq.errors import BudgetInfeasible, MpqError
from mpq.graph import LayerInfo, PreparedModel, module_calls_visible, prepare_model
from mpq.latency import coverage_note, covered_choices, latency_from_settings, latency_model
from mpq.losses import resolve_loss
from mpq.milp import DEFAULT_SOLVER, solver_note
from mpq.pins import resolve_keep
from mpq.plan import LayerPlan, Plan
from mpq.quant import MAX_BITS, MIN_BITS, check_bits
from mpq.proxy import check_proxy_request, proxy_check
from mpq.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity, analyze_prepared
from mpq.sensitivity.hessian import ProbeSettings
from mpq.presolve import binary_variables, solve_presolved
from mpq.sensitivity.metrics import check_metric
from mpq.solver import Problem, check_feasible, solve_problem
from mpq.verify import Report, verify_prepared

DEFAULT_BITS = (4, 5, 6, 7, 8)
DEFAULT_ACT_BITS = 8
DEFAULT_TRACE_MARGIN = 2.0
EXAMPLE_BATCH = 2
ACT_CHOICE_NOTE = "activation widths are chosen by cost only (Omega is the weight sensitivity)"
ACT_SENSITIVITY_NOTE = "activation widths are chosen by sensitivity (Omega adds each input's T/m * E||Q_a(x) - x||^2)"


def _as_dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        return Dataset(x=data)
    if isinstance(data, tuple) and len(data) == 2:
        return Dataset(x=data[0], y=data[1])
    raise MpqError(f"data must be an mpq.Dataset, a tensor of inputs, or an (x, y) tuple, not {type(data).__name__}")


def _check_finite_weights(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise MpqError(f"model tensor {name} contains NaN or Inf: load trained weights (or fix training) before quantizing")


def _check_output(model: nn.Module, example: torch.Tensor) -> None:
    with torch.no_grad(), module_calls_visible():
        output = model(example)
    if not isinstance(output, torch.Tensor) or output.dim() < 2:
        what = type(output).__name__ if not isinstance(output, torch.Tensor) else f"a tensor of shape {tuple(output.shape)}"
        raise MpqError(f"the model returns {what}: wrap it so that it returns one tensor shaped [batch, outputs...] (logits or embeddings)")
    if output.is_floating_point() and not torch.isfinite(output).all():
        raise MpqError("the model's outputs on the data contain NaN or Inf: check the data's scale and the model's weights")


def _as_prepared(model, data: Dataset, embeddings: bool = False) -> PreparedModel:
    if isinstance(model, PreparedModel):
        return model
    if not isinstance(model, nn.Module):
        raise MpqError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    _check_finite_weights(model)
    example = data.x[:EXAMPLE_BATCH]
    try:
        prepared = prepare_model(model, example, embeddings)  # works on an eval-mode copy
        _check_output(prepared.folded, example)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "export it with a dynamic batch dimension (dynamic_shapes) or " if "Guard failed" in first else ""
        raise MpqError(
            f"the model cannot run on the data (inputs of shape {tuple(data.x.shape[1:])}, dtype {data.x.dtype}): {first}; "
            f"{hint}give data shaped and typed as the model expects"
        ) from None
    if not prepared.graph.layers:
        raise MpqError("the model has no Conv1d, Conv2d or Linear layer called as a module, so there is nothing to quantize")
    return prepared


def _as_budgets(budget) -> list[Budget]:
    items = [budget] if isinstance(budget, (str, Budget)) else list(budget)
    if not items:
        raise MpqError("give at least one budget, e.g. budget=\"4MB\"")
    return [parse_budget(b) for b in items]


def _cache(cache_dir) -> Cache:
    if cache_dir is False:
        return Cache(None)
    return Cache(default_cache_dir() if cache_dir is None else Path(cache_dir))


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
    progress: bool = True,
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
    """
    check_metric(metric)
    if not 0 < tol < 1:
        raise MpqError(f"tol={tol} must lie between 0 and 1 (e.g. 0.05 for 5%)")
    if max_probes < 2 or min_probes < 2:
        raise MpqError("max_probes and min_probes must be at least 2 (a standard error needs two probes)")
    if batch_size < 1:
        raise MpqError(f"batch_size={batch_size} must be at least 1")
    data = _as_dataset(data)
    resolved = resolve_loss(loss, data.y is not None)
    prepared = _as_prepared(model, data, quantize_embeddings)
    settings = ProbeSettings(tol=tol, min_probes=min(min_probes, max_probes), max_probes=max_probes, max_seconds=max_seconds, batch_size=batch_size, seed=seed,
                             hvp=hvp, chunk_size=chunk_size, probing=probing)
    return analyze_prepared(prepared, data, settings, _cache(cache_dir), progress, resolved, metric, activations, resolve_quantizer(quantizer))


def act_widths(act_bits: "int | None | Sequence[int | None]") -> tuple[int | None, ...]:
    """Candidate activation widths from an int, None (float inputs) or a sequence of them."""
    items = [act_bits] if act_bits is None or isinstance(act_bits, int) else list(act_bits)
    if not items:
        raise MpqError("give at least one activation width, e.g. act_bits=8, act_bits=(4, 8) or act_bits=None")
    if any(a is not None and (not isinstance(a, int) or not MIN_BITS <= a <= MAX_BITS) for a in items):
        raise MpqError(f"activation widths {items} must be whole numbers from {MIN_BITS} to {MAX_BITS}, or None for float inputs")
    return tuple(sorted(set(items), key=lambda a: a or 0))


LATENCY_HOW = "give latency= a device name (e.g. 'nvidia-t4'), a device .toml or a latency table .csv from `mpq profile`"


def check_latency_budgets(budgets: list[Budget], latency, how: str = LATENCY_HOW) -> None:
    """MpqError when a latency budget comes without a latency model; `how` says how to give one."""
    latency_budget = next((b for b in budgets if b.kind == "latency_s"), None)
    if latency_budget is not None and latency is None:
        raise MpqError(f"budget {latency_budget.text} is a latency: {how}")


def candidate_choices(layers: list[LayerInfo], bits: Iterable[int], acts: tuple[int | None, ...], keep: dict[str, int]) -> dict[str, list[Choice]]:
    """Every (weight width, activation width) pair per layer; a kept layer gets its kept width;
    an embedding's input is integer ids: never an input quantizer."""
    pairs = lambda widths, acts: [Choice(check_bits(w), a) for w in sorted(set(widths)) for a in acts]  # noqa: E731
    return {
        layer.name: pairs([keep[layer.name]] if layer.name in keep else bits, (None,) if layer.kind == "embedding" else acts)
        for layer in layers
    }


def build_problem(
    layers: list[LayerInfo],
    float_bytes: int,
    budgets: list[Budget],
    bits: Iterable[int],
    act_bits: "int | None | Sequence[int | None]",
    omega: Callable[[str, Choice], float],
    keep: "dict[str, int] | None" = None,
    act_tie_groups: "list[list[str]] | None" = None,
    latency=None,
) -> Problem:
    """Every (weight width, activation width) pair for every layer; a kept layer gets its kept width;
    an embedding (quantized on request) has no activation quantizer. With a latency model (mpq.latency),
    only the pairs it has a latency for, and latency_s costs."""
    keep = keep or {}
    check_latency_budgets(budgets, latency)
    acts = act_widths(act_bits)
    choices = candidate_choices(layers, bits, acts, keep)
    if latency is not None:
        choices = covered_choices(layers, choices, latency)
    return Problem(
        layers=[layer.name for layer in layers],
        choices=choices,
        omega={layer.name: {c: omega(layer.name, c) for c in choices[layer.name]} for layer in layers},
        costs={layer.name: {c: layer_costs(layer, c, latency) for c in choices[layer.name]} for layer in layers},
        fixed_costs={"size_bytes": float(float_bytes), "bops": 0.0} | ({"latency_s": 0.0} if latency is not None else {}),
        budgets=budgets,
        act_tie_groups=[list(g) for g in act_tie_groups or []] if len(acts) > 1 else [],
        keep=dict(keep),
    )


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
    budgets = _as_budgets(budget)
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
    quantizer: "str | Quantizer | None" = None,
) -> Report:
    """Apply `plan` with fake quantization and measure it, FP32, uniform W8 and fitting uniform widths.

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
    data = _as_dataset(data)
    prepared = _as_prepared(model, data, _plans_embeddings(model, plan))
    act_bits = max((lp.act_bits for lp in plan.layers.values() if lp.act_bits), default=None if plan.layers else DEFAULT_ACT_BITS)
    latency, latency_note = _verify_latency(plan, latency)
    chosen = None if quantizer is None else resolve_quantizer(quantizer)
    report = verify_prepared(prepared, plan, data, tuple(baseline_bits), act_bits, batch_size, _cache(cache_dir), latency, chosen)
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


@dataclass
class SearchResult:
    sensitivity: Sensitivity
    plan: Plan
    report: Report


def leave_room_for_the_container(prepared: PreparedModel, data: Dataset, budgets: list[Budget], solve_within) -> Plan:
    """The plan `solve_within(budgets)` gives, solved again with the size budget lowered by the packed file's
    header (mpq.export.packed_file) until tensors and header together fit it: the file `mpq export` writes
    then fits the budget. plan.budgets stay the user's; settings["container_reserve_bytes"] says what was kept."""
    plan = solve_within(budgets)
    sizes = [b for b in budgets if b.kind == "size_bytes"]
    if not sizes:
        return plan
    limit, reserve = min(b.limit for b in sizes), 0
    for _ in range(4):
        over = plan.predicted["size_bytes"] + _container_bytes(prepared, data, plan) - limit
        if over <= 0:
            break
        try:
            tighter = solve_within([replace(b, limit=b.limit - reserve - int(over)) if b.kind == "size_bytes" else b for b in budgets])
        except BudgetInfeasible:  # no plan leaves room for the header: keep this one (mpq export says by how much it is over)
            break
        plan, reserve = tighter, reserve + int(over)
    return replace(plan, budgets=list(budgets), settings={**plan.settings, "container_reserve_bytes": reserve})


def _container_bytes(prepared: PreparedModel, data: Dataset, plan: Plan) -> int:
    """The packed file's header for this plan: its tensors' names and shapes do not depend on the data's values."""
    from mpq.export.packed import pack_model
    from mpq.export.packed_file import container_bytes
    from mpq.quant import ActQuantParams

    acts = {n: ActQuantParams(1.0, 0, lp.act_bits) for n, lp in plan.layers.items() if lp.act_bits}
    return container_bytes(pack_model(prepared.folded, plan, acts), prepared.fingerprint, tuple(data.x.shape[1:]))


def search(
    model,
    data,
    budget="4MB",
    *,
    bits: Iterable[int] = DEFAULT_BITS,
    act_bits: "int | None | Sequence[int | None]" = DEFAULT_ACT_BITS,
    trace_margin: float = DEFAULT_TRACE_MARGIN,
    keep: "dict[str, int] | None" = None,
    keep_first: int | None = None,
    keep_last: int | None = None,
    cache_dir=None,
    progress: bool = True,
    eval_batch_size: int = 25,
    quantize_embeddings: bool = False,
    granularity: str = "layer",
    channel_group: int = 1,
    act_sensitivity: bool | None = None,
    latency=None,
    solver: str = DEFAULT_SOLVER,
    time_limit_s: float | None = None,
    proxy_plans: int = 0,
    **analyze_options,
) -> SearchResult:
    """analyze, solve and verify in one call; `analyze_options` go to `analyze` (tol, max_probes, loss, seed, metric ...).
    `granularity`, `channel_group` and `latency` as in `solve`. `proxy_plans` > 0 also measures that many random
    plans at the same size budget and rank-correlates their Omega with their KL (mpq.proxy; report.proxy).

    With several activation widths, the inputs' sensitivity is analyzed and chooses them, unless
    `act_sensitivity=False` (then they go by cost only, the widest the budgets allow).

    Fails before the Hessian work, with BudgetInfeasible, when a budget cannot be met at all.
    """
    start = time.perf_counter()
    check_granularity(granularity, channel_group, analyze_options.get("metric", "hessian"))
    data = _as_dataset(data)
    budgets = _as_budgets(budget)
    bits = tuple(bits)
    latency = latency_model(latency)
    check_latency_budgets(budgets, latency)
    prepared = _as_prepared(model, data, quantize_embeddings)
    # fail before the Hessian work when no plan can meet a budget
    graph = prepared.graph
    pins = resolve_keep([layer.name for layer in graph.layers], keep, keep_first, keep_last)
    if granularity == "channel":
        zero = lambda group, b: 0.0  # noqa: E731
        problem = build_channel_problem(graph.layers, graph.float_bytes, budgets, bits, act_widths(act_bits), zero, channel_group, pins, graph.act_tie_groups).problem
    else:
        problem = build_problem(graph.layers, graph.float_bytes, budgets, bits, act_bits, lambda n, c: 0.0, pins, graph.act_tie_groups, latency)
    check_feasible(problem)
    if proxy_plans:
        check_proxy_request(proxy_plans, budgets, granularity)
    t0 = time.perf_counter()
    activations = len(act_widths(act_bits)) > 1 and act_sensitivity is not False
    sensitivity = analyze(prepared, data, cache_dir=cache_dir, progress=progress, activations=activations, **analyze_options)
    t1 = time.perf_counter()
    solve_within = lambda b: solve(sensitivity, b, bits=bits, act_bits=act_bits, trace_margin=trace_margin, keep=pins, granularity=granularity, channel_group=channel_group, act_sensitivity=act_sensitivity, latency=latency, solver=solver, time_limit_s=time_limit_s)  # noqa: E731
    plan = leave_room_for_the_container(prepared, data, budgets, solve_within)
    t2 = time.perf_counter()
    report = verify(prepared, plan, data, baseline_bits=bits, batch_size=eval_batch_size, cache_dir=cache_dir, latency=latency)
    t3 = time.perf_counter()
    if proxy_plans:
        report.proxy = proxy_check(prepared, sensitivity, plan, data, proxy_plans, batch_size=eval_batch_size, cache=_cache(cache_dir), progress=progress)
    report.timings_s = {
        "prepare": t0 - start,
        "sensitivity": t1 - t0,
        "solve": t2 - t1,
        "verify": t3 - t2,
        **({"proxy_check": time.perf_counter() - t3} if proxy_plans else {}),
        "total": time.perf_counter() - start,
    }
    report.notes.append(f"sensitivity loss: {sensitivity.loss}" + (" (from cache)" if sensitivity.from_cache else ""))
    report.notes.append(f"sensitivity metric: {sensitivity.metric}" + (" (weights and inputs)" if sensitivity.has_activations else ""))
    if plan.settings.get("latency", {}).get("note"):
        report.notes.append(plan.settings["latency"]["note"])
    report.notes.append(solver_note(plan.solver, t2 - t1))
    return SearchResult(sensitivity=sensitivity, plan=plan, report=report)
