"""Costs of one layer at one choice of widths: bytes of the deployable model, and bit operations.

Size of a quantized layer (weights symmetric per output channel, BatchNorm folded into the bias):
    ceil(n * b_w / 8)      packed weight codes
  + 4 * out_channels       float32 weight scales
  + 4 * bias             float32 bias
  + 8 if its input is quantized (float32 scale + int32 zero point of the activation quantizer)
Everything that stays in floating point (other parameters and buffers) adds its own bytes.
BOPs of a layer: MACs * b_w * b_a, with b_a = 32 when the input stays in float (HAWQ-V3).
Latency of a layer: from a latency model (mpq.cost.latency: a measured table or a device roofline), when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: building the `mpq` parser (which reads plan defaults) does not import torch
    from mpq.inputs.graph import LayerInfo

FLOAT_BYTES = 4
ACT_QUANT_PARAM_BYTES = 8
FLOAT_BITS = 32


@dataclass(frozen=True, order=True)
class Choice:
    """One option for a layer: weight width and input-activation width (None = float input)."""

    weight_bits: int
    act_bits: int | None

    def label(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits if self.act_bits else 'f'}"


def layer_size_bytes(layer: LayerInfo, choice: Choice) -> int:
    packed = math.ceil(layer.params * choice.weight_bits / 8)
    scales = FLOAT_BYTES * layer.out_channels
    bias = FLOAT_BYTES * layer.bias_params
    act = ACT_QUANT_PARAM_BYTES if choice.act_bits else 0
    return packed + scales + bias + act


def layer_bops(layer: LayerInfo, choice: Choice) -> float:
    return float(layer.macs * choice.weight_bits * (choice.act_bits or FLOAT_BITS))


def layer_costs(layer: LayerInfo, choice: Choice, latency=None) -> dict[str, float]:
    """All modelled costs of a choice, by budget kind; latency_s too when a latency model (mpq.cost.latency) is given."""
    costs = {"size_bytes": layer_size_bytes(layer, choice), "bops": layer_bops(layer, choice)}
    if latency is not None:
        costs["latency_s"] = latency.latency_s(layer, choice)
    return costs


def model_costs(layers: list[LayerInfo], choices: dict[str, Choice], float_bytes: int, latency=None) -> dict[str, float]:
    """Costs of the whole model under one choice per layer (latency: the sum over its quantizable layers)."""
    totals = {"size_bytes": float(float_bytes), "bops": 0.0} | ({"latency_s": 0.0} if latency is not None else {})
    for layer in layers:
        for kind, value in layer_costs(layer, choices[layer.name], latency).items():
            totals[kind] += value
    return totals
