"""Does Omega predict? Random plans at the searched plan's size budget: their predicted Omega against their
measured KL(FP32 || q), and the rank correlation of the two (Spearman's rho).

Random plans take each layer's weight width uniformly from the candidate widths (seeded), keep the
searched plan's activation widths, and are repaired into [FLOOR x budget, budget] one layer at a time:
while over the budget a random layer above the narrowest width loses one step, while under the floor
a random layer below the widest gains one step if the plan still fits. So every plan spends about what
the searched plan spends, and only the allocation differs.
"""

from __future__ import annotations

import numpy as np

from mpq.cache import Cache
from mpq.cost.costs import CostKind
from mpq.cost.layer_cost import model_costs
from mpq.errors import MpqError
from mpq.inputs.graph import PreparedModel
from mpq.inputs.prepare import Inputs
from mpq.plan import LayerPlan, Plan
from mpq.progress import bar
from mpq.sensitivity import Sensitivity
from mpq.solver.omega import plan_omega
from mpq.verify.measure import fitted_and_held_out, measure_plan, plan_quantizer
from mpq.verify.report import ProxyCheck, ProxyPoint

FLOOR = 0.875  # random plans spend at least this share of the size budget


def check_proxy_request(plans: int, budgets, granularity: str) -> None:
    """Before any work: a proxy check needs >= 2 random plans, a size budget and layer-wise widths."""
    if plans < 2:
        raise MpqError(f"the proxy check needs at least 2 random plans, not {plans}")
    if granularity != "layer" or not any(b.kind == CostKind.SIZE_BYTES for b in budgets):
        raise MpqError("the proxy check needs a size budget (e.g. --budget 4MB) and layer-wise widths")


def size_limit(plan: Plan) -> float:
    """The plan's size budget; MpqError for a plan without one or with per-channel widths."""
    sizes = [b.limit for b in plan.budgets if b.kind == CostKind.SIZE_BYTES]
    if not sizes or any(lp.channel_bits for lp in plan.layers.values()):
        raise MpqError(
            "the proxy check needs a layer-wise plan with a size budget (e.g. --budget 4MB, --granularity layer)"
        )
    return min(sizes)


def random_plan(prepared: PreparedModel, plan: Plan, bits: tuple[int, ...], rng: np.random.Generator) -> Plan:
    """A random allocation of `bits` with the plan's activation widths, repaired into [FLOOR x budget, budget]."""
    limit = size_limit(plan)
    names = list(plan.layers)
    step = {b: i for i, b in enumerate(bits)}
    widths = {n: bits[int(rng.integers(len(bits)))] for n in names}

    def size() -> float:
        choices = {n: LayerPlan(widths[n], plan.layers[n].act_bits).choice for n in names}
        graph = prepared.graph
        return model_costs(graph.layers, choices, graph.float_bytes, fmt=plan.weight_format)[CostKind.SIZE_BYTES]

    while size() > limit:
        n = names[int(rng.integers(len(names)))]
        if widths[n] > bits[0]:
            widths[n] = bits[step[widths[n]] - 1]
    for _ in range(10 * len(names)):
        if size() >= FLOOR * limit:
            break
        n = names[int(rng.integers(len(names)))]
        if widths[n] < bits[-1]:
            widths[n] = bits[step[widths[n]] + 1]
            if size() > limit:
                widths[n] = bits[step[widths[n]] - 1]
    layers = {n: LayerPlan(widths[n], plan.layers[n].act_bits, plan.layers[n].granularity) for n in names}
    return Plan(layers=layers, model=plan.model, budgets=plan.budgets, settings=plan.settings)


def proxy_check(
    inputs: Inputs,
    sensitivity: Sensitivity,
    plan: Plan,
    plans: int,
    seed: int = 0,
    batch_size: int = 25,
    cache: Cache = Cache(None),
    progress: bool | None = None,
) -> ProxyCheck:
    """Measure the searched plan and `plans` random ones (mpq.verify, the plan's quantizer fitted on the fit data,
    measured on the held-out data, else on the fit data) and rank-correlate Omega with KL."""
    prepared = inputs.prepared
    check_proxy_request(
        plans, plan.budgets, "channel" if any(lp.channel_bits for lp in plan.layers.values()) else "layer"
    )
    bits = (
        plan.settings.space.bits
        if plan.settings is not None
        else tuple(sorted({lp.weight_bits for lp in plan.layers.values()}))
    )
    rng = np.random.default_rng(seed)
    candidates = [("mpq plan", plan)] + [("random", random_plan(prepared, plan, bits, rng)) for _ in range(plans)]
    fitted = fitted_and_held_out(prepared, inputs.fit, inputs.held_out, plan_quantizer(plan), batch_size, cache)
    points = []
    with bar(len(candidates), "proxy check", progress, unit="plan") as shown:
        for kind, candidate in candidates:
            m = measure_plan(prepared, candidate, fitted, kind, batch_size, cache)
            points.append(
                ProxyPoint(kind, m.size_bytes, plan_omega(sensitivity, candidate), m.kl_to_fp32, m.fp32_agreement)
            )
            shown.update(1)
    return ProxyCheck(points, spearman([p.omega for p in points], [p.kl_to_fp32 for p in points]), seed)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])
