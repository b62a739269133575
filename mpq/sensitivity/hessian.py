"""Hutchinson estimates of the Hessian trace of every layer's weight block, and of every output channel.

For Rademacher v over all quantized weights at once, E[v_l^T (H v)_l] = Tr(H_l): one Hessian-vector
product (`mpq.sensitivity.hvp`, forward over reverse by default) serves every layer and channel.
Probe i uses the batch i mod (number of batches) of a seeded permutation of the data and a vector v
drawn from a generator seeded by (seed, i) alone, so the estimate is of the Hessian of the mean loss
over the data and probe i is the same whoever computes it. Probing stops when every layer's
standard error is under `tol` times its trace, or at `max_probes`, or after `max_seconds`.

Under torch.distributed (torchrun) the ranks compute probes first + r, r = 0..N-1, in rounds; the
per-channel values of each round are all-gathered and added in probe order, so every rank holds the
same running sums and stops together, and N ranks give the numbers of one process (the same probes,
added in the same order).

The running sums (per layer and per channel, and of squares) and the probe count are checkpointed
after every round; a run interrupted (Ctrl-C) resumes from the last complete round and ends with
exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mpq.distributed import Ranks
from mpq.errors import MpqError
from mpq.sensitivity.hvp import HVP_METHODS, hessian_vector_product


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
    hvp: str = "fwd-rev"  # "fwd-rev" (forward over reverse) or "rev-rev" (reverse over reverse)
    chunk_size: int = 0  # samples per chunk of a probe's batch (0: the whole batch at once)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32).mul_(2).sub_(1)


def probe_generator(seed: int, index: int) -> torch.Generator:
    """The generator of probe `index`'s vectors: a function of (seed, index) only."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def probe_batches(n: int, settings: ProbeSettings) -> list[torch.Tensor]:
    """The sample indices of each batch; probe i uses batch i mod len(batches)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    return list(torch.split(order, settings.batch_size))


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
    """Everything needed to continue an estimate: sums and sums of squares, probes, seconds."""

    layer_sum: np.ndarray
    layer_sq: np.ndarray
    channel_sum: list[np.ndarray]
    channel_sq: list[np.ndarray]
    probes: int = 0
    seconds: float = 0.0
    resumed_from: int = 0

    @classmethod
    def zeros(cls, channels: list[int]) -> "RunningSums":
        n = len(channels)
        return cls(np.zeros(n), np.zeros(n), [np.zeros(c) for c in channels], [np.zeros(c) for c in channels])

    def add(self, i: int, per_channel: np.ndarray) -> None:
        self.channel_sum[i] += per_channel
        self.channel_sq[i] += per_channel**2
        self.layer_sum[i] += per_channel.sum()
        self.layer_sq[i] += per_channel.sum() ** 2

    def add_probe(self, flat: np.ndarray) -> None:
        """One probe's per-channel values of every layer, concatenated in layer order."""
        start = 0
        for i, channels in enumerate(self.channel_sum):
            self.add(i, flat[start : start + len(channels)])
            start += len(channels)
        self.probes += 1

    def to_json(self) -> dict:
        """Floats as JSON numbers (repr round-trips float64 exactly)."""
        return {
            "layer_sum": self.layer_sum.tolist(),
            "layer_sq": self.layer_sq.tolist(),
            "channel_sum": [c.tolist() for c in self.channel_sum],
            "channel_sq": [c.tolist() for c in self.channel_sq],
            "probes": self.probes,
            "seconds": self.seconds,
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
            )
        except (KeyError, TypeError, ValueError):
            return None
        if [len(c) for c in sums.channel_sum] != channels or [len(c) for c in sums.channel_sq] != channels:
            return None
        sums.resumed_from = sums.probes
        return sums


def _start(channels: list[int], checkpoint: Checkpoint | None, ranks: Ranks) -> RunningSums:
    """The saved sums (read by rank 0 and sent to all), or zeros."""
    saved = checkpoint.load() if checkpoint is not None and ranks.is_main else None
    saved = ranks.broadcast(saved)
    sums = RunningSums.from_json(saved, channels) if saved else None
    return sums if sums is not None and sums.probes > 0 else RunningSums.zeros(channels)


def _save(sums: RunningSums, checkpoint: Checkpoint | None, ranks: Ranks) -> None:
    if checkpoint is not None and ranks.is_main:
        checkpoint.save(sums.to_json())


