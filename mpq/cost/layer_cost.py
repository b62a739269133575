"""Costs of one layer at one choice of widths: bytes of the deployable model, and bit operations.

Size of a quantized layer (BatchNorm folded into the bias; n weights):
    the weight format's bytes            mpq.quant.formats; mpq's own symmetric integers: ceil(n * b_w / 8)
                                         packed codes + 4 * out_channels * ceil(m / g) float32 scales
                                         (m = n / out_channels, one scale per channel without a group size)
  + 4 * bias                             float32 bias
  + 8 if its input is quantized (float32 scale + int32 zero point of the activation quantizer)
Everything that stays in floating point (other parameters and buffers) adds its own bytes.
Bits per weight of a plan (the bits_per_weight budget): the bits of its quantized layers' packed codes and
scales as the weight format stores them, summed, divided by their weight count; biases, input quantizers and float
tensors do not count.
BOPs of a layer: MACs * b_w * b_a, with b_a = 32 when the input stays in float (HAWQ-V3).
Latency of a layer: from a latency model (mpq.cost.latency: a measured table or a device roofline), when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat

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


def weight_bytes(layer: LayerInfo, channels: int, weight_bits: int, fmt: WeightFormat = PER_CHANNEL_INT) -> int:
    """The stored weights (codes and scales) of `channels` output channels of the layer at one width."""
    return fmt.weight_bytes(layer.params // layer.out_channels, channels, weight_bits)


def layer_size_bytes(layer: LayerInfo, choice: Choice, fmt: WeightFormat = PER_CHANNEL_INT) -> int:
    bias = FLOAT_BYTES * layer.bias_params
    act = ACT_QUANT_PARAM_BYTES if choice.act_bits else 0
    return weight_bytes(layer, layer.out_channels, choice.weight_bits, fmt) + bias + act


def layer_weight_bits(layer: LayerInfo, choice: Choice, fmt: WeightFormat = PER_CHANNEL_INT) -> int:
    """Bits of the layer's stored codes and scales (the numerator of bits per weight)."""
    return 8 * weight_bytes(layer, layer.out_channels, choice.weight_bits, fmt)


def per_weight(weight_bits: float, layers: list[LayerInfo]) -> float:
    """Bits per quantized weight: `weight_bits` over the layers' weight count."""
    return weight_bits / sum(layer.params for layer in layers)


def layer_bops(layer: LayerInfo, choice: Choice) -> float:
    return float(layer.macs * choice.weight_bits * (choice.act_bits or FLOAT_BITS))


def layer_costs(
    layer: LayerInfo, choice: Choice, latency=None, fmt: WeightFormat = PER_CHANNEL_INT, weights: int | None = None
) -> dict[str, float]:
    """All modelled costs of a choice, by budget kind; latency_s too when a latency model (mpq.cost.latency) is given;
    bits_per_weight (the layer's share: its code and scale bits over `weights`, all the quantized layers' weights) when
    `weights` is given."""
    costs = {"size_bytes": layer_size_bytes(layer, choice, fmt), "bops": layer_bops(layer, choice)}
    if latency is not None:
        costs["latency_s"] = latency.latency_s(layer, choice)
    if weights is not None:
        costs["bits_per_weight"] = layer_weight_bits(layer, choice, fmt) / weights
    return costs


def model_costs(
    layers: list[LayerInfo],
    choices: dict[str, Choice],
    float_bytes: int,
    latency=None,
    fmt: WeightFormat = PER_CHANNEL_INT,
) -> dict[str, float]:
    """Costs of the whole model under one choice per layer (latency: the sum over its quantizable layers;
    bits_per_weight: the code and scale bits of all layers over their weights, one exact division)."""
    totals = {"size_bytes": float(float_bytes), "bops": 0.0} | ({"latency_s": 0.0} if latency is not None else {})
    for layer in layers:
        for kind, value in layer_costs(layer, choices[layer.name], latency, fmt).items():
            totals[kind] += value
    if layers:
        totals["bits_per_weight"] = per_weight(sum(layer_weight_bits(x, choices[x.name], fmt) for x in layers), layers)
    return totals
