"""mpq.search: analyze, solve and verify in one call, failing before the Hessian work when no plan can
meet a budget, and leaving room in a size budget for the packed file's header."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mpq.quant.formats import WeightFormat
from mpq.api.options import search_configs
from mpq.api.target import check_target_model, target_overhead, target_plan, target_search
from mpq.api.stages import AnalyzeOptions, Run, analyze_inputs, solve_sensitivity, verify_inputs
from mpq.cache import open_cache
from mpq.cost.budget import Budget, as_budgets
from mpq.cost.costs import CostKind
from mpq.cost.latency import latency_model
from mpq.errors import BudgetInfeasible
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel
from mpq.inputs.prepare import Inputs, as_dataset, prepare_inputs, with_held_out
from mpq.inputs.split import EVAL_SPLIT
from mpq.memory import PhasePeaks
from mpq.plan import Plan
from mpq.plan.keywords import checks_keywords
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.settings import ProbeSettings
from mpq.solver.allocate import check_reachable
from mpq.solver.build import Layers, check_latency_budgets
from mpq.solver.channels import check_channel_metric
from mpq.solver.milp import solver_note
from mpq.verify.measure import VerifyOptions, plan_act_bits
from mpq.verify.proxy import check_proxy_request, proxy_check
from mpq.verify.report import Report, process_peak_memory


@dataclass
class SearchResult:
    sensitivity: Sensitivity
    plan: Plan
    report: Report


def leave_room_for_the_container(
    prepared: PreparedModel, data: Dataset, budgets: list[Budget], solve_within, container=None
) -> Plan:
    """The plan `solve_within(budgets)` gives, solved again with the size budget lowered by the packed file's
    header (mpq.export.packed_file; `container(plan)`: another file's bytes beside the plan's predicted ones)
    until tensors and header together fit it: the file `mpq export` writes then fits the budget. plan.budgets
    stay the user's; settings.container_reserve_bytes says what was kept."""
    container = container or (lambda p: _container_bytes(prepared, data, p))
    plan = solve_within(budgets)
    sizes = [b for b in budgets if b.kind == CostKind.SIZE_BYTES]
    if not sizes:
        return plan
    limit, reserve = min(b.limit for b in sizes), 0
    for _ in range(4):
        over = plan.predicted.size_bytes + container(plan) - limit
        cut = reserve + int(over)
        if over <= 0 or limit - cut <= 0:  # fits, or no size budget is left to solve for
            break
        try:
            tighter = solve_within([replace(b, limit=b.limit - cut) if b in sizes else b for b in budgets])
        except BudgetInfeasible:  # no plan leaves room for the header: keep this one (mpq export says by how much)
            break
        plan, reserve = tighter, reserve + int(over)
    return replace(plan, budgets=list(budgets), settings=replace(plan.settings, container_reserve_bytes=reserve))


def _container_bytes(prepared: PreparedModel, data: Dataset, plan: Plan) -> int:
    """The packed file's header for this plan: its tensors' names and shapes do not depend on the data's values."""
    from mpq.export.packed_file import ModelInputs, container_bytes
    from mpq.quant.affine import ActQuantParams
    from mpq.verify.apply import pack_model

    acts = {n: ActQuantParams(1.0, 0, lp.act_bits) for n, lp in plan.layers.items() if lp.act_bits}
    return container_bytes(
        pack_model(prepared.folded, plan, acts, fmt=plan.weight_format),
        prepared.fingerprint,
        ModelInputs.of(prepared, data),
    )


SWEEP_KEYWORDS = ("eval_batch_size", "eval_split", "quantize_embeddings", "cache_dir", "progress", "metric")


@checks_keywords("proxy_plans", *SWEEP_KEYWORDS)
def search(  # noqa: PLR0913 - the public API's keywords (DESIGN.md)
    model,
    data,
    budget="4MB",
    *,
    space: SearchSpace | None = None,
    probes: ProbeSettings | None = None,
    solver: "SolverSettings | str | None" = None,
    metric: str | None = None,
    quantizer: "str | Quantizer | None" = None,
    loss=None,
    eval_data=None,
    eval_split: float = EVAL_SPLIT,
    latency=None,
    proxy_plans: int = 0,
    eval_batch_size: int = 25,
    quantize_embeddings: bool = False,
    cache_dir=None,
    progress: bool | None = None,
    device=None,
    target: str = "packed",
    gguf_metadata=None,
    **legacy,
) -> SearchResult:
    """analyze, solve and verify in one call: `probes`, `metric`, `quantizer`, `loss` as in `analyze`;
    `space`, `solver` and `latency` as in `solve` (the flat keywords of mpq 0.1.0 still work, with a
    DeprecationWarning). `eval_data`: the data the plan is measured on (sensitivity and calibration use `data`);
    without it, a seeded `eval_split` of `data` is held out for that (whole groups at a time:
    mpq.inputs.split.held_out_split; 0: in-sample). `proxy_plans` > 0 also measures that many random plans at the
    same size budget and rank-correlates their Omega with their KL (mpq.verify.proxy; report.proxy).

    With several activation widths, the inputs' sensitivity is analyzed and chooses them, unless
    `space.act_sensitivity` is False (then they go by cost only, the widest the budgets allow).

    Fails before the Hessian work, with BudgetInfeasible, when a budget cannot be met at all.
    `device`: where every stage runs: "cpu", "cuda", "cuda:N", "auto" (cuda when a GPU is visible) or a
    torch.device; None: where the model's parameters are. The model is not moved: a copy is.
    `target`: the file the budget counts (mpq.api.target): "packed" (mpq's own), "gguf" (llama.cpp's; its
    tokenizer metadata from the GGUF file `gguf_metadata` when given, else from the model folder's tokenizer) or
    "compressed-tensors" (a save_pretrained folder for transformers and vLLM).
    """
    space, probes, solver = search_configs("search", space, probes, solver, legacy)
    quantizer, space = target_search(target, resolve_quantizer(quantizer), space)
    start, peaks = time.perf_counter(), PhasePeaks()
    check_channel_metric(space, metric)
    data = as_dataset(data)
    budgets = as_budgets(budget)
    latency = latency_model(latency)
    check_latency_budgets(budgets, latency)
    inputs = with_held_out(prepare_inputs(model, data, quantize_embeddings, device), eval_data, eval_split)
    run = Run(open_cache(cache_dir), progress)
    metadata = str(gguf_metadata) if target == "gguf" and gguf_metadata is not None else None
    request = _Request(budgets, space, solver, latency, eval_batch_size, proxy_plans, run, peaks, target, metadata)
    request.check_reachable(inputs, quantizer.format)  # before the Hessian work
    t0 = time.perf_counter()
    peaks.close("prepare")
    options = AnalyzeOptions(probes, quantizer, metric, loss, request.activations)
    sensitivity = analyze_inputs(inputs, options, run)
    peaks.close("sensitivity")
    return _solved_and_verified(inputs, sensitivity, request, [start, t0, time.perf_counter()])


