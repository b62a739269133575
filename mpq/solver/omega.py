"""Omega of a choice, of a layer's plan and of a whole plan, defined once for the solver, the proxy
check, the Pareto sweep and the report:

    Omega(plan) = sum_l Omega_l(w_l) [+ Omega_act,l(a_l) when the inputs' sensitivity chose the widths]

where a per-channel layer sums its channels' Omega over its runs of widths (mpq.sensitivity.result).
"""

from __future__ import annotations

from mpq.cost.layer_cost import Choice
from mpq.plan import LayerPlan, Plan
from mpq.sensitivity import LayerSensitivity, Sensitivity


def choice_omega(s: LayerSensitivity, choice: Choice, margin: float, inputs: bool) -> float:
    """One layer's Omega at a (weight, activation) width pair; the input's share only when `inputs`."""
    return s.omega(choice.weight_bits, margin) + (s.act_omega(choice.act_bits, margin) if inputs else 0.0)


def layer_plan_omega(s: LayerSensitivity, lp: LayerPlan, margin: float, inputs: bool) -> float:
    """The layer's Omega as the plan's search counted it: layer-wise, or summed over its channels."""
    weights = (
        s.omega(lp.weight_bits, margin)
        if not lp.channel_bits
        else sum(float(s.channel_omega(r.weight_bits, margin)[r.start : r.stop].sum()) for r in lp.channel_bits)
    )
    return weights + (s.act_omega(lp.act_bits, margin) if inputs else 0.0)


def searched_with(plan: Plan) -> tuple[float, bool]:
    """(trace margin, whether the inputs' Omega counted) of the plan's search; (0, False) for a plan without
    settings."""
    if plan.settings is None:
        return 0.0, False
    return plan.settings.space.trace_margin, plan.settings.act_sensitivity


def plan_omega(sensitivity: Sensitivity, plan: Plan, margin: float | None = None, inputs: bool | None = None) -> float:
    """The plan's total Omega; `margin` and `inputs` default to what the plan was searched with."""
    own_margin, own_inputs = searched_with(plan)
    margin = own_margin if margin is None else margin
    inputs = own_inputs if inputs is None else inputs
    return sum(layer_plan_omega(sensitivity.layers[n], lp, margin, inputs) for n, lp in plan.layers.items())
