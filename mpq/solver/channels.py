"""Per-channel weight widths (`--granularity channel`): the integer program over groups of output channels.

A layer's C output channels are cut into groups of G consecutive channels (0..G-1, G..2G-1, ...; the
last may be shorter). Each group g is a unit of the integer program (mpq.solver.problem) and takes one weight
width; all groups of a layer take the layer's one activation width (an activation tie group). For a
group g of layer l, n weights per channel, |g| channels, weight width b and input width a:

    Omega_{l,g}(b) = sum_{c in g} max(Tr(H_{l,c}) + margin * stderr_{l,c}, 0) / n * ||Q_b(W_{l,c}) - W_{l,c}||^2
    size_{l,g}(b)  = ceil(n * |g| * b / 8)             codes, packed per group (byte-aligned)
                   + 4 * |g| * ceil(n / G_w)           float32 scales (one per channel without a weight
                                                       group size G_w: mpq.cost.layer_cost)
                   + 4 * |g| if the layer has a bias   float32 bias
                   + 8 on group 0 if a is not None     the layer's input quantizer (scale, zero point)
    bops_{l,g}(b, a) = MACs_l * |g| / C * b * (a or 32)
    bits_per_weight_{l,g}(b) = 8 * (codes + scales bytes) / (weights of all layers)

The packed export stores exactly this (mpq.verify.apply: each run of a plan's `channel_bits` cut at
multiples of G is packed on its own), so the measured size equals the predicted size. The sizes sum to
the layer-wise cost model's bytes except for the rounding of ceil per group.

Solved with mpq.solver.presolve's exact reductions (dominated choices; Lagrangian reduced-cost fixing with
one budget), then CBC on what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.cost.budget import Budget
from mpq.cost.costs import CostKind, Costs
from mpq.cost.layer_cost import (
    ACT_QUANT_PARAM_BYTES,
    FLOAT_BITS,
    FLOAT_BYTES,
    Choice,
    layer_bops,
    layer_size_bytes,
    layer_weight_bits,
    weight_bytes,
)
from mpq.errors import MpqError
from mpq.inputs.graph import LayerInfo
from mpq.plan import ChannelRun, LayerPlan
from mpq.plan.settings import SearchSpace
from mpq.quant.widths import check_bits
from mpq.sensitivity import Sensitivity
from mpq.sensitivity.registry import metric_of
from mpq.solver.build import Layers
from mpq.solver.presolve import binary_variables, drop_dominated
from mpq.solver.problem import Problem, Solution


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels start .. stop - 1 of one layer: one unit of the per-channel integer program."""

    layer: str
    start: int
    stop: int

    @property
    def unit(self) -> str:
        return f"{self.layer}[{self.start}:{self.stop}]"


@dataclass
class ChannelProblem:
    """The integer program over channel groups, and which channels each of its units stands for."""

    problem: Problem
    groups: dict[str, ChannelGroup]  # unit name -> channel group
    group_size: int
    dropped_choices: int  # dominated choices removed while building

    @property
    def binary_variables(self) -> int:
        return binary_variables(self.problem)


def check_channel_metric(space: SearchSpace, metric: str | None) -> None:
    """Per-channel widths need a per-channel Omega, which the measured metrics do not have."""
    if space.granularity == "channel" and metric is not None and not metric_of(metric).per_channel:
        raise MpqError(
            f"the {metric} metric measures whole layers, so it has no per-channel Ω: use --metric kl_quadratic (or "
            "hessian, fisher, eigenvalue) with --granularity channel"
        )


def channel_groups(layer: LayerInfo, group_size: int) -> list[ChannelGroup]:
    """Consecutive groups of `group_size` output channels; the last may be shorter."""
    return [
        ChannelGroup(layer.name, s, min(s + group_size, layer.out_channels))
        for s in range(0, layer.out_channels, group_size)
    ]


def chunk_size_bytes(
    layer: LayerInfo, start: int, stop: int, weight_bits: int, fmt: WeightFormat = PER_CHANNEL_INT
) -> int:
    """Packed codes, scales and bias of output channels start .. stop - 1 at one width (no input quantizer)."""
    channels = stop - start
    bias = FLOAT_BYTES * channels if layer.bias_params else 0
    return weight_bytes(layer, channels, weight_bits, fmt) + bias


