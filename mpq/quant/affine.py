"""Quantizers: symmetric weights, one scale per output channel or per group; affine per-tensor activations.

Weights, b bits. Output channel c's weights W_c, flattened (W[c].reshape(-1): for a conv in (C_in, kh, kw)
order), are cut into groups of g consecutive weights, k = 0, 1, ...: group k holds W_c[k*g : min((k+1)*g, n)]
(n weights per channel; the last group is shorter when g does not divide n; no group size: one group of n).
Each group has its own clip ratio r_{c,k} (1 = min-max; mpq.quant.observers chooses it) and scale:
    s_{c,k} = r_{c,k} * max|W_{c,k}| / (2^(b-1) - 1)
    q       = clamp(round(W / s_{c,k}), -2^(b-1), 2^(b-1) - 1)      (the integer codes)
    Q_b(W)  = s_{c,k} * q
Scales are float32; there is no zero point (symmetric).
Activations, b bits, range [lo, hi] chosen on calibration data (lo <= 0 <= hi; mpq.quant.observers):
    s = (hi - lo) / (2^b - 1),  z = round(-lo / s)
    Q_b(x) = s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpq.quant.widths import groups_per_channel


def grouped(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """The weights as rows of one group each, [out_channels * groups, g], the last group padded with zeros
    (a zero changes neither a group's largest magnitude nor its error); without a group size, [out_channels, n]."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if group_size is None:
        return rows
    groups = groups_per_channel(rows.shape[1], group_size)
    padded = torch.nn.functional.pad(rows, (0, groups * group_size - rows.shape[1]))
    return padded.reshape(-1, group_size)


def _spread(per_group: torch.Tensor, per_channel: int, group_size: int | None) -> torch.Tensor:
    """One value per group ([out] or [out, groups]) repeated over its weights: [out, n]."""
    if group_size is None:
        return per_group.reshape(-1, 1).expand(-1, per_channel)
    return per_group.repeat_interleave(group_size, dim=1)[:, :per_channel]


@dataclass
class QuantizedWeight:
    """Integer codes (int8 tensor shaped like the weight) and float32 scales: one per output channel ([out]),
    or with a group size g one per group of g consecutive weights of a channel ([out, ceil(n / g)])."""

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    group_size: int | None = None

    def dequantize(self) -> torch.Tensor:
        rows = self.codes.reshape(self.codes.shape[0], -1)
        scale = _spread(self.scale, rows.shape[1], self.group_size)
        return (rows.to(torch.float32) * scale).reshape(self.codes.shape)


def quantize_weight(
    weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None, group_size: int | None = None
) -> QuantizedWeight:
    """Symmetric quantization of a weight (dim 0 = output channels), one scale per output channel or per group of
    `group_size` weights; the scale spans `clip_ratio` (one per scale; None = 1, min-max) of its largest magnitude."""
    return quantize_weight_channels(weight, [bits] * weight.shape[0], clip_ratio, group_size)


def quantize_weight_channels(
    weight: torch.Tensor, bits: "list[int]", clip_ratio: torch.Tensor | None = None, group_size: int | None = None
) -> QuantizedWeight:
    """As quantize_weight, but output channel c takes its own width bits[c] (its codes fit in bits[c] bits);
    `bits` of the result is the widest."""
    out = weight.shape[0]
    scale, qmax, levels = _levels(weight, bits, clip_ratio, group_size)
    scale = scale.reshape(out) if group_size is None else scale
    return QuantizedWeight(
        codes=levels.to(torch.int8).reshape(weight.shape), scale=scale, bits=max(bits), group_size=group_size
    )


def _levels(weight: torch.Tensor, bits: "list[int]", clip_ratio, group_size: int | None) -> tuple:
    """(float32 scales [out, groups], qmax [out, 1], the codes as float32 [out, n]: clamp(round(W / s)))."""
    out, per_channel = weight.shape[0], weight[0].numel()
    groups = groups_per_channel(per_channel, group_size)
    absmax = grouped(weight, group_size).abs().amax(dim=1).reshape(out, groups)
    if clip_ratio is not None:
        absmax = clip_ratio.to(absmax.device, absmax.dtype).reshape(out, groups) * absmax
    qmax = torch.tensor([2 ** (b - 1) - 1 for b in bits], dtype=torch.float32, device=weight.device).reshape(out, 1)
    scale = (absmax / qmax).to(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    rows = weight.detach().reshape(out, per_channel)
    levels = torch.div(rows, _spread(safe, per_channel, group_size)).round_().clamp_(-qmax - 1, qmax)
    return scale, qmax, levels


def fake_quantize_weight(
    weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None, group_size: int | None = None
) -> torch.Tensor:
    """Q_b(W) as a float tensor: quantize_weight(...).dequantize() in one buffer (the same numbers: the codes are
    small integers, exact in float32, times the same float32 scales), without int8 codes between."""
    scale, _, levels = _levels(weight, [bits] * weight.shape[0], clip_ratio, group_size)
    return levels.mul_(_spread(scale, levels.shape[1], group_size)).reshape(weight.shape).to(weight.dtype)


def channel_quant_error(
    weight: torch.Tensor, bits: int, clip_ratio: torch.Tensor | None = None, group_size: int | None = None
) -> torch.Tensor:
    """||Q_b(W_c) - W_c||^2 for every output channel c (its groups' errors summed)."""
    diff = fake_quantize_weight(weight, bits, clip_ratio, group_size) - weight.detach()
    return diff.reshape(weight.shape[0], -1).pow(2).sum(dim=1)


@dataclass
class ActQuantParams:
    """Affine per-tensor activation quantization: scale, zero point, bits."""

    scale: float
    zero_point: int
    bits: int

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """clamp(round(x / s) + z, 0, 2^b - 1) as floats; the division in float32, as onnxruntime's QuantizeLinear
        does it."""
        scale = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
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
