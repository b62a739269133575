"""Hutchinson estimates of the Hessian trace of every layer's weight block, and of every output channel.

Probe i draws a Rademacher vector v over all quantized weights from a generator seeded by (seed, i)
alone and uses the batch i mod (number of batches) of a seeded permutation of the data, so the
estimate is of the Hessian of the mean loss over the data and probe i is the same whoever computes it.
Two ways to use it (ProbeSettings.probing):

    per-layer   for each layer l, one Hessian-vector product with v_l on that layer only:
                v_l^T H_ll v_l, E = Tr(H_ll) (HAWQ-V2's estimator). A layer stops being probed once
                its own standard error is under `tol` times its trace, so the cost goes to the
                layers that need it.
    all-layers  one Hessian-vector product with v on every layer at once: v_l^T (H v)_l, also
                E = Tr(H_ll), but with the cross terms sum_{k != l} v_l^T H_lk v_k (mean 0, variance
                2 sum_{k != l} ||H_lk||_F^2) in every layer's value.

A part of each trace may be known before probing (KnownPart: the Gauss-Newton trace, when the probes
estimate only the residual, mpq.sensitivity.residual); the tolerance is then on the sum.

Which reaches a tolerance sooner is the trade between the cost of L partial products and the
variance of the cross terms; on EfficientNet-Lite0 per-layer probing wins by a wide margin
(reports/hessian.md), so it is the default. Probing stops when every layer's standard error is under
`tol` times its trace (after `min_probes`), or at `max_probes`, or after `max_seconds`.

Under torch.distributed (torchrun) the ranks compute probes first + r, r = 0..N-1, in rounds; the
per-channel values of each round are all-gathered and added in probe order, so every rank holds the
same running sums and stops together, and N ranks give the numbers of one process (the same probes,
added in the same order).

The running sums (per layer and per channel, and of squares) and the probe count are checkpointed
after every round; a run interrupted (Ctrl-C) resumes from the last complete round and ends with
exactly the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mpq.device import drawn_on
from mpq.progress import bar, enabled, note
from mpq.sensitivity.distributed import Ranks
from mpq.sensitivity.hvp import hessian_vector_product
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import KnownPart, capped_layers


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
    layer_probes: np.ndarray | None = None  # [layers] probes each layer's estimate used (None: `probes` each)
    capped: np.ndarray | None = (
        None  # [layers] bool: a cap (max_probes, max_seconds) stopped it above tolerance (None: none)
    )
    notes: list[str] = field(default_factory=list)  # what the estimate could not do, one sentence each
    sample_trace: np.ndarray | None = field(
        default=None, repr=False
    )  # [samples, layers] for means over samples (in memory only)

    def probes_of(self, i: int) -> int:
        return int(self.layer_probes[i]) if self.layer_probes is not None else self.probes


@contextmanager
def weights_requiring_grad(model: nn.Module, weights: list[torch.Tensor]) -> Iterator[None]:
    """Only `weights` require grad inside (the model in eval mode); every parameter's flag restored after."""
    requires = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        model.eval()
        yield
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)


