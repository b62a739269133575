"""Hutchinson estimates of the Hessian trace of every layer's weight block, and of every output channel.

For Rademacher v over all quantized weights at once, E[v_l^T (H v)_l] = Tr(H_l): one Hessian-vector
product (reverse over reverse) serves every layer and channel. Probes cycle through data batches, so
the estimate is of the Hessian of the mean loss over the data. Probing stops when every layer's
standard error is under `tol` times its trace, or at `max_probes`, or after `max_seconds`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class HessianTraces:
    """Per-layer and per-channel trace estimates (means over probes) with standard errors."""

    layer_names: list[str]
    trace: np.ndarray  # [layers]
    stderr: np.ndarray  # [layers]
    probes: int
    channel_trace: list[np.ndarray]  # per layer: [out_channels]
    channel_stderr: list[np.ndarray]
    seconds: float
    stop_reason: str


@dataclass(frozen=True)
class ProbeSettings:
    tol: float = 0.05
    min_probes: int = 8
    max_probes: int = 32
    max_seconds: float = 600.0
    batch_size: int = 8
    seed: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32).mul_(2).sub_(1)


def _stderr(sum_: np.ndarray, sum_sq: np.ndarray, n: int) -> np.ndarray:
    if n < 2:
        return np.full_like(sum_, np.inf)
    mean = sum_ / n
    var = np.maximum(sum_sq / n - mean**2, 0.0) * n / (n - 1)
    return np.sqrt(var / n)


def _worst_relative_error(trace: np.ndarray, stderr: np.ndarray) -> float:
    relative = np.where(trace > 0, stderr / np.maximum(np.abs(trace), 1e-300), np.inf)
    return float(relative.max())


def hutchinson_traces(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool = True,
) -> HessianTraces:
    """Tr(H_l) for each named layer's weight, H the Hessian of cross-entropy(model(x), targets)."""
    weights = [model.get_submodule(name).weight for name in layer_names]
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(x), generator=generator)
    batches = list(torch.split(order, settings.batch_size))
    n_layers = len(weights)
    layer_sum, layer_sq = np.zeros(n_layers), np.zeros(n_layers)
    channel_sum = [np.zeros(w.shape[0]) for w in weights]
    channel_sq = [np.zeros(w.shape[0]) for w in weights]
    start = time.perf_counter()
    probes, stop_reason = 0, "max_probes"
    try:
        model.eval()
        while probes < settings.max_probes:
            idx = batches[probes % len(batches)]
            loss = F.cross_entropy(model(x[idx]), targets[idx])
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            vs = [_rademacher(w.shape, generator) for w in weights]
            hvs = torch.autograd.grad(grads, weights, grad_outputs=vs)
            for i, (v, hv) in enumerate(zip(vs, hvs)):
                per_channel = (v * hv).reshape(v.shape[0], -1).sum(dim=1).double().numpy()
                channel_sum[i] += per_channel
                channel_sq[i] += per_channel**2
                layer_sum[i] += per_channel.sum()
                layer_sq[i] += per_channel.sum() ** 2
            probes += 1
            trace, stderr = layer_sum / probes, _stderr(layer_sum, layer_sq, probes)
            worst = _worst_relative_error(trace, stderr)
            elapsed = time.perf_counter() - start
            if progress:
                left = elapsed / probes * (settings.max_probes - probes)
                print(
                    f"\rhessian: probe {probes}/{settings.max_probes}, worst relative stderr "
                    f"{worst:.1%} (target {settings.tol:.0%}), {elapsed:.0f} s, at most {left:.0f} s left ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            if probes >= settings.min_probes and worst <= settings.tol:
                stop_reason = "tolerance"
                break
            if elapsed >= settings.max_seconds:
                stop_reason = "max_seconds"
                break
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        if progress:
            print(file=sys.stderr)
    return HessianTraces(
        layer_names=list(layer_names),
        trace=layer_sum / probes,
        stderr=_stderr(layer_sum, layer_sq, probes),
        probes=probes,
        channel_trace=[s / probes for s in channel_sum],
        channel_stderr=[_stderr(s, q, probes) for s, q in zip(channel_sum, channel_sq)],
        seconds=time.perf_counter() - start,
        stop_reason=stop_reason,
    )
