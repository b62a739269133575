"""The Python API: analyze -> solve -> verify, and search, which does all three.

    import mpq
    sens = mpq.analyze(model, data)                       # Hessian traces and quantization errors
    plan = mpq.solve(sens, budget="4MB", bits=(4, 6, 8))  # the least-Omega widths within budget
    report = mpq.verify(model, plan, data)                # measured against FP32 and uniform widths
    result = mpq.search(model, data, budget="4MB")       # all three

`model` is any torch.nn.Module (never changed in place); `data` an mpq.Dataset, a tensor of inputs,
or an (x, y) tuple. Integer inputs (token ids) are passed to the model unchanged. Budgets are strings
("4MB", "20GBOPs") or mpq.Budget objects, one or a list (all must hold). Bad input raises
mpq.MpqError with a message that says what to do; unreachable budgets raise mpq.BudgetInfeasible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from mpq.budget import Budget, parse_budget
from mpq.cache import Cache, default_cache_dir
from mpq.cost import Choice, layer_costs
from mpq.data import Dataset
from mpq.errors import MpqError
from mpq.graph import LayerInfo, PreparedModel, module_calls_visible, prepare_model
from mpq.losses import resolve_loss
from mpq.pins import resolve_keep
from mpq.plan import LayerPlan, Plan
from mpq.quant import MAX_BITS, MIN_BITS, check_bits
from mpq.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity, analyze_prepared
from mpq.sensitivity.hessian import ProbeSettings
from mpq.solver import Problem, check_feasible, solve_problem
from mpq.verify import Report, verify_prepared

DEFAULT_BITS = (4, 5, 6, 7, 8)
DEFAULT_ACT_BITS = 8
DEFAULT_TRACE_MARGIN = 2.0
EXAMPLE_BATCH = 2
ACT_CHOICE_NOTE = "activation widths are chosen by cost only (Omega is the weight sensitivity)"


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

    `quantizer`: a preset name ("default", "minmax", "percentile", "mse", "aciq") or an mpq.Quantizer;
    the quantization errors are those of its weights, and plans solved from this sensitivity record it,
    so that they are verified and exported with it (None: the default).
    """
    if not 0 < tol < 1:
        raise MpqError(f"tol={tol} must lie between 0 and 1 (e.g. 0.05 for 5%)")
    if max_probes < 2 or min_probes < 2:
        raise MpqError("max_probes and min_probes must be at least 2 (a standard error needs two probes)")
    if batch_size < 1:
        raise MpqError(f"batch_size={batch_size} must be at least 1")
    data = _as_dataset(data)
    resolved = resolve_loss(loss, data.y is not None)
    prepared = _as_prepared(model, data, quantize_embeddings)
    settings = ProbeSettings(tol=tol, min_probes=min(min_probes, max_probes), max_probes=max_probes, max_seconds=max_seconds, batch_size=batch_size, seed=seed)
    return analyze_prepared(prepared, data, settings, _cache(cache_dir), progress, resolved, resolve_quantizer(quantizer))


def act_widths(act_bits: "int | None | Sequence[int | None]") -> tuple[int | None, ...]:
    """Candidate activation widths from an int, None (float inputs) or a sequence of them."""
    items = [act_bits] if act_bits is None or isinstance(act_bits, int) else list(act_bits)
    if not items:
        raise MpqError("give at least one activation width, e.g. act_bits=8, act_bits=(4, 8) or act_bits=None")
    if any(a is not None and (not isinstance(a, int) or not MIN_BITS <= a <= MAX_BITS) for a in items):
        raise MpqError(f"activation widths {items} must be whole numbers from {MIN_BITS} to {MAX_BITS}, or None for float inputs")
    return tuple(sorted(set(items), key=lambda a: a or 0))


def build_problem(
    layers: list[LayerInfo],
    float_bytes: int,
    budgets: list[Budget],
    bits: Iterable[int],
    act_bits: "int | None | Sequence[int | None]",
    omega: Callable[[str, Choice], float],
    keep: "dict[str, int] | None" = None,
    act_tie_groups: "list[list[str]] | None" = None,
) -> Problem:
    """Every (weight width, activation width) pair for every layer; a kept layer gets its kept width;
    an embedding (quantized on request) has no activation quantizer."""
    keep = keep or {}
    acts = act_widths(act_bits)
    pairs = lambda widths, acts: [Choice(check_bits(w), a) for w in sorted(set(widths)) for a in acts]  # noqa: E731
    choices = {  # an embedding's input is integer ids: never an input quantizer
        layer.name: pairs([keep[layer.name]] if layer.name in keep else bits, (None,) if layer.kind == "embedding" else acts)
        for layer in layers
    }
    return Problem(
        layers=[layer.name for layer in layers],
        choices=choices,
        omega={layer.name: {c: omega(layer.name, c) for c in choices[layer.name]} for layer in layers},
        costs={layer.name: {c: layer_costs(layer, c) for c in choices[layer.name]} for layer in layers},
        fixed_costs={"size_bytes": float(float_bytes), "bops": 0.0},
        budgets=budgets,
        act_tie_groups=[list(g) for g in act_tie_groups or []] if len(acts) > 1 else [],
        keep=dict(keep),
    )


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
) -> Plan:
    """The widths of least total Omega meeting every budget (one budget or a list, strings or Budget).

    Omega uses each layer's trace plus `trace_margin` standard errors (0 = the plain HAWQ-V2 estimate).
    `act_bits`: one activation width, None (float inputs) or several to choose from; layers reading
    one input tensor take one activation width. `keep={"fc": 8}` pins weight widths; `keep_first` /
    `keep_last` pin the first / last quantizable layer in execution order.
    Raises BudgetInfeasible, naming the smallest budget that can be met, when none fits.
    """
    acts = act_widths(act_bits)
    budgets = _as_budgets(budget)
    bits = tuple(sorted(set(bits)))
    if not bits:
        raise MpqError("give at least one candidate weight width, e.g. bits=(4, 8)")
    layers = [s.layer for s in sensitivity.layers.values()]
    pins = resolve_keep([layer.name for layer in layers], keep, keep_first, keep_last)
    omega = lambda name, c: sensitivity.layers[name].omega(c.weight_bits, trace_margin)  # noqa: E731
    problem = build_problem(layers, sensitivity.float_bytes, budgets, bits, acts, omega, pins, sensitivity.act_tie_groups)
    solution = solve_problem(problem)
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
        },
        settings={
            "bits": list(bits),
            "act_bits": acts[0] if len(acts) == 1 else list(acts),
            **({"act_bits_choice": ACT_CHOICE_NOTE, "act_tie_groups": problem.act_tie_groups} if len(acts) > 1 else {}),
            "keep": pins,
            "trace_margin": trace_margin,
            "loss": sensitivity.loss,
            "probes": sensitivity.settings.max_probes,
            "tol": sensitivity.settings.tol,
            "seed": sensitivity.settings.seed,
            "quantizer": sensitivity.quantizer.to_json(),
        },
    )