def _rademacher(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """±1 drawn from the CPU `generator`, then moved to `device`: the same vector on every device."""
    return drawn_on(torch.randint(0, 2, shape, generator=generator), device).to(torch.float32).mul_(2).sub_(1)


def probe_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The generator of probe `index`'s vectors: a function of (seed, index) only; another `stream` gives
    vectors independent of the probes' (e.g. a test before probing)."""
    entropy = [seed, index] if stream == 0 else [seed, index, stream]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def probe_batches(n: int, settings: ProbeSettings) -> list[torch.Tensor]:
    """The sample indices of each batch; probe i uses batch i mod len(batches)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))
    return list(torch.split(order, settings.batch_size))


def _stderr(sum_: np.ndarray, sum_sq: np.ndarray, n: "int | np.ndarray") -> np.ndarray:
    """Standard error of the mean from sums of n values and of their squares (n per entry or one for all);
    infinite where n < 2."""
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), np.shape(sum_))
    safe = np.maximum(n, 2)
    mean = sum_ / safe
    var = np.maximum(sum_sq / safe - mean**2, 0.0) * safe / (safe - 1)
    return np.where(n >= 2, np.sqrt(var / safe), np.inf)


def _worst_relative_error(trace: np.ndarray, stderr: np.ndarray) -> float:
    relative = np.where(trace > 0, stderr / np.maximum(np.abs(trace), 1e-300), np.inf)
    return float(relative.max(initial=0.0))


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
    probes: int = 0  # probe indices gone through
    seconds: float = 0.0
    resumed_from: int = 0
    counts: np.ndarray | None = None  # [layers] values added per layer (a layer may skip probes)

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.full(len(self.layer_sum), self.probes, dtype=np.int64)

    @classmethod
    def zeros(cls, channels: list[int]) -> "RunningSums":
        n = len(channels)
        return cls(np.zeros(n), np.zeros(n), [np.zeros(c) for c in channels], [np.zeros(c) for c in channels])

    def add(self, i: int, per_channel: np.ndarray) -> None:
        self.channel_sum[i] += per_channel
        self.channel_sq[i] += per_channel**2
        self.layer_sum[i] += per_channel.sum()
        self.layer_sq[i] += per_channel.sum() ** 2
        self.counts[i] += 1

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """One probe's per-channel values of every layer, concatenated in layer order, split by layer."""
        ends = np.cumsum([len(c) for c in self.channel_sum])
        return np.split(flat, ends[:-1])

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        """(trace, stderr) per layer, each over its own probes."""
        n = np.maximum(self.counts, 1)
        return self.layer_sum / n, _stderr(self.layer_sum, self.layer_sq, self.counts)

    def to_json(self) -> dict:
        """Floats as JSON numbers (repr round-trips float64 exactly)."""
        return {
            "layer_sum": self.layer_sum.tolist(),
            "layer_sq": self.layer_sq.tolist(),
            "channel_sum": [c.tolist() for c in self.channel_sum],
            "channel_sq": [c.tolist() for c in self.channel_sq],
            "probes": self.probes,
            "counts": self.counts.tolist(),
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
                counts=np.array(data["counts"], dtype=np.int64) if "counts" in data else None,
            )
        except (KeyError, TypeError, ValueError):
            return None
        if (
            [len(c) for c in sums.channel_sum] != channels
            or [len(c) for c in sums.channel_sq] != channels
            or len(sums.counts) != len(channels)
        ):
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

    def probe(self, index: int, active: np.ndarray) -> np.ndarray:
        """Probe `index`: v_c^T (H v)_c for every output channel c of every active layer (NaN for the others),
        concatenated in layer order; per-layer probing makes one product per active layer."""
        generator = probe_generator(self.settings.seed, index)
        vs = [_rademacher(w.shape, generator, w.device) for w in self.weights]
        idx = self.batches[index % len(self.batches)]
        x, target = self.x[idx], self.targets[idx]
        if self.settings.probing == "all-layers":
            hvs = self._hvp(x, target, self.keys, self.weights, vs)
        else:
            hvs = [self.layer_hvp(x, target, i, v) if on else None for i, (v, on) in enumerate(zip(vs, active))]
        return np.concatenate(
            [
                (v * hv.detach()).reshape(v.shape[0], -1).sum(dim=1).double().cpu().numpy()
                if hv is not None
                else np.full(v.shape[0], np.nan)
                for v, hv in zip(vs, hvs)
            ]
        )

    def layer_hvp(self, x, target, i: int, v: torch.Tensor) -> torch.Tensor:
        """H_ii v_i: the product with layer i's weight block, the other weights held constant."""
        others = [w for j, w in enumerate(self.weights) if j != i]
        for w in others:
            w.requires_grad_(False)
        try:
            return self._hvp(x, target, [self.keys[i]], [self.weights[i]], [v])[0]
        finally:
            for w in others:
                w.requires_grad_(True)

    def _hvp(self, x, target, keys, weights, vs) -> list[torch.Tensor]:
        try:
            return hessian_vector_product(
                self.model, keys, weights, (x, target), self.loss_fn, vs, self.method, self.settings.chunk_size
            )
        except (RuntimeError, NotImplementedError) as exc:
            if self.method != "fwd-rev":
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.fallback = f"forward over reverse fails on this model or loss ({first}); using reverse over reverse"
            self.method = "rev-rev"
            return self._hvp(x, target, keys, weights, vs)


def _postfix(sums: RunningSums, settings: ProbeSettings, known: KnownPart) -> str:
    active = int(_active(sums, settings, known).sum())
    worst = _worst_relative_error(*known.total(*sums.estimate()))
    return f"worst relative stderr {worst:.1%} (target {settings.tol:.0%}), {active} layers still probed"


def _layer_needs_probes(sums: RunningSums, settings: ProbeSettings, known: KnownPart) -> np.ndarray:
    """Per layer: fewer than min_probes, or a standard error over tol times its trace (or a trace <= 0),
    both of the sum with the known part."""
    return (sums.counts < settings.min_probes) | known.unsure(*sums.estimate(), settings.tol)


def _active(sums: RunningSums, settings: ProbeSettings, known: KnownPart) -> np.ndarray:
    """The layers the next probe computes: per-layer probing, those that still need probes; all-layers
    probing, every layer while any needs probes. None at max_probes."""
    needs = _layer_needs_probes(sums, settings, known) & (sums.counts < settings.max_probes)
    if settings.probing == "all-layers":
        return np.full(len(needs), bool(needs.any()))
    return needs


def _stop_reason(sums: RunningSums, settings: ProbeSettings, known: KnownPart) -> str | None:
    """Why probing stops now (checked before each round, so a resumed run stops where the first would)."""
    if sums.probes == 0:
        return None
    if not _layer_needs_probes(sums, settings, known).any():
        return "tolerance"
    if not _active(sums, settings, known).any():
        return "max_probes"
    if sums.seconds >= settings.max_seconds:
        return "max_seconds"
    return None


def _run_round(problem: ProbeProblem, sums: RunningSums, ranks: Ranks, known: KnownPart) -> None:
    """Probes sums.probes + r on rank r, gathered, and added in probe order, each layer's value only while
    that layer still needs probes: the values one process would have added."""
    started = time.perf_counter()
    active = _active(sums, problem.settings, known)
    mine = problem.probe(sums.probes + ranks.rank, active)
    gathered = ranks.gather(np.append(mine, time.perf_counter() - started))
    for values in gathered:
        still = _active(sums, problem.settings, known)
        if not still.any():
            break
        for i, per_channel in enumerate(sums.split(values[:-1])):
            if still[i]:
                sums.add(i, per_channel)
        sums.probes += 1
    sums.seconds += max(float(values[-1]) for values in gathered)  # the same on every rank


def hutchinson_traces(  # noqa: PLR0913  (six inputs, then keyword-only options)
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    checkpoint: Checkpoint | None = None,
    known: KnownPart | None = None,
    label: str = "hessian",
) -> HessianTraces:
    """Tr(H_l) for each named layer's weight, H the Hessian of loss_fn(model(x), targets).

    With a `checkpoint`, the running state is saved after every round of probes and a saved state is
    resumed. Under torch.distributed, the probes are split across ranks (see the module docstring).
    With `known`, each layer's tolerance is on its sum with the known part (KnownPart); the traces
    returned are still of the probed part alone.
    """
    known = known if known is not None else KnownPart.none(len(layer_names))
    ranks = Ranks.current()
    progress = enabled(progress) and ranks.is_main
    weights = [model.get_submodule(name).weight for name in layer_names]
    keys = [f"{name}.weight" for name in layer_names]
    problem = ProbeProblem(model, keys, weights, x, targets, loss_fn, probe_batches(len(x), settings), settings)
    sums = _start([w.shape[0] for w in weights], checkpoint, ranks)
    if sums.resumed_from:
        note(f"{label}: resuming from {sums.resumed_from} probes saved in the cache", progress)
    with weights_requiring_grad(model, weights):
        with bar(settings.max_probes, f"{label}: probes", progress, unit="probe", initial=sums.probes) as shown:
            while (stop_reason := _stop_reason(sums, settings, known)) is None:
                _run_round(problem, sums, ranks, known)
                _save(sums, checkpoint, ranks)
                if problem.fallback:
                    note(f"{label}: {problem.fallback}", progress)
                    problem.fallback = ""
                shown.set_postfix_str(_postfix(sums, settings, known), refresh=False)
                shown.update(sums.probes - shown.n)
    trace, stderr = sums.estimate()
    counts = sums.counts
    return HessianTraces(
        layer_names=list(layer_names),
        trace=trace,
        stderr=stderr,
        probes=int(counts.max(initial=0)),
        channel_trace=[s / max(n, 1) for s, n in zip(sums.channel_sum, counts)],
        channel_stderr=[_stderr(s, q, n) for s, q, n in zip(sums.channel_sum, sums.channel_sq, counts)],
        seconds=sums.seconds,
        stop_reason=stop_reason,
        resumed_from=sums.resumed_from,
        layer_probes=counts.copy(),
        capped=capped_layers(known, trace, stderr, settings.tol, stop_reason),
    )
