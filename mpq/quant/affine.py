"""Quantizers: symmetric per-output-channel weights, affine per-tensor activations.

Weights, b bits, output channel c, clip ratio r_c (1 = min-max; mpq.quant.observers chooses it):
    s_c = r_c * max|W_c| / (2^(b-1) - 1)
    q   = clamp(round(W / s_c), -2^(b-1), 2^(b-1) - 1)      (the integer codes)
    Q_b(W) = s_c * q
Activations, b bits, range [lo, hi] chosen on calibration data (lo <= 0 <= hi; mpq.quant.observers):
    s = (hi - lo) / (2^b - 1),  z = round(-lo / s)
    Q_b(x) = s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _per_channel_absmax(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)


@dataclass
class QuantizedWeight:
    """Integer codes (int8 tensor shaped like the weight) and one float32 scale per output channel."""

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int

    def dequantize(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.codes.dim() - 1)
        return self.codes.to(torch.float32) * self.scale.reshape(shape)


def quantize_weight(weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None) -> QuantizedWeight:
    """Symmetric per-output-channel quantization of a weight (dim 0 = output channels); the scale spans
    `clip_ratio` (one per channel; None = 1, min-max) of each channel's largest magnitude."""
    return quantize_weight_channels(weight, [bits] * weight.shape[0], clip_ratio)


def quantize_weight_channels(weight: torch.Tensor, bits: "list[int]", clip_ratio: torch.Tensor | None = None) -> QuantizedWeight:
    """As quantize_weight, but output channel c takes its own width bits[c] (its codes fit in bits[c] bits);
    `bits` of the result is the widest."""
    qmax = torch.tensor([2 ** (b - 1) - 1 for b in bits], dtype=torch.float32)
    absmax = _per_channel_absmax(weight)
    if clip_ratio is not None:
        absmax = clip_ratio.to(absmax.dtype) * absmax
    scale = (absmax / qmax).to(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    shape = (-1,) + (1,) * (weight.dim() - 1)
    codes = torch.clamp(torch.round(weight.detach() / safe.reshape(shape)), -qmax.reshape(shape) - 1, qmax.reshape(shape))
    return QuantizedWeight(codes=codes.to(torch.int8), scale=scale, bits=max(bits))


def fake_quantize_weight(weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Q_b(W) as a float tensor."""
    return quantize_weight(weight, bits, clip_ratio).dequantize().to(weight.dtype)


def channel_quant_error(weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """||Q_b(W_c) - W_c||^2 for every output channel c."""
    diff = fake_quantize_weight(weight, bits, clip_ratio) - weight.detach()
    return diff.reshape(weight.shape[0], -1).pow(2).sum(dim=1)


@dataclass
class ActQuantParams:
    """Affine per-tensor activation quantization: scale, zero point, bits."""

    scale: float
    zero_point: int
    bits: int

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """clamp(round(x / s) + z, 0, 2^b - 1) as floats; the division in float32, as onnxruntime's QuantizeLinear does it."""
        scale = torch.tensor(self.scale, dtype=torch.float32)
        return torch.clamp(torch.round(x.to(torch.float32) / scale) + self.zero_point, 0, 2**self.bits - 1)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return (self.codes(x) - self.zero_point) * self.scale


class MinMaxObserver:
    """Running min and max of every tensor seen; the range always contains 0."""

    def __init__(self) -> None:
        self.lo = 0.0
        self.hi = 0.0

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def params(self, bits: int) -> ActQuantParams:
        return affine_params(self.lo, self.hi, bits)


def affine_params(lo: float, hi: float, bits: int) -> ActQuantParams:
    """The affine quantizer spanning [lo, hi] (lo <= 0 <= hi) with 2^b levels."""
    scale = max(hi - lo, 1e-8) / (2**bits - 1)
    return ActQuantParams(scale=scale, zero_point=int(round(-lo / scale)), bits=bits)


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    if noise_energy == 0:
        return math.inf
    return 10 * math.log10(signal_energy / noise_energy) if signal_energy > 0 else -math.inf