def _plans_embeddings(model, plan: Plan) -> bool:
    """Whether `plan` quantizes an nn.Embedding of `model` (then embeddings are layers when verifying)."""
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    return any(isinstance(modules.get(name), nn.Embedding) for name in plan.layers)


def verify(
    model, plan: Plan, data, *, baseline_bits: Iterable[int] = DEFAULT_BITS, batch_size: int = 25, cache_dir=None, quantizer: "str | Quantizer | None" = None
) -> Report:
    """Apply `plan` with fake quantization and measure it, FP32, uniform W8 and fitting uniform widths.

    All are quantized with the plan's quantizer (plan.settings["quantizer"]; the default for plans
    without one), or with `quantizer` (a preset name or mpq.Quantizer) when given.

    Raises MpqError when the plan was made for another model (fingerprint or layer names differ).
    The report holds top-1 (with labels), agreement and KL with FP32, and the mean cosine similarity
    of outputs to FP32 (the fidelity measure for embeddings and other non-classifier outputs).
    """
    if not isinstance(plan, Plan):
        raise MpqError(f"plan must be an mpq.Plan (mpq.Plan.load(path) reads one), not {type(plan).__name__}")
    for lp in plan.layers.values():
        check_bits(lp.weight_bits)
        if lp.act_bits is not None:
            check_bits(lp.act_bits)
    data = _as_dataset(data)
    prepared = _as_prepared(model, data, _plans_embeddings(model, plan))
    act_bits = max((lp.act_bits for lp in plan.layers.values() if lp.act_bits), default=None if plan.layers else DEFAULT_ACT_BITS)
    chosen = None if quantizer is None else resolve_quantizer(quantizer)
    report = verify_prepared(prepared, plan, data, tuple(baseline_bits), act_bits, batch_size, _cache(cache_dir), chosen)
    if prepared.graph.uncalled:
        report.notes.append(
            f"left in float (never called as modules, e.g. nn.MultiheadAttention projections): {', '.join(prepared.graph.uncalled)}"
        )
    return report


@dataclass
class SearchResult:
    sensitivity: Sensitivity
    plan: Plan
    report: Report


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
    **analyze_options,
) -> SearchResult:
    """analyze, solve and verify in one call; `analyze_options` go to `analyze` (tol, max_probes, loss, seed ...).

    Fails before the Hessian work, with BudgetInfeasible, when a budget cannot be met at all.
    """
    start = time.perf_counter()
    data = _as_dataset(data)
    budgets = _as_budgets(budget)
    bits = tuple(bits)
    prepared = _as_prepared(model, data, quantize_embeddings)
    # fail before the Hessian work when no plan can meet a budget
    graph = prepared.graph
    pins = resolve_keep([layer.name for layer in graph.layers], keep, keep_first, keep_last)
    check_feasible(build_problem(graph.layers, graph.float_bytes, budgets, bits, act_bits, lambda n, c: 0.0, pins, graph.act_tie_groups))
    t0 = time.perf_counter()
    sensitivity = analyze(prepared, data, cache_dir=cache_dir, progress=progress, **analyze_options)
    t1 = time.perf_counter()
    plan = solve(sensitivity, budgets, bits=bits, act_bits=act_bits, trace_margin=trace_margin, keep=pins)
    t2 = time.perf_counter()
    report = verify(prepared, plan, data, baseline_bits=bits, batch_size=eval_batch_size, cache_dir=cache_dir)
    report.timings_s = {
        "prepare": t0 - start,
        "sensitivity": t1 - t0,
        "solve": t2 - t1,
        "verify": time.perf_counter() - t2,
        "total": time.perf_counter() - start,
    }
    report.notes.append(f"sensitivity loss: {sensitivity.loss}" + (" (from cache)" if sensitivity.from_cache else ""))
    return SearchResult(sensitivity=sensitivity, plan=plan, report=report)
