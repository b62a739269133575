"""The integer program of a layer-wise search: every (weight width, activation width) choice of every
layer with its Omega and costs, and the budgets (solved by mpq.solver.problem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.cost.budget import Budget
from mpq.cost.costs import CostKind, Costs
from mpq.cost.latency import covered_choices
from mpq.cost.layer_cost import Choice, layer_costs
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo, ModelGraph
from mpq.plan.settings import act_widths
from mpq.quant.widths import check_bits
from mpq.solver.problem import Problem

LATENCY_HOW = (
    "give latency= a device name (e.g. 'nvidia-t4'), a device .toml or a latency table .csv from `mpq profile`"
)


def check_latency_budgets(budgets: list[Budget], latency, how: str = LATENCY_HOW) -> None:
    """MpqError when a latency budget comes without a latency model; `how` says how to give one."""
    latency_budget = next((b for b in budgets if b.kind == CostKind.LATENCY_S), None)
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


@dataclass(frozen=True)
class Layers:
    """What an allocation is made over: the quantizable layers, the bytes left in float, the layers that read one
    input (one activation width each), and the format the weights are stored in (mpq.quant.formats)."""

    layers: list[LayerInfo]
    float_bytes: int = 0
    act_tie_groups: "list[list[str]] | tuple" = ()
    fmt: WeightFormat = PER_CHANNEL_INT

    @classmethod
    def of_graph(cls, graph: ModelGraph, fmt: WeightFormat = PER_CHANNEL_INT) -> "Layers":
        return cls(graph.layers, graph.float_bytes, graph.act_tie_groups, fmt)


def build_problem(
    over: Layers,
    budgets: list[Budget],
    bits: Iterable[int],
    act_bits: "int | None | Sequence[int | None]",
    omega: Callable[[str, Choice], float],
    keep: "dict[str, int] | None" = None,
    latency=None,
) -> Problem:
    """Every (weight width, activation width) pair for every layer; a kept layer gets its kept width;
    an embedding (quantized on request) has no activation quantizer. With a latency model (mpq.cost.latency),
    only the pairs it has a latency for, and latency_s costs. Sizes and bits per weight are the bytes of the weight
    format `over.fmt` (mpq.quant.formats); the layers its runtime fuses take one width (fmt.fused_groups)."""
    layers, fmt, keep = over.layers, over.fmt, keep or {}
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
        fixed_costs=Costs(
            {CostKind.SIZE_BYTES: float(over.float_bytes), CostKind.BOPS: 0.0, CostKind.BITS_PER_WEIGHT: 0.0}
        )
        | ({CostKind.LATENCY_S: 0.0} if latency is not None else {}),
        budgets=budgets,
        act_tie_groups=[list(g) for g in over.act_tie_groups] if len(acts) > 1 else [],
        tie_groups=fmt.fused_groups([layer.name for layer in layers]),
        keep=dict(keep),
    )