@dataclass
class ProbeProblem:
    """What every probe needs: the model, its quantized weights, the data and the loss."""

    model: nn.Module
    keys: list[str]  # the weights' names in the model's state dict
    weights: list[torch.Tensor]
    x: torch.Tensor
    targets: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: list[torch.Tensor]
    settings: ProbeSettings
    method: str = ""  # the Hessian-vector product in use: settings.hvp, or rev-rev where fwd-rev fails
    fallback: str = ""  # why it is not settings.hvp

    def __post_init__(self) -> None:
        self.method = self.method or self.settings.hvp

    def probe(self, index: int) -> np.ndarray:
        """Probe `index`: v_c^T (H v)_c for every output channel c of every layer, concatenated."""
        generator = probe_generator(self.settings.seed, index)
        vs = [_rademacher(w.shape, generator) for w in self.weights]
        idx = self.batches[index % len(self.batches)]
        hvs = self._hvp(self.x[idx], self.targets[idx], vs)
        return np.concatenate([(v * hv).reshape(v.shape[0], -1).sum(dim=1).double().numpy() for v, hv in zip(vs, hvs)])

    def _hvp(self, x, target, vs) -> list[torch.Tensor]:
        try:
            return hessian_vector_product(self.model, self.keys, self.weights, x, target, self.loss_fn, vs, self.method, self.settings.chunk_size)
        except (RuntimeError, NotImplementedError) as exc:
            if self.method != "fwd-rev":
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.fallback = f"forward over reverse fails on this model or loss ({first}); using reverse over reverse"
            self.method = "rev-rev"
            return self._hvp(x, target, vs)


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


def _enough_probes(sums: RunningSums, settings: ProbeSettings) -> str | None:
    if sums.probes >= settings.min_probes and _worst_relative_error(*_estimate(sums)) <= settings.tol:
        return "tolerance"
    if sums.probes >= settings.max_probes:
        return "max_probes"
    return None


def _stop_reason(sums: RunningSums, settings: ProbeSettings) -> str | None:
    """Why probing stops now (checked before each probe, so a resumed run stops where the first would)."""
    if sums.probes == 0:
        return None
    reason = _enough_probes(sums, settings)
    if reason == "tolerance":
        return reason
    if sums.seconds >= settings.max_seconds:
        return "max_seconds"
    return reason


def _run_round(problem: ProbeProblem, sums: RunningSums, ranks: Ranks) -> None:
    """Probes sums.probes + r on rank r, gathered; added in probe order while more are needed."""
    started = time.perf_counter()
    mine = problem.probe(sums.probes + ranks.rank)
    gathered = ranks.gather(np.append(mine, time.perf_counter() - started))
    for i, values in enumerate(gathered):
        if i > 0 and _enough_probes(sums, problem.settings):
            break  # the probes one process would not have made
        sums.add_probe(values[:-1])
    sums.seconds += max(float(values[-1]) for values in gathered)  # the same on every rank


def _check_settings(settings: ProbeSettings) -> None:
    if settings.hvp not in HVP_METHODS:
        raise MpqError(f"unknown Hessian-vector product {settings.hvp!r}: use {' or '.join(HVP_METHODS)}")
    if settings.chunk_size < 0:
        raise MpqError(f"chunk_size={settings.chunk_size} must be 0 (whole batch) or a positive number of samples")


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

    With a `checkpoint`, the running state is saved after every round of probes and a saved state is
    resumed. Under torch.distributed, the probes are split across ranks (see the module docstring).
    """
    _check_settings(settings)
    ranks = Ranks.current()
    progress = progress and ranks.is_main
    weights = [model.get_submodule(name).weight for name in layer_names]
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    keys = [f"{name}.weight" for name in layer_names]
    problem = ProbeProblem(model, keys, weights, x, targets, loss_fn, probe_batches(len(x), settings), settings)
    sums = _start([w.shape[0] for w in weights], checkpoint, ranks)
    if progress and sums.resumed_from:
        print(f"hessian: resuming from {sums.resumed_from} probes saved in the cache", file=sys.stderr)
    try:
        model.eval()
        while (stop_reason := _stop_reason(sums, settings)) is None:
            _run_round(problem, sums, ranks)
            _save(sums, checkpoint, ranks)
            if progress and problem.fallback:
                print(f"\rhessian: {problem.fallback}", file=sys.stderr)
                problem.fallback = ""
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
