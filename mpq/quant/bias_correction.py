"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction", section 4.2, the empirical variant).

Quantizing a layer's weights W to Q(W) shifts the mean of each output channel c over the data by

    delta_c = E_{n,p}[(Q(W) x - W x)_c] = sum_k (Q(W) - W)_{c,k} * m_{c,k}

where n runs over the calibration samples, p over the output positions, x is the layer's input in the
FP32 model, and m_{c,k} is the mean over n and p of the input element that weight (c, k) multiplies:
the mean input patch (for a Linear layer, the mean input). The corrected bias b_c - delta_c gives
the quantized layer the FP32 layer's mean output over the data. Only layers with a bias are
corrected (after BatchNorm folding every conv followed by a BatchNorm has one).

Because the output is linear in W, m = d/dW sum_c E_{n,p}[y_c]: one autograd step on a copy of the
layer per batch gives it, so padding that a conv applies inside its own forward counts too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MeanInputPatch:
    """Accumulates m (shaped like the layer's weight) over the batches given to `add`."""

    def __init__(self, module: nn.Module) -> None:
        self.layer = copy.deepcopy(module)
        self.layer.weight.requires_grad_(True)
        self.channel_last = isinstance(module, nn.Linear)
        self.total = torch.zeros_like(module.weight, dtype=torch.float64)
        self.samples = 0

    def add(self, x: torch.Tensor) -> None:
        # The layer is linear in its input (padding included), so the batch's gradient is that of one input, the
        # batch's sum.
        with torch.enable_grad():
            y = self.layer(x.detach().sum(0, keepdim=True))
            per_position = (
                y.reshape(1, -1, y.shape[-1]).mean(dim=1)
                if self.channel_last
                else y.reshape(1, y.shape[1], -1).mean(dim=2)
            )
            (grad,) = torch.autograd.grad(per_position.sum(), self.layer.weight)
        self.total += grad.double()
        self.samples += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.samples, 1)


def output_shift(weight: torch.Tensor, quantized: torch.Tensor, mean_patch: torch.Tensor) -> torch.Tensor:
    """delta_c = sum_k (Q(W) - W)_{c,k} m_{c,k}, per output channel (float64)."""
    error = quantized.detach().double() - weight.detach().double()
    return (error * mean_patch.double()).reshape(weight.shape[0], -1).sum(dim=1)


def corrected_bias(bias: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """b - delta, as float32 (what is exported and evaluated)."""
    return (bias.detach().double() - shift.to(bias.device)).to(torch.float32)
