"""Hutchinson estimates of the Hessian trace of every layer's weight block, and of every output channel.

For Rademacher v over all quantized weights at once, E[v_l^T (H v)_l] = Tr(H_l): one Hessian-vector
product (reverse over reverse) serves every layer and channel. Probes cycle through data batches, so
the estimate is of the Hessian of the mean loss over the data. Probing stops when every layer's
standard error is under `tol` times its trace, or at `max_probes`, or after `max_seconds`.

The running sums (per layer and per channel, and of squares), the probe count and the generator's
state are checkpointed after every probe; a run interrupted (Ctrl-C) resumes from the last complete
probe and ends with exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import sys
import time
import base64
from dataclasses import dataclass, field
from typing import Callable, Protocol

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
    resumed_from: int = 0  # probes read from a checkpoint of an interrupted run


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


class Checkpoint(Protocol):
    """Where the running state of an unfinished estimate is kept (written atomically)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...

    def clear(self) -> None: ...


@dataclass
class RunningSums:
    """Everything needed to continue an estimate: sums and sums of squares, probes, generator state."""

    layer_sum: np.ndarray
    layer_sq: np.ndarray
    channel_sum: list[np.ndarray]
    channel_sq: list[np.ndarray]
    probes: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    generator_state: bytes = field(default=b"", repr=False)

    @classmethod
    def zeros(cls, channels: list[int]) -> "RunningSums":
        n = len(channels)
        return cls(np.zeros(n), np.zeros(n), [np.zeros(c) for c in channels], [np.zeros(c) for c in channels])

    def add(self, i: int, per_channel: np.ndarray) -> None:
        self.channel_sum[i] += per_channel
        self.channel_sq[i] += per_channel**2
        self.layer_sum[i] += per_channel.sum()
        self.layer_sq[i] += per_channel.sum() ** 2

    def to_json(self) -> dict:
        """Floats as JSON numbers (repr round-trips float64 exactly); the generator state in base64."""
        return {
            "layer_sum": self.layer_sum.tolist(),
            "layer_sq": self.layer_sq.tolist(),
            "channel_sum": [c.tolist() for c in self.channel_sum],
            "channel_sq": [c.tolist() for c in self.channel_sq],
            "probes": self.probes,
            "seconds": self.seconds,
            "generator_state": base64.b64encode(self.generator_state).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict, channels: list[int]) -> "RunningSums | None":
        """The saved sums, or None when they do not fit these layers."""
        try:
            sums = cls(
                layer_sum=np.array(data["layer_sum"], dtype=np.float64),
                layer_sq=np.array(data["layer_sq"], dtype=np.float64),
                channel_sum=[np.array(c, dtype=np.float64) for c in data["channel_sum"]],
                channel_sq=[np.array(c, dtype=np.float64) for c in data["channel_sq"]],
                probes=int(data["probes"]),
                seconds=float(data["seconds"]),
                generator_state=base64.b64decode(data["generator_state"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if [len(c) for c in sums.channel_sum] != channels or [len(c) for c in sums.channel_sq] != channels:
            return None
        sums.resumed_from = sums.probes
        return sums


def _start(channels: list[int], generator: torch.Generator, checkpoint: Checkpoint | None) -> RunningSums:
    saved = checkpoint.load() if checkpoint is not None else None
    sums = RunningSums.from_json(saved, channels) if saved else None
    if sums is None or sums.probes == 0:
        return RunningSums.zeros(channels)
    generator.set_state(torch.frombuffer(bytearray(sums.generator_state), dtype=torch.uint8))
    return sums


def _save(sums: RunningSums, generator: torch.Generator, checkpoint: Checkpoint | None) -> None:
    if checkpoint is not None:
        sums.generator_state = generator.get_state().numpy().tobytes()
        checkpoint.save(sums.to_json())


def _probe(model: nn.Module, weights: list[torch.Tensor], x, target, loss_fn, generator) -> list[np.ndarray]:
    """One Hutchinson probe: v_c^T (H v)_c for every output channel c of every layer."""
    loss = loss_fn(model(x), target)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    vs = [_rademacher(w.shape, generator) for w in weights]
    hvs = torch.autograd.grad(grads, weights, grad_outputs=vs)
    return [(v * hv).reshape(v.shape[0], -1).sum(dim=1).double().numpy() for v, hv in zip(vs, hvs)]


def _show(sums: RunningSums, worst: float, settings: ProbeSettings) -> None:
    done = sums.probes - sums.resumed_from
    left = sums.seconds / max(done, 1) * (settings.max_probes - sums.probes)
    resumed = f" (resumed from {sums.resumed_from})" if sums.resumed_from else ""
    print(
        f"\rhessian: probe {sums.probes}/{settings.max_probes}{resumed}, worst relative stderr "
        f"{worst:.1%} (target {settings.tol:.0%}), {sums.seconds:.0f} s, at most {left:.0f} s left ",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _estimate(sums: RunningSums) -> tuple[np.ndarray, np.ndarray]:
    return sums.layer_sum / sums.probes, _stderr(sums.layer_sum, sums.layer_sq, sums.probes)


def _stop_reason(sums: RunningSums, settings: ProbeSettings) -> str | None:
    """Why probing stops now (checked before each probe, so a resumed run stops where the first would)."""
    if sums.probes == 0:
        return None
    if sums.probes >= settings.min_probes and _worst_relative_error(*_estimate(sums)) <= settings.tol:
        return "tolerance"
    if sums.seconds >= settings.max_seconds:
        return "max_seconds"
    if sums.probes >= settings.max_probes:
        return "max_probes"
    return None


def hutchinson_traces(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool = True,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    checkpoint: Checkpoint | None = None,
) -> HessianTraces:
    """Tr(H_l) for each named layer's weight, H the Hessian of loss_fn(model(x), targets).

    With a `checkpoint`, the running state is saved after every probe and a saved state is resumed.
    """
    weights = [model.get_submodule(name).weight for name in layer_names]
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(x), generator=generator)
    batches = list(torch.split(order, settings.batch_size))
    sums = _start([w.shape[0] for w in weights], generator, checkpoint)
    if progress and sums.resumed_from:
        print(f"hessian: resuming from {sums.resumed_from} probes saved in the cache", file=sys.stderr)
    try:
        model.eval()
        while (stop_reason := _stop_reason(sums, settings)) is None:
            started = time.perf_counter()
            idx = batches[sums.probes % len(batches)]
            for i, per_channel in enumerate(_probe(model, weights, x[idx], targets[idx], loss_fn, generator)):
                sums.add(i, per_channel)
            sums.probes += 1
            sums.seconds += time.perf_counter() - started
            _save(sums, generator, checkpoint)
            if progress:
                _show(sums, _worst_relative_error(*_estimate(sums)), settings)
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        if progress:
            print(file=sys.stderr)
    probes = sums.probes
    return HessianTraces(
        layer_names=list(layer_names),
        trace=sums.layer_sum / probes,
        stderr=_stderr(sums.layer_sum, sums.layer_sq, probes),
        probes=probes,
        channel_trace=[s / probes for s in sums.channel_sum],
        channel_stderr=[_stderr(s, q, probes) for s, q in zip(sums.channel_sum, sums.channel_sq)],
        seconds=sums.seconds,
        stop_reason=stop_reason,
        resumed_from=sums.resumed_from,
    )
