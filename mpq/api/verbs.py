"""The Python API: analyze -> solve -> verify, and search, which does all three.

    import mpq
    sens = mpq.analyze(model, data)                       # Hessian traces and quantization errors
    plan = mpq.solve(sens, budget="4MB", space=mpq.SearchSpace(bits=(4, 6, 8)))  # least Omega within budget
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

from typing import Iterable

from mpq.api.options import SOLVE_KEYWORDS, check_known, field_names, probe_settings, search_space, solver_settings
from mpq.api.stages import AnalyzeOptions, Run, analyze_inputs, solve_sensitivity, verify_inputs
from mpq.cache import open_cache
from mpq.cost.budget import as_budgets
from mpq.cost.latency import latency_model
from mpq.errors import MpqError
from mpq.inputs.prepare import names_embeddings, prepare_inputs, with_held_out
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.keywords import checks_keywords
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of
from mpq.sensitivity.settings import ProbeSettings
from mpq.verify.measure import VerifyOptions, check_quantizable, plan_act_bits
from mpq.verify.report import Report


@checks_keywords("cache_dir", "progress", "activations", "quantize_embeddings", "metric")
def analyze(  # noqa: PLR0913 - the public API's keywords (DESIGN.md)
    model,
    data,
    *,
    probes: ProbeSettings | None = None,
    metric: str | None = None,
    quantizer: "str | Quantizer | None" = None,
    loss=None,
    activations: bool = False,
    quantize_embeddings: bool = False,
    cache_dir=None,
    progress: bool | None = None,
    device=None,
    **legacy,
) -> Sensitivity:
    """Per-layer (and per-channel) sensitivities with standard errors, and quantization errors.

    `probes`: an mpq.ProbeSettings (tolerance, probe counts, time cap, batch size, seed, HVP method,
    chunking, per-layer or all-layer probing); probing stops when every layer's standard error is below
    tol x its trace, or at max_probes or max_seconds. The flat keywords of mpq 0.1.0 (tol=, max_probes=,
    ...) still work, with a DeprecationWarning. Results are cached under `cache_dir` (None: the default
    folder; False: no cache); an interrupted run resumes from the probes it finished.

    `loss`: "labels" (cross-entropy with y; the default when the data has labels), "fp32"
    (cross-entropy against the FP32 predictions; the default without), "mse" or "kl" to the FP32
    outputs (for models that are not classifiers), "module:callable", or a function
    loss(output, target) where target is y when given, else the FP32 outputs.

    `quantize_embeddings`: nn.Embedding tables become layers too (weights per row, no input quantizer).

    `metric`: one of mpq.sensitivity.metrics.METRICS, each a class with its formula (hessian: Hutchinson
    traces, the default; fisher; eigenvalue; output_mse; output_kl; kl_quadratic).
    `activations`: also each layer's input (the curvature with respect to it under the same metric, and
    the quantization error of the verifier's activation quantizer), so that `solve` chooses activation
    widths by sensitivity. Under torch.distributed (torchrun), the probes are split across the ranks.
    `quantizer`: a preset name ("default", "minmax", "percentile", "mse", "aciq") or an mpq.Quantizer;
    the quantization errors are those of its weights, and plans solved from this sensitivity record it,
    so that they are verified and exported with it (None: the default).
    `progress`: None shows progress when stderr is a terminal; True always; False never.
    `device`: where every stage runs: "cpu", "cuda", "cuda:N", "auto" (cuda when a GPU is visible) or a
    torch.device; None: where the model's parameters are. The model is not moved: a copy is.
    """
    check_known("analyze", legacy, field_names(ProbeSettings))
    settings = probe_settings("analyze", probes, legacy)
    if metric is not None:
        metric_of(metric)
    inputs = prepare_inputs(model, data, quantize_embeddings, device)
    options = AnalyzeOptions(settings, resolve_quantizer(quantizer), metric, loss, activations)
    return analyze_inputs(inputs, options, Run(open_cache(cache_dir), progress))


def solve(
    sensitivity: Sensitivity,
    budget="4MB",
    *,
    space: SearchSpace | None = None,
    solver: "SolverSettings | str | None" = None,
    latency=None,
    **legacy,
) -> Plan:
    """The widths of least total Omega meeting every budget (one budget or a list, strings or Budget).

    `space`: an mpq.SearchSpace, the widths to choose from (see its docstring: candidate weight and
    activation widths, per-layer or per-channel widths, pins, the trace margin). `solver`: an
    mpq.SolverSettings ("highs" or "cbc", and a time limit that stops it early with the best plan found;
    plan.solver records whether optimality was proven and the relative gap). The flat keywords of mpq
    0.1.0 (bits=, act_bits=, keep=, time_limit_s=, ...) still work, with a DeprecationWarning.
    `latency`: a device name, a device .toml, a latency table .csv or mpq.latency_model(...): gives
    latency_s costs (needed by a latency budget) and limits the choices to the widths it has latencies for.
    With several activation widths, Omega of a (w, a) choice is Omega_w + Omega_act(a) when the
    sensitivity holds the inputs' (analyze(..., activations=True)); else activation widths go by cost only.
    Raises BudgetInfeasible, naming the smallest budget that can be met, when none fits.
    """
    if not isinstance(sensitivity, Sensitivity):
        raise MpqError(
            f"mpq.solve() takes the result of mpq.analyze(model, data) first, not {type(sensitivity).__name__}"
        )
    check_known("solve", legacy, SOLVE_KEYWORDS)
    space = search_space("solve", space, legacy)
    solver = solver_settings("solve", solver, legacy)
    return solve_sensitivity(sensitivity, as_budgets(budget), space, solver, latency_model(latency))


@checks_keywords("baseline_bits", "batch_size", "cache_dir", "progress", "eval_split")
def verify(  # noqa: PLR0913 - the public API's keywords (DESIGN.md)
    model,
    plan: Plan,
    data,
    *,
    baseline_bits: Iterable[int] | None = None,
    batch_size: int = 25,
    cache_dir=None,
    latency=None,
    quantizer: "str | Quantizer | None" = None,
    progress: bool | None = None,
    eval_data=None,
    eval_split: float = EVAL_SPLIT,
    device=None,
) -> Report:
    """Apply `plan` with fake quantization and measure it, FP32, uniform W8 and fitting uniform widths.
    `progress`: a bar over the models measured on stderr (None: only when stderr is a terminal).

    All are quantized with the plan's quantizer (plan.quantizer; the default for plans without settings),
    or with `quantizer` (a preset name or mpq.Quantizer) when given. The uniform baselines are the plan's
    candidate widths (plan.settings.space.bits), or `baseline_bits`.
    Latencies are predicted (never measured here) by `latency` (as in `solve`), or by the latency model the
    plan was solved with when it can still be loaded; latency budgets are checked against them.

    `eval_data`: the data measured on (the quantizer is fitted on `data`); without it a seeded `eval_split` of
    `data` is held out, whole groups at a time (mpq.inputs.split.held_out_split; 0: measured in-sample).
    Raises MpqError when the plan was made for another model (fingerprint or layer names differ).
    The report holds top-1 (with labels), agreement and KL with FP32, and the mean cosine similarity
    of outputs to FP32 (the fidelity measure for embeddings and other non-classifier outputs).
    `device`: where every stage runs: "cpu", "cuda", "cuda:N", "auto" (cuda when a GPU is visible) or a
    torch.device; None: where the model's parameters are. The model is not moved: a copy is.
    """
    check_quantizable(plan)
    inputs = prepare_inputs(model, data, names_embeddings(model, plan.layers), device)
    if baseline_bits is None:
        searched = plan.settings is not None and plan.settings.source == "search"
        baseline_bits = plan.settings.space.bits if searched else SearchSpace().bits
    latency, latency_note = _verify_latency(plan, latency)
    chosen = None if quantizer is None else resolve_quantizer(quantizer)
    inputs = with_held_out(inputs, eval_data, eval_split)
    options = VerifyOptions(tuple(baseline_bits), plan_act_bits(plan), batch_size, latency, chosen)
    return verify_inputs(inputs, plan, options, Run(open_cache(cache_dir), progress), latency_note)


def _verify_latency(plan: Plan, latency) -> tuple:
    """The latency model to predict with, and a note when the plan's own can no longer be loaded."""
    if latency is not None:
        return latency_model(latency), None
    source = plan.settings.latency if plan.settings is not None else None
    try:
        return (None if source is None else latency_model(source.spec, source.batch)), None
    except MpqError as exc:
        return None, f"latency not predicted: the plan's latency model cannot be loaded ({exc})"
