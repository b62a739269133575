"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): per layer and width,
learn whether each weight rounds up or down so that the layer's output error on the calibration data is least.

The scales stay those of round-to-nearest (the quantizer's clip ratios); only the rounding moves. With the layer's
FP32 inputs x (the FP32 model's, not the quantized model's: so the result depends on the layer and width alone and is
cached per (layer, width), whatever plan uses it) the output error of weights W + D is exactly quadratic,

    E||D x||^2 = sum_c D_c H D_c^T,   H = E[x x^T] over the calibration samples and output positions

(x: the layer's input patch; a grouped conv has one H per group). One pass over the data gives every layer's H
(input_moments); the codes are clamp(floor(W / s) + h(V), -2^(b-1), 2^(b-1) - 1) with the rectified sigmoid h,
V learned with Adam for ITERATIONS steps on the error relative to round-to-nearest's plus REGULARIZATION times
sum(1 - |2h - 1|^beta), beta annealed from 20 to 2 after a warm-up of WARMUP of the steps (the paper's schedule,
far fewer steps: seconds per layer). h is then rounded to 0 or 1; an output channel whose learned rounding has a
larger error than nearest's (the error is a sum over channels) keeps nearest's. Widths above LEARNED_BITS round to
nearest (their rounding error is already below the activations'). Bias correction, when on, is computed from the
learned codes (the mean input patch comes from the same pass).
"""

from __future__ import annotations

import base64
import copy

import numpy as np
import torch
from torch import nn

from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, quantizable_modules
from mpq.quant.affine import QuantizedWeight
from mpq.quant.bias_correction import output_shift
from mpq.quant.formats import WeightFormat
from mpq.quant.hooks import pass_inputs

ITERATIONS = 200
RANK = 64  # eigen-directions of H kept exactly (see OutputError)
LEARNING_RATE = 0.05
REGULARIZATION = 0.05
WARMUP = 0.2
BETA = (20.0, 2.0)
ZETA, GAMMA = 1.1, -0.1
LEARNED_BITS = 6
CHUNK_ELEMENTS = 2**24  # patches unfolded at once (64 MB of float32)
SETTINGS = {
    "iterations": ITERATIONS,
    "lr": LEARNING_RATE,
    "reg": REGULARIZATION,
    "warmup": WARMUP,
    "rank": RANK,
    "version": 1,
}


class InputMoments:
    """H = E[x x^T] per group ([groups, K, K]) and the mean patch ([groups, K]) of one layer's inputs."""

    def __init__(self, module: nn.Module) -> None:
        self.linear = isinstance(module, nn.Linear)
        self.groups = 1 if self.linear else module.groups
        self.size = module.weight[0].numel()  # K: (in / groups) * kernel, or in_features
        self.patches = None if self.linear else _patch_layer(module)
        self.outer = torch.zeros(self.groups, self.size, self.size, dtype=torch.float64)
        self.total = torch.zeros(self.groups, self.size, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        if self.linear:
            rows = x.detach().reshape(1, -1, self.size).double().cpu()
            self._accumulate(rows.transpose(1, 2).unsqueeze(0))
            return
        per_sample = max(1, x[0].numel() * self.size // max(1, x.shape[1] // self.groups))
        step = max(1, CHUNK_ELEMENTS // per_sample)
        for start in range(0, x.shape[0], step):
            with torch.no_grad():
                p = self.patches(x[start : start + step].detach())
            self._accumulate(p.reshape(p.shape[0], self.groups, self.size, -1).double().cpu())

    def _accumulate(self, p: torch.Tensor) -> None:  # [batch, groups, K, positions]
        self.outer += torch.einsum("bgkl,bgjl->gkj", p, p)
        self.total += p.sum(dim=(0, 3))
        self.count += p.shape[0] * p.shape[3]

    def hessian(self) -> torch.Tensor:
        return (self.outer / max(self.count, 1)).float()

    def mean_patch(self, out_channels: int) -> torch.Tensor:
        """m_{c,k}: the mean input patch weight (c, k) multiplies, [out_channels, K]."""
        mean = self.total / max(self.count, 1)
        return mean.repeat_interleave(out_channels // self.groups, dim=0)


def _patch_layer(module: nn.Module) -> nn.Module:
    """A copy of the conv whose output channel (g, k) is input element k of group g's patch: its forward (padding,
    stride, dilation, its own padding module) unfolds the input."""
    layer = copy.deepcopy(module)
    groups, size = module.groups, module.weight[0].numel()
    eye = torch.eye(size, dtype=module.weight.dtype, device=module.weight.device)
    layer.weight = nn.Parameter(eye.repeat(groups, 1).reshape(groups * size, *module.weight.shape[1:]))
    layer.bias = None
    layer.out_channels = groups * size
    return layer


def input_moments(model: nn.Module, names: list[str], data: Dataset, batch_size: int) -> dict[str, InputMoments]:
    """Each named layer's input moments over the data, in one FP32 pass."""
    modules = quantizable_modules(model)
    moments = {n: InputMoments(modules[n]) for n in names}
    pass_inputs(model, {n: m.add for n, m in moments.items()}, data, batch_size)
    return moments


def _rectified(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


class OutputError:
    """D -> E||D x||^2 per output channel for H = E[x x^T] of rank up to RANK, else H's top RANK eigen-directions
    and the mean of the rest for every other direction: D H D^T ~ ||D A||^2 + sigma^2 ||D||^2 with
    A = U_r sqrt(lambda_r - sigma^2) (exact when K <= RANK; a cost of out * K * RANK per evaluation)."""

    def __init__(self, hessian: torch.Tensor) -> None:  # [groups, K, K]
        values, vectors = torch.linalg.eigh(hessian.double())
        values = values.clamp_min(0)
        size = hessian.shape[1]
        rest = values[:, : max(size - RANK, 0)]
        self.sigma2 = rest.mean(dim=1) if rest.shape[1] else torch.zeros(hessian.shape[0], dtype=values.dtype)
        top, basis = values[:, -RANK:], vectors[:, :, -RANK:]
        self.factor = (basis * (top - self.sigma2[:, None]).clamp_min(0).sqrt()[:, None, :]).float()
        self.sigma2 = self.sigma2.float()[:, None]

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        groups = self.factor.shape[0]
        d = delta.reshape(groups, -1, delta.shape[1])
        projected = torch.bmm(d, self.factor).pow(2).sum(dim=2) + self.sigma2 * d.pow(2).sum(dim=2)
        return projected.reshape(-1)


def learn_rounding(weight: torch.Tensor, scale: torch.Tensor, bits: int, hessian: torch.Tensor) -> torch.Tensor:
    """Codes [out, K] (int8) for weight [out, K] at per-weight scales `scale` (see the module docstring)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    errors = OutputError(hessian)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    ratio = weight / safe
    floor = torch.floor(ratio)
    nearest = torch.clamp(torch.round(ratio), qmin, qmax)
    base = errors(safe * nearest - weight)
    norm = base.sum().clamp_min(1e-30)
    rest = (ratio - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    warm = int(WARMUP * ITERATIONS)
    for step in range(ITERATIONS):
        h = _rectified(v)
        loss = errors(safe * torch.clamp(floor + h, qmin, qmax) - weight).sum() / norm
        if step >= warm:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (step - warm) / max(1, ITERATIONS - warm))
            loss = loss + REGULARIZATION * (1 - (2 * h - 1).abs().pow(beta)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.clamp(floor + (v >= 0).to(floor.dtype), qmin, qmax)
        better = errors(safe * learned - weight) < base
    codes = torch.where(better.reshape(-1, 1) & (scale > 0), learned, nearest)
    return codes.to(torch.int8)


def _bits_text(up: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(up.reshape(-1).numpy().astype(np.uint8)).tobytes()).decode()


def _bits_from_text(text: str, count: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=count).astype(bool))


class LearnedRounding:
    """AdaRound's codes (and bias shifts) of the model's layers, per (layer, width): learned when first asked for,
    cached in mpq's cache (JSON: one bit per weight, rounded up or not), reused by every plan and baseline."""

    def __init__(
        self, prepared: PreparedModel, data: Dataset, batch_size: int, cache: Cache, fmt: WeightFormat, key: dict
    ) -> None:
        self.prepared, self.data, self.batch_size, self.cache, self.fmt = prepared, data, batch_size, cache, fmt
        self.key = {"model": prepared.fingerprint, "data": data.fingerprint(), **key, **fmt.cache_fields(), **SETTINGS}
        self.modules = quantizable_modules(prepared.folded, embeddings=True)
        self._learned: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._moments: dict[str, InputMoments] | None = None

    def learns(self, name: str, bits: int) -> bool:
        return bits <= LEARNED_BITS and not isinstance(self.modules[name], nn.Embedding)

    def codes(self, name: str, bits: int, clip_ratio: torch.Tensor) -> torch.Tensor:
        """Layer `name`'s codes at `bits` for every output channel, shaped like its weight (int8)."""
        return self._get(name, bits, clip_ratio)[0]

    def shift(self, name: str, bits: int, clip_ratio: torch.Tensor) -> torch.Tensor:
        """E[Q(W) x - W x] per output channel with the learned codes (bias correction)."""
        return self._get(name, bits, clip_ratio)[1]

    def _nearest(self, name: str, bits: int, clip_ratio: torch.Tensor) -> tuple[QuantizedWeight, torch.Tensor]:
        weight = self.modules[name].weight.detach()
        q = self.fmt.quantize(weight, [bits] * weight.shape[0], clip_ratio)
        spread = QuantizedWeight(torch.ones_like(q.codes), q.scale, q.bits, q.group_size).dequantize()
        return q, spread.reshape(weight.shape[0], -1).to(weight.device)

    def _get(self, name: str, bits: int, clip_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (name, bits) in self._learned:
            return self._learned[name, bits]
        weight = self.modules[name].weight.detach()
        q, scale = self._nearest(name, bits, clip_ratio)
        rows = weight.reshape(weight.shape[0], -1).float()
        floor = torch.floor(rows / torch.where(scale > 0, scale, torch.ones_like(scale)))
        key = {**self.key, "layer": name, "bits": bits}
        cached = self.cache.load("adaround", key)
        if cached is None:
            moments = self._moments_of(name)
            codes = learn_rounding(rows.cpu(), scale.cpu(), bits, moments.hessian()).to(weight.device)
            q.codes = codes.reshape(weight.shape)
            shift = output_shift(
                weight, q.dequantize().to(weight.device), moments.mean_patch(weight.shape[0]).reshape(weight.shape)
            )
            cached = {"up": _bits_text((codes > floor).cpu()), "shift": shift.tolist()}
            self.cache.save("adaround", key, cached)
        up = _bits_from_text(cached["up"], rows.numel()).reshape(rows.shape).to(rows.device)
        qmax = 2 ** (bits - 1) - 1
        codes = torch.clamp(floor + up.to(floor.dtype), -qmax - 1, qmax).to(torch.int8).reshape(weight.shape)
        self._learned[name, bits] = (codes, torch.tensor(cached["shift"], dtype=torch.float64))
        return self._learned[name, bits]

    def _moments_of(self, name: str) -> InputMoments:
        """Every learnable layer's input moments, from one pass the first time any is needed."""
        if self._moments is None:
            names = [n for n, m in self.modules.items() if not isinstance(m, nn.Embedding)]
            self._moments = input_moments(self.prepared.folded, names, self.data, self.batch_size)
        return self._moments[name]