@dataclass(frozen=True)
class _Request:
    """What mpq.search solves and verifies with, checked."""

    budgets: list[Budget]
    space: SearchSpace
    solver: SolverSettings
    latency: object
    eval_batch_size: int
    proxy_plans: int
    run: Run
    peaks: PhasePeaks  # each phase's peak memory (mpq.memory)
    target: str = "packed"  # mpq.api.target
    gguf_metadata: str | None = None

    @property
    def activations(self) -> bool:
        """Whether the inputs' sensitivity is analyzed: with several activation widths to choose by it."""
        return self.space.several_act_widths and self.space.act_sensitivity is not False

    def check_reachable(self, inputs: Inputs, fmt: WeightFormat) -> None:
        """BudgetInfeasible when no plan can meet a budget; MpqError for a proxy check it cannot run."""
        check_target_model(self.target, inputs.prepared, self.gguf_metadata, fmt)
        check_reachable(Layers.of_graph(inputs.prepared.graph, fmt), self.budgets, self.space, self.latency)
        if self.proxy_plans:
            check_proxy_request(self.proxy_plans, self.budgets, self.space.granularity)


def _solved_and_verified(inputs: Inputs, sensitivity: Sensitivity, request: _Request, times: list) -> SearchResult:
    """The plan (room left for the packed file's header), its report, the proxy check when asked for; `times`:
    at the start, after preparing and after analyzing."""
    space, latency, batch_size, run = request.space, request.latency, request.eval_batch_size, request.run
    solve_within = lambda b: solve_sensitivity(sensitivity, b, space, request.solver, latency)  # noqa: E731
    container = target_overhead(request.target, inputs.prepared, request.gguf_metadata)
    plan = leave_room_for_the_container(inputs.prepared, inputs.fit, request.budgets, solve_within, container)
    plan = target_plan(request.target, inputs.prepared, plan, container, request.gguf_metadata)
    times.append(time.perf_counter())
    request.peaks.close("solve")
    report = verify_inputs(
        inputs, plan, VerifyOptions(tuple(space.bits), plan_act_bits(plan), batch_size, latency), run
    )
    times.append(time.perf_counter())
    request.peaks.close("verify")
    if request.proxy_plans:
        args = (inputs, sensitivity, plan, request.proxy_plans)
        report.proxy = proxy_check(*args, batch_size=batch_size, cache=run.cache, progress=run.progress)
        request.peaks.close("proxy_check")
    _finish(report, sensitivity, plan, times, request.proxy_plans > 0)
    # the whole run's peaks (after the sensitivity and the proxy check too), and each phase's own
    report.peak_memory_bytes = {**report.peak_memory_bytes, **request.peaks.to_json()}
    return SearchResult(sensitivity=sensitivity, plan=plan, report=report)


def _finish(report: Report, sensitivity: Sensitivity, plan: Plan, times: list[float], proxy: bool) -> None:
    """The report's timings and notes: `times` at the start and after preparing, analyzing, solving, verifying."""
    start, t0, t1, t2, t3 = times
    report.peak_memory_bytes = process_peak_memory()  # after the sensitivity and the proxy check too
    report.timings_s = {
        "prepare": t0 - start,
        "sensitivity": t1 - t0,
        "solve": t2 - t1,
        "verify": t3 - t2,
        **({"proxy_check": time.perf_counter() - t3} if proxy else {}),
        "total": time.perf_counter() - start,
    }
    report.notes.append(f"sensitivity loss: {sensitivity.loss}" + (" (from cache)" if sensitivity.from_cache else ""))
    acts = " (weights and inputs)" if sensitivity.has_activations else ""
    report.notes.append(f"sensitivity metric: {sensitivity.metric}{acts}")
    if plan.settings.latency is not None and plan.settings.latency.note:
        report.notes.append(plan.settings.latency.note)
    report.notes.append(solver_note(plan.solver, t2 - t1))
