"""Costs of one layer at one choice of widths: bytes of the deployable model, and bit operations.

Size of a quantized layer (weights symmetric, BatchNorm folded into the bias; n weights, m = n / out_channels
per output channel, group size g or none):
    ceil(n * b_w / 8)                    packed weight codes
  + 4 * out_channels * ceil(m / g)       float32 weight scales (one per channel without a group size;
                                         a last, shorter group has a scale of its own)
  + 4 * bias                             float32 bias
  + 8 if its input is quantized (float32 scale + int32 zero point of the activation quantizer)
Everything that stays in floating point (other parameters and buffers) adds its own bytes.
Bits per weight of a plan (the bits_per_weight budget): the bits of its quantized layers' packed codes and
scales (no zero points: the weights are symmetric), 8 * (ceil(n * b_w / 8) + 4 * scales) summed, divided by
their weight count; biases, input quantizers and float tensors do not count.
BOPs of a layer: MACs * b_w * b_a, with b_a = 32 when the input stays in float (HAWQ-V3).
Latency of a layer: from a latency model (mpq.cost.latency: a measured table or a device roofline), when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpq.quant.widths import groups_per_channel

if TYPE_CHECKING:  # annotations only: building the `mpq` parser (which reads plan defaults) does not import torch
    from mpq.inputs.graph import LayerInfo

FLOAT_BYTES = 4  # float32: biases and weight scales
ACT_QUANT_PARAM_BYTES = 8
FLOAT_BITS = 32


@dataclass(frozen=True, order=True)
class Choice:
    """One option for a layer: weight width and input-activation width (None = float input)."""

    weight_bits: int
    act_bits: int | None

    def label(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits if self.act_bits else 'f'}"


def scale_count(layer: LayerInfo, channels: int, group_size: int | None) -> int:
    """Weight scales of `channels` output channels of the layer: one per channel, or ceil(m / g) each."""
    return channels * groups_per_channel(layer.params // layer.out_channels, group_size)


def weight_bytes(layer: LayerInfo, channels: int, weight_bits: int, group_size: int | None) -> int:
    """Packed codes (ceil(n * b / 8), byte-aligned) and float32 scales of `channels` output channels at one width."""
    codes = math.ceil(layer.params // layer.out_channels * channels * weight_bits / 8)
    return codes + FLOAT_BYTES * scale_count(layer, channels, group_size)


def layer_size_bytes(layer: LayerInfo, choice: Choice, group_size: int | None = None) -> int:
    bias = FLOAT_BYTES * layer.bias_params
    act = ACT_QUANT_PARAM_BYTES if choice.act_bits else 0
    return weight_bytes(layer, layer.out_channels, choice.weight_bits, group_size) + bias + act


def layer_weight_bits(layer: LayerInfo, choice: Choice, group_size: int | None = None) -> int:
    """Bits of the layer's packed codes and scales (the numerator of bits per weight)."""
    return 8 * weight_bytes(layer, layer.out_channels, choice.weight_bits, group_size)


def per_weight(weight_bits: float, layers: list[LayerInfo]) -> float:
    """Bits per quantized weight: `weight_bits` over the layers' weight count."""
    return weight_bits / sum(layer.params for layer in layers)


def layer_bops(layer: LayerInfo, choice: Choice) -> float:
    return float(layer.macs * choice.weight_bits * (choice.act_bits or FLOAT_BITS))


def layer_costs(
    layer: LayerInfo, choice: Choice, latency=None, group_size: int | None = None, weights: int | None = None
) -> dict[str, float]:
    """All modelled costs of a choice, by budget kind; latency_s too when a latency model (mpq.cost.latency) is given;
    bits_per_weight (the layer's share: its code and scale bits over `weights`, all the quantized layers' weights) when
    `weights` is given."""
    costs = {"size_bytes": layer_size_bytes(layer, choice, group_size), "bops": layer_bops(layer, choice)}
    if latency is not None:
        costs["latency_s"] = latency.latency_s(layer, choice)
    if weights is not None:
        costs["bits_per_weight"] = layer_weight_bits(layer, choice, group_size) / weights
    return costs


def model_costs(
    layers: list[LayerInfo], choices: dict[str, Choice], float_bytes: int, latency=None, group_size: int | None = None
) -> dict[str, float]:
    """Costs of the whole model under one choice per layer (latency: the sum over its quantizable layers;
    bits_per_weight: the code and scale bits of all layers over their weights, one exact division)."""
    totals = {"size_bytes": float(float_bytes), "bops": 0.0} | ({"latency_s": 0.0} if latency is not None else {})
    for layer in layers:
        for kind, value in layer_costs(layer, choices[layer.name], latency, group_size).items():
            totals[kind] += value
    if layers:
        totals["bits_per_weight"] = per_weight(
            sum(layer_weight_bits(x, choices[x.name], group_size) for x in layers), layers
        )
    return totals