def chunk_bops(layer: LayerInfo, start: int, stop: int, weight_bits: int, act_bits: int | None) -> float:
    """MACs of output channels start .. stop - 1 times b_w times b_a (32 for a float input)."""
    return float(layer.macs * (stop - start) // layer.out_channels * weight_bits * (act_bits or FLOAT_BITS))


def group_costs(
    layer: LayerInfo, group: ChannelGroup, choice: Choice, fmt: WeightFormat, weights: int
) -> dict[str, float]:
    """Size, BOPs and bits-per-weight share of one channel group (`weights`: of all layers); group 0 carries the
    layer's input quantizer bytes."""
    act = ACT_QUANT_PARAM_BYTES if choice.act_bits and group.start == 0 else 0
    codes = weight_bytes(layer, group.stop - group.start, choice.weight_bits, fmt)
    return Costs(
        {
            CostKind.SIZE_BYTES: float(chunk_size_bytes(layer, group.start, group.stop, choice.weight_bits, fmt) + act),
            CostKind.BOPS: chunk_bops(layer, group.start, group.stop, choice.weight_bits, choice.act_bits),
            CostKind.BITS_PER_WEIGHT: 8 * codes / weights,
        }
    )


def plan_layer_costs(layer: LayerInfo, lp: LayerPlan, fmt: WeightFormat = PER_CHANNEL_INT) -> dict[str, float]:
    """Size (as packed), BOPs and weight bits (packed codes and scales) of one layer of a plan, layer-wise or per
    channel."""
    if not lp.channel_bits:
        bits = layer_weight_bits(layer, lp.choice, fmt)
        return {
            CostKind.SIZE_BYTES: float(layer_size_bytes(layer, lp.choice, fmt)),
            CostKind.BOPS: layer_bops(layer, lp.choice),
            "weight_bits": bits,
        }
    chunks = lp.chunks(layer.out_channels)
    size = sum(chunk_size_bytes(layer, c.start, c.stop, c.weight_bits, fmt) for c in chunks)
    bits = sum(8 * weight_bytes(layer, c.stop - c.start, c.weight_bits, fmt) for c in chunks)
    bops = sum(chunk_bops(layer, r.start, r.stop, r.weight_bits, lp.act_bits) for r in lp.runs(layer.out_channels))
    return {
        CostKind.SIZE_BYTES: float(size + (ACT_QUANT_PARAM_BYTES if lp.act_bits else 0)),
        CostKind.BOPS: bops,
        "weight_bits": bits,
    }


def build_channel_problem(
    over: Layers,
    budgets: list[Budget],
    bits: Iterable[int],
    acts: tuple[int | None, ...],
    omega: Callable[[ChannelGroup, int], float],
    group_size: int = 1,
    keep: "dict[str, int] | None" = None,
) -> ChannelProblem:
    """One unit per channel group with every (weight width, activation width) pair; a kept layer's groups
    take its kept width; the groups of one layer (and layers reading one input) share the activation width
    when there are several to choose from. `omega(group, bits)` is the group's Omega;
    `over.fmt` the weights' format (mpq.quant.formats), whose bytes the sizes count."""
    layers, fmt, keep = over.layers, over.fmt, keep or {}
    widths = sorted({check_bits(b) for b in bits})
    groups: dict[str, ChannelGroup] = {}
    choices, omegas, costs, dropped = {}, {}, {}, 0
    weights = sum(layer.params for layer in layers)
    for layer in layers:
        layer_acts = (None,) if layer.kind == "embedding" else acts
        for group in channel_groups(layer, group_size):
            unit = group.unit
            groups[unit] = group
            candidates = [
                Choice(w, a) for w in ([keep[layer.name]] if layer.name in keep else widths) for a in layer_acts
            ]
            omegas[unit] = {c: omega(group, c.weight_bits) for c in candidates}
            costs[unit] = {c: group_costs(layer, group, c, fmt, weights) for c in candidates}
            choices[unit] = drop_dominated(candidates, omegas[unit], costs[unit])
            dropped += len(candidates) - len(choices[unit])
    first_unit = {layer.name: ChannelGroup(layer.name, 0, min(group_size, layer.out_channels)).unit for layer in layers}
    ties = []
    if len(acts) > 1:
        ties = [
            [g.unit for g in channel_groups(layer, group_size)]
            for layer in layers
            if layer.out_channels > group_size and layer.kind != "embedding"
        ]
        ties += [[first_unit[name] for name in group] for group in over.act_tie_groups]
    problem = Problem(
        layers=list(groups),
        choices=choices,
        omega=omegas,
        costs=costs,
        fixed_costs=Costs(
            {CostKind.SIZE_BYTES: float(over.float_bytes), CostKind.BOPS: 0.0, CostKind.BITS_PER_WEIGHT: 0.0}
        ),
        budgets=budgets,
        act_tie_groups=ties,
        keep={unit: keep[g.layer] for unit, g in groups.items() if g.layer in keep},
    )
    return ChannelProblem(problem=problem, groups=groups, group_size=group_size, dropped_choices=dropped)


def merged_runs(widths: list[tuple[int, int, int]]) -> tuple[ChannelRun, ...]:
    """(start, stop, bits) of consecutive groups -> runs, neighbours of equal width merged."""
    runs: list[ChannelRun] = []
    for start, stop, bits in widths:
        if runs and runs[-1].weight_bits == bits and runs[-1].stop == start:
            runs[-1] = ChannelRun(runs[-1].start, stop, bits)
        else:
            runs.append(ChannelRun(start, stop, bits))
    return tuple(runs)


def layer_plans(channel_problem: ChannelProblem, solution: Solution) -> dict[str, LayerPlan]:
    """The plan's layers from a solved per-channel problem: runs of equal width, weight_bits the widest."""
    per_layer: dict[str, list[tuple[int, int, int]]] = {}
    acts: dict[str, int | None] = {}
    for unit, group in channel_problem.groups.items():
        choice = solution.choices[unit]
        per_layer.setdefault(group.layer, []).append((group.start, group.stop, choice.weight_bits))
        acts[group.layer] = choice.act_bits
    plans = {}
    for name, widths in per_layer.items():
        runs = merged_runs(widths)
        plans[name] = LayerPlan(
            weight_bits=max(r.weight_bits for r in runs),
            act_bits=acts[name],
            channel_bits=runs,
            channel_group=channel_problem.group_size,
        )
    return plans


def channel_omega(sensitivity: Sensitivity, trace_margin: float) -> Callable[[ChannelGroup, int], float]:
    """Omega of a channel group at b bits: the sum of its channels' Omega (LayerSensitivity.channel_omega)."""
    tables: dict[tuple[str, int], np.ndarray] = {}

    def omega(group: ChannelGroup, bits: int) -> float:
        key = (group.layer, bits)
        if key not in tables:
            tables[key] = sensitivity.layers[group.layer].channel_omega(bits, trace_margin)
        return float(tables[key][group.start : group.stop].sum())

    return omega
