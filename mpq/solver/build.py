"""The integer program of a layer-wise search: every (weight width, activation width) choice of every
layer with its Omega and costs, and the budgets (solved by mpq.solver.problem)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from mpq.cost.budget import Budget
from mpq.cost.latency import covered_choices
from mpq.cost.layer_cost import Choice, layer_costs
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo
from mpq.plan.settings import act_widths
from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.quant.widths import check_bits
from mpq.solver.problem import Problem

LATENCY_HOW = (
    "give latency= a device name (e.g. 'nvidia-t4'), a device .toml or a latency table .csv from `mpq profile`"
)


def check_latency_budgets(budgets: list[Budget], latency, how: str = LATENCY_HOW) -> None:
    """MpqError when a latency budget comes without a latency model; `how` says how to give one."""
    latency_budget = next((b for b in budgets if b.kind == "latency_s"), None)
    if latency_budget is not None and latency is None:
        raise MpqError(f"budget {latency_budget.text} is a latency: {how}")


def candidate_choices(
    layers: list[LayerInfo], bits: Iterable[int], acts: tuple[int | None, ...], keep: dict[str, int]
) -> dict[str, list[Choice]]:
    """Every (weight width, activation width) pair per layer; a kept layer gets its kept width;
    an embedding's input is integer ids: never an input quantizer."""
    pairs = lambda widths, acts: [Choice(check_bits(w), a) for w in sorted(set(widths)) for a in acts]  # noqa: E731
    return {
        layer.name: pairs(
            [keep[layer.name]] if layer.name in keep else bits, (None,) if layer.kind == "embedding" else acts
        )
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
    fmt: WeightFormat = PER_CHANNEL_INT,
) -> Problem:
    """Every (weight width, activation width) pair for every layer; a kept layer gets its kept width;
    an embedding (quantized on request) has no activation quantizer. With a latency model (mpq.cost.latency),
    only the pairs it has a latency for, and latency_s costs. Sizes and bits per weight are the bytes of the weight
    format `fmt` (mpq.quant.formats)."""
    keep = keep or {}
    check_latency_budgets(budgets, latency)
    acts = act_widths(act_bits)
    choices = candidate_choices(layers, bits, acts, keep)
    if latency is not None:
        choices = covered_choices(layers, choices, latency)
    weights = sum(layer.params for layer in layers)
    return Problem(
        layers=[layer.name for layer in layers],
        choices=choices,
        omega={layer.name: {c: omega(layer.name, c) for c in choices[layer.name]} for layer in layers},
        costs={
            layer.name: {c: layer_costs(layer, c, latency, fmt, weights) for c in choices[layer.name]}
            for layer in layers
        },
        fixed_costs={"size_bytes": float(float_bytes), "bops": 0.0, "bits_per_weight": 0.0}
        | ({"latency_s": 0.0} if latency is not None else {}),
        budgets=budgets,
        act_tie_groups=[list(g) for g in act_tie_groups or []] if len(acts) > 1 else [],
        keep=dict(keep),
    )
