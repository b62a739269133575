"""mpq.search: analyze, solve and verify in one call, failing before the Hessian work when no plan can
meet a budget, and leaving room in a size budget for the packed file's header."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mpq.api.options import search_configs
from mpq.api.verbs import analyze, solve, verify
from mpq.cache import open_cache
from mpq.cost.budget import Budget, as_budgets
from mpq.cost.latency import latency_model
from mpq.errors import BudgetInfeasible
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel
from mpq.inputs.prepare import as_dataset, check_batch_size, prepared_on, split_for_measurement
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer, resolve_quantizer
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.settings import ProbeSettings
from mpq.solver.build import build_problem, check_latency_budgets
from mpq.solver.channels import build_channel_problem, check_channel_metric
from mpq.solver.milp import solver_note
from mpq.solver.pins import resolve_keep
from mpq.solver.problem import check_feasible
from mpq.verify.proxy import check_proxy_request, proxy_check
from mpq.verify.report import Report, process_peak_memory


@dataclass
class SearchResult:
    sensitivity: Sensitivity
    plan: Plan
    report: Report


def leave_room_for_the_container(prepared: PreparedModel, data: Dataset, budgets: list[Budget], solve_within) -> Plan:
    """The plan `solve_within(budgets)` gives, solved again with the size budget lowered by the packed file's
    header (mpq.export.packed_file) until tensors and header together fit it: the file `mpq export` writes
    then fits the budget. plan.budgets stay the user's; settings.container_reserve_bytes says what was kept."""
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
            tighter = solve_within(
                [replace(b, limit=b.limit - reserve - int(over)) if b.kind == "size_bytes" else b for b in budgets]
            )
        except (
            BudgetInfeasible
        ):  # no plan leaves room for the header: keep this one (mpq export says by how much it is over)
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


def search(
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
    **legacy,
) -> SearchResult:
    """analyze, solve and verify in one call: `probes`, `metric`, `quantizer`, `loss` as in `analyze`;
    `space`, `solver` and `latency` as in `solve` (the flat keywords of mpq 0.1.0 still work, with a
    DeprecationWarning). `eval_data`: the data the plan is measured on (sensitivity and calibration use `data`); without it, a seeded
    `eval_split` of `data` is held out for that (whole groups at a time: mpq.inputs.split.held_out_split; 0: in-sample).
    `proxy_plans` > 0 also measures that many random plans at the same size budget
    and rank-correlates their Omega with their KL (mpq.verify.proxy; report.proxy).

    With several activation widths, the inputs' sensitivity is analyzed and chooses them, unless
    `space.act_sensitivity` is False (then they go by cost only, the widest the budgets allow).

    Fails before the Hessian work, with BudgetInfeasible, when a budget cannot be met at all.
    `device`: where every stage runs: "cpu", "cuda", "cuda:N", "auto" (cuda when a GPU is visible) or a
    torch.device; None: where the model's parameters are. The model is not moved: a copy is.
    """
    space, probes, solver = search_configs("search", space, probes, solver, legacy)
    check_batch_size(eval_batch_size, "eval_batch_size")
    start = time.perf_counter()
    check_channel_metric(space, metric)
    data = as_dataset(data)
    budgets = as_budgets(budget)
    latency = latency_model(latency)
    check_latency_budgets(budgets, latency)
    prepared, data = prepared_on(model, data, quantize_embeddings, device)
    data, held_out = split_for_measurement(prepared, data, eval_data, eval_split)
    # fail before the Hessian work when no plan can meet a budget
    graph = prepared.graph
    pins = resolve_keep([layer.name for layer in graph.layers], space.keep, space.keep_first, space.keep_last)
    quantizer = resolve_quantizer(quantizer)
    if space.granularity == "channel":
        zero = lambda group, b: 0.0  # noqa: E731
        problem = build_channel_problem(
            graph.layers,
            graph.float_bytes,
            budgets,
            space.bits,
            space.act_bits,
            zero,
            space.channel_group,
            pins,
            graph.act_tie_groups,
            quantizer.format,
        ).problem
    else:
        problem = build_problem(
            graph.layers,
            graph.float_bytes,
            budgets,
            space.bits,
            space.act_bits,
            lambda n, c: 0.0,
            pins,
            graph.act_tie_groups,
            latency,
            quantizer.format,
        )
    check_feasible(problem)
    if proxy_plans:
        check_proxy_request(proxy_plans, budgets, space.granularity)
    t0 = time.perf_counter()
    activations = space.several_act_widths and space.act_sensitivity is not False
    sensitivity = analyze(
        prepared,
        data,
        probes=probes,
        metric=metric,
        quantizer=quantizer,
        loss=loss,
        activations=activations,
        cache_dir=cache_dir,
        progress=progress,
    )
    t1 = time.perf_counter()
    solve_within = lambda b: solve(sensitivity, b, space=space, solver=solver, latency=latency)  # noqa: E731
    plan = leave_room_for_the_container(prepared, data, budgets, solve_within)
    t2 = time.perf_counter()
    report = verify(
        prepared,
        plan,
        data,
        batch_size=eval_batch_size,
        cache_dir=cache_dir,
        latency=latency,
        progress=progress,
        eval_data=held_out,
        eval_split=0,
    )
    t3 = time.perf_counter()
    if proxy_plans:
        report.proxy = proxy_check(
            prepared,
            sensitivity,
            plan,
            data,
            proxy_plans,
            batch_size=eval_batch_size,
            cache=open_cache(cache_dir),
            progress=progress,
            eval_data=held_out,
        )
    report.peak_memory_bytes = process_peak_memory()  # after the sensitivity and the proxy check too
    report.timings_s = {
        "prepare": t0 - start,
        "sensitivity": t1 - t0,
        "solve": t2 - t1,
        "verify": t3 - t2,
        **({"proxy_check": time.perf_counter() - t3} if proxy_plans else {}),
        "total": time.perf_counter() - start,
    }
    report.notes.append(f"sensitivity loss: {sensitivity.loss}" + (" (from cache)" if sensitivity.from_cache else ""))
    report.notes.append(
        f"sensitivity metric: {sensitivity.metric}" + (" (weights and inputs)" if sensitivity.has_activations else "")
    )
    if plan.settings.latency is not None and plan.settings.latency.note:
        report.notes.append(plan.settings.latency.note)
    report.notes.append(solver_note(plan.solver, t2 - t1))
    return SearchResult(sensitivity=sensitivity, plan=plan, report=report)
