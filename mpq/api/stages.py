"""The stages the verbs are thin wrappers over, each taking what the boundary (mpq.inputs.prepare.prepare_inputs)
made once: mpq.search and mpq.pareto call these, never the public verbs, so nothing is checked or hashed twice."""

from __future__ import annotations

from dataclasses import dataclass

from mpq.api.target import with_file_sizes
from mpq.cache import Cache
from mpq.cost.budget import Budget
from mpq.cost.costs import CostKind, Costs
from mpq.cost.layer_cost import per_weight
from mpq.inputs.prepare import Inputs
from mpq.plan import Plan
from mpq.plan.records import PlanModel, Predicted
from mpq.plan.settings import PlanSettings, SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer
from mpq.sensitivity import Sensitivity, analyze_prepared
from mpq.sensitivity.analysis import AnalysisOptions
from mpq.sensitivity.analysis import output_dims
from mpq.sensitivity.losses import resolve_loss
from mpq.sensitivity.registry import default_metric
from mpq.sensitivity.settings import ProbeSettings
from mpq.solver.allocate import Allocation, allocate
from mpq.solver.channels import check_channel_metric, plan_layer_costs
from mpq.verify.measure import VerifyOptions, verify_prepared
from mpq.verify.report import Report


@dataclass(frozen=True)
class Run:
    """How a stage runs: the result cache and whether progress is shown (None: when stderr is a terminal)."""

    cache: Cache = Cache(None)
    progress: bool | None = None


@dataclass(frozen=True)
class AnalyzeOptions:
    """What the sensitivity is measured with (see mpq.analyze); `metric` None: the default for the loss."""

    probes: ProbeSettings
    quantizer: Quantizer
    metric: str | None = None
    loss: object = None
    activations: bool = False


def analyze_inputs(inputs: Inputs, options: AnalyzeOptions, run: Run) -> Sensitivity:
    """The sensitivity of the prepared model on the fit data."""
    prepared, data = inputs.prepared, inputs.fit
    loss = resolve_loss(options.loss, data.y is not None, prepared.outputs.embeddings)
    metric = options.metric
    if metric is None:
        given = options.loss is not None
        embeddings = prepared.outputs.embeddings
        dims = inputs.output_dims or output_dims(prepared, data)
        metric = default_metric(loss.name, given, dims, embeddings, options.activations)
    chosen = AnalysisOptions(metric, loss, options.probes, options.quantizer, options.activations)
    return analyze_prepared(prepared, data, chosen, run.cache, run.progress)


def solve_sensitivity(
    sensitivity: Sensitivity, budgets: list[Budget], space: SearchSpace, solver: SolverSettings, latency=None
) -> Plan:
    """The plan of least total Omega meeting `budgets` (mpq.solver.allocate), with what it was made with."""
    check_channel_metric(space, sensitivity.metric)
    chosen = allocate(sensitivity, budgets, space, solver, latency)
    return plan_of(sensitivity, chosen, budgets, space, solver)


def plan_of(
    sensitivity: Sensitivity, chosen: Allocation, budgets: list[Budget], space: SearchSpace, solver: SolverSettings
) -> Plan:
    settings = PlanSettings(
        space=space,
        solver=solver,
        probes=sensitivity.settings,
        quantizer=sensitivity.quantizer,
        metric=sensitivity.metric,
        loss=sensitivity.loss,
        keep=chosen.pins,
        act_sensitivity=chosen.act_sensitivity,
        act_tie_groups=sensitivity.act_tie_groups if space.several_act_widths else (),
        latency=chosen.latency,
        channels=chosen.channels,
    )
    infos = [s.layer for s in sensitivity.layers.values()]
    fmt = sensitivity.quantizer.format
    weight_bits = sum(plan_layer_costs(x, chosen.layers[x.name], fmt)["weight_bits"] for x in infos)
    costs = Costs.of(chosen.solution.costs)
    latency = costs[CostKind.LATENCY_S] if chosen.latency is not None else None
    return Plan(
        layers=chosen.layers,
        model=PlanModel(sensitivity.model_fingerprint, len(chosen.layers), sum(x.params for x in infos)),
        budgets=budgets,
        predicted=Predicted(
            size_bytes=int(costs[CostKind.SIZE_BYTES]),
            bops=costs[CostKind.BOPS],
            omega=chosen.solution.objective,
            bits_per_weight=per_weight(weight_bits, infos) if infos else None,
            latency_s=latency,
        ),
        settings=settings,
        solver=chosen.solution.solver_json(),
    )


def verify_inputs(
    inputs: Inputs, plan: Plan, options: VerifyOptions, run: Run, latency_note: str | None = None
) -> Report:
    """The plan measured (mpq.verify.measure): fitted on the fit data, measured on the held-out data."""
    report = verify_prepared(inputs.prepared, plan, inputs.fit, options, run.cache, run.progress, inputs.held_out)
    report.notes += [latency_note] if latency_note else []
    if plan.weight_format.own_tensors and plan.settings is not None:  # a --target gguf plan: the files' sizes
        report = with_file_sizes(report, plan.settings.container_reserve_bytes, plan, options.latency)
    if inputs.prepared.graph.uncalled:
        uncalled = ", ".join(inputs.prepared.graph.uncalled)
        report.notes.append(
            f"left in float (never called as modules, e.g. nn.MultiheadAttention projections): {uncalled}"
        )
    return report
