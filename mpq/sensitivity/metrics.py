"""The curvature metrics behind `--metric`, each giving, per named weight, a "trace" that Ω divides by n:

    Ω_l(b) = T_l / n_l · ||Q_b(W_l) − W_l||²

    hessian     T_l = Tr(H_l), Hutchinson (mpq.sensitivity.hessian; probes until `tol`)
    fisher      T_l = Tr(F_l), F_l = (1/N) Σ_i g_i g_iᵀ, g_i = ∇_{W_l} loss(model(x_i), t_i): the
                empirical Fisher of the per-sample losses over all N samples (the loss's own targets:
                labels, or the FP32 model's predictions). Exact on the data (no probes): per-sample
                gradients by torch.func.vmap. Its standard error is the one of a mean over samples,
                std_i(||g_i||²)/√N: how much the value would move with other calibration data.
    eigenvalue  T_l = n_l · λ_max(H_l), so that Ω_l(b) = λ_max(H_l) · ||Q_b(W_l) − W_l||² (HAWQ-V1):
                power iteration on the layer's own block (one Hessian-vector product restricted to
                W_l per iteration) for the Hessian of the mean loss over one batch (the first batch
                of the seeded order, `batch_size` samples), until two iterates differ by under
                EIGEN_TOL relatively, or `max_probes` iterations. A negative dominant eigenvalue is
                shifted away (power iteration on H − λI) so that the top (largest) one is returned.
                Its "standard error" is n_l · |λ_k − λ_{k−1}|, the last change (a convergence measure).

Per output channel c the same with the channel's n_{l,c} weights (for eigenvalue: n_{l,c} · λ_max).
The fourth and fifth metrics, output_mse and output_kl, are measured, not curvatures: mpq.sensitivity.output_error.
The sixth,
kl_quadratic, takes the curvature in the layer's actual quantization error: mpq.sensitivity.kl_quadratic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mpq.device import drawn_on
from mpq.inputs.graph import module_calls_visible
from mpq.progress import bar
from mpq.sensitivity.hessian import HessianTraces, RunningSums, _stderr, weights_requiring_grad
from mpq.sensitivity.settings import ProbeSettings
from mpq.sensitivity.stopping import CAPS

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample_squared_grads(
    model: nn.Module, names: list[str], x: torch.Tensor, t: torch.Tensor, loss_fn: LossFn
) -> list[torch.Tensor]:
    """Per named weight: [samples, out_channels] of Σ_{j in channel} (∂loss(model(x_i), t_i)/∂W_j)²."""
    params = {f"{n}.weight": model.get_submodule(n).weight.detach() for n in names}

    def sample_loss(p, xi, ti):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

    try:
        with torch.no_grad():
            grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, t)
    except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one sample at a time
        grads = {k: [] for k in params}
        for xi, ti in zip(x, t):
            weights = [model.get_submodule(n).weight for n in names]
            for k, g in zip(params, torch.autograd.grad(loss_fn(model(xi.unsqueeze(0)), ti.unsqueeze(0)), weights)):
                grads[k].append(g)
        grads = {k: torch.stack(v) for k, v in grads.items()}
    return [grads[f"{n}.weight"].pow(2).reshape(len(x), params[f"{n}.weight"].shape[0], -1).sum(dim=2) for n in names]


def fisher_traces(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool | None = None,
    *,
    loss_fn: LossFn,
) -> HessianTraces:
    """Tr(F_l) = (1/N) Σ_i ||∇_{W_l} loss_i||² per layer and per output channel, over every sample."""
    squares = lambda xb, tb: _per_sample_squared_grads(model, layer_names, xb, tb, loss_fn)  # noqa: E731
    return _mean_over_samples(model, layer_names, x, targets, settings, progress, squares, "fisher")


GN_EXACT_CLASSES = 2  # gauss_newton: each sample's most probable classes, summed exactly
GN_DRAWS = 2  # classes drawn from the rest per sample: two give each sample's own draw variance, (s_a − s_b)²/2


def _class_picks(
    p: torch.Tensor, exact: int, draws: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, weights), each [samples, picks]: the `exact` most probable classes with weights p_c, then
    `draws` classes from the rest, each weighted m/draws (m the rest's mass), so that Σ_k w_k s(c_k) is
    unbiased for Σ_c p_c s(c). The draws are systematic: the classes at the points (u + j)/draws of the
    rest's cumulative distribution, u ~ U[0, 1) per sample, so each is drawn with probability p_c'/m but
    together they spread over the distribution (never more variance than independent draws; the
    variance estimate of independent draws, which the caller takes, is then on the safe side)."""
    k = min(exact, p.shape[1])
    weights, classes = p.topk(k, dim=1)
    if k == p.shape[1]:
        return classes, weights
    rest = p.scatter(1, classes, 0.0).double()
    mass = rest.sum(dim=1, keepdim=True)
    cdf = torch.where(mass > 0, rest, torch.ones_like(rest)).cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]
    points = (
        drawn_on(torch.rand(len(p), 1, generator=generator, dtype=torch.float64), p.device)
        + torch.arange(draws, dtype=torch.float64, device=p.device)
    ) / draws
    drawn = torch.searchsorted(cdf, points, right=True).clamp_(max=p.shape[1] - 1)
    return torch.cat([classes, drawn], 1), torch.cat([weights, (mass.to(p.dtype) / draws).expand(-1, draws)], 1)


def gauss_newton_traces(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    targets: torch.Tensor,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool | None = None,
    *,
    exact_classes: int = GN_EXACT_CLASSES,
    draws: int = GN_DRAWS,
) -> HessianTraces:
    """Tr(G_l), G_l = (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i the Gauss-Newton block of a softmax
    cross-entropy (or KL to FP32) loss, J_i the Jacobian of sample i's logits in W_l. Since
    diag p − ppᵀ = Σ_c p_c (e_c − p)(e_c − p)ᵀ:

        Tr(G_l) = (1/N) Σ_i Σ_c p_{i,c} s_{i,c},   s_{i,c} = ||J_iᵀ (e_c − p_i)||² = ||∇_{W_l} log p_{i,c}||²

    summed exactly over each sample's `exact_classes` most probable classes, the rest (mass m_i) by m_i
    times the mean of s over classes drawn from them (`_class_picks`; unbiased, seeded). One per-sample
    gradient pass per class serves every layer and channel, with no cross-layer terms. Every sample is
    used, so the only error is the draws': the standard error is √(Σ_i m_i² var_i / n_i) / N, var_i the
    variance of sample i's n_i drawn s. Round 1 draws `draws` classes for every sample; while a layer's
    standard error is above `settings.tol` of its trace, each further round draws `draws` more for the
    samples that hold most of those layers' variance (`_noisiest`), until `settings.max_probes` draws of
    one sample or `settings.max_seconds`. How much the trace would move with other calibration data is
    another number, the spread over samples (`sample_trace`). Tr(G_l) = Tr(H_l) where the network is
    piecewise linear after layer l (ReLU, BatchNorm folded)."""
    if draws < 2:
        raise ValueError("gauss_newton_traces needs at least 2 draws per sample for its standard error")
    started = time.perf_counter()
    weights = [model.get_submodule(n).weight for n in layer_names]
    drawer = _Drawer(model, list(layer_names), exact_classes, draws, torch.Generator().manual_seed(settings.seed))
    sums = _DrawSums.zeros(len(x), [w.shape[0] for w in weights])
    with (
        weights_requiring_grad(model, weights),
        module_calls_visible(),
        bar(len(x), "gauss-newton", progress, unit="sample") as shown,
    ):
        trace, stderr, unsure, stop_reason = _draw_rounds(drawer, x, sums, settings, shown, started)
    n = len(x)
    return HessianTraces(
        layer_names=list(layer_names),
        trace=trace,
        stderr=stderr,
        probes=int(sums.draws.max()) if sums.draws.size else 0,
        channel_trace=[c.sum(axis=0) / n for c in sums.channel_values()],
        channel_stderr=[np.sqrt(v.sum(axis=0)) / n for v in sums.channel_variances()],
        seconds=time.perf_counter() - started,
        stop_reason=stop_reason,
        capped=unsure if stop_reason in CAPS else None,
        sample_trace=sums.layer_values(),
    )


def _draw_rounds(drawer: _Drawer, x, sums: _DrawSums, settings: ProbeSettings, shown, started: float):
    """Rounds of draws until every layer's standard error is under the tolerance or a cap stops them:
    (trace, stderr, the layers still unsure, the stop reason)."""
    rounds, chosen, stop_reason = 0, np.arange(len(x)), "exact"
    while len(chosen):
        for start in range(0, len(chosen), settings.batch_size):
            index = chosen[start : start + settings.batch_size]
            drawer.add(x[torch.as_tensor(index)], index, sums, rounds == 0)
            shown.update(len(index))
        rounds += 1
        trace, stderr = sums.estimate()
        unsure = stderr > settings.tol * np.abs(trace)
        if not unsure.any():
            return trace, stderr, unsure, "exact" if rounds == 1 else "tolerance"
        if time.perf_counter() - started >= settings.max_seconds:
            return trace, stderr, unsure, "max_seconds"
        # "max_probes" when no sample is left to draw for
        stop_reason, chosen = "max_probes", _noisiest(sums, unsure, settings.max_probes)
        if hasattr(shown, "total"):
            shown.total += len(chosen)
    return trace, stderr, unsure, stop_reason


GN_SHARE = 0.8  # a further round draws for the samples holding this share of the unsure layers' variance


@dataclass
class _DrawSums:
    """Per sample: the exactly summed part and the rest's mass, and of the drawn s, the count and the
    sums of s and s² (per layer [samples], per channel [samples, channels])."""

    exact: list[np.ndarray]  # per layer [samples, channels]
    mass: np.ndarray  # [samples]
    draws: np.ndarray  # [samples]
    layer_sum: np.ndarray  # [samples, layers]
    layer_sq: np.ndarray
    channel_sum: list[np.ndarray]
    channel_sq: list[np.ndarray]

    @classmethod
    def zeros(cls, samples: int, channels: list[int]) -> "_DrawSums":
        z = lambda: [np.zeros((samples, c)) for c in channels]  # noqa: E731
        return cls(
            z(),
            np.zeros(samples),
            np.zeros(samples, dtype=np.int64),
            np.zeros((samples, len(channels))),
            np.zeros((samples, len(channels))),
            z(),
            z(),
        )

    def _mean_drawn(self, total: np.ndarray) -> np.ndarray:
        count = np.maximum(self.draws, 1).reshape(-1, *([1] * (total.ndim - 1)))
        return total / count

    def _variance(self, total: np.ndarray, sq: np.ndarray) -> np.ndarray:
        """m_i² var_i / n_i per sample: the variance of the drawn part's estimate (0 under two draws)."""
        n = self.draws.reshape(-1, *([1] * (total.ndim - 1))).astype(np.float64)
        safe = np.maximum(n, 2)
        var = np.maximum(sq / safe - (total / safe) ** 2, 0.0) * safe / (safe - 1)
        mass = self.mass.reshape(n.shape)
        return np.where(n >= 2, mass**2 * var / safe, 0.0)

    def channel_values(self) -> list[np.ndarray]:
        return [e + self.mass[:, None] * self._mean_drawn(s) for e, s in zip(self.exact, self.channel_sum)]

    def channel_variances(self) -> list[np.ndarray]:
        return [self._variance(s, q) for s, q in zip(self.channel_sum, self.channel_sq)]

    def layer_values(self) -> np.ndarray:
        """[samples, layers]: each sample's estimate of its share of every layer's trace."""
        return np.stack([e.sum(axis=1) for e in self.exact], axis=1) + self.mass[:, None] * self._mean_drawn(
            self.layer_sum
        )

    def layer_variances(self) -> np.ndarray:
        return self._variance(self.layer_sum, self.layer_sq)

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.mass)
        return self.layer_values().sum(axis=0) / n, np.sqrt(self.layer_variances().sum(axis=0)) / n


@dataclass
class _Drawer:
    """What every round of draws uses: the model, its layers, the classes summed exactly and drawn per sample."""

    model: nn.Module
    layer_names: list[str]
    exact_classes: int
    draws: int
    generator: torch.Generator

    def add(self, xb, index: np.ndarray, sums: _DrawSums, first: bool) -> None:
        """One round of draws for the samples `index`, and in the first round the exactly summed classes too."""
        with torch.no_grad():
            p = torch.softmax(self.model(xb).float(), dim=1)
        classes, weights = _class_picks(p, self.exact_classes, self.draws, self.generator)
        exact = min(self.exact_classes, p.shape[1])
        columns = range(classes.shape[1]) if first else range(exact, classes.shape[1])
        picks = [
            _per_sample_squared_grads(self.model, self.layer_names, xb, classes[:, k], nn.functional.cross_entropy)
            for k in columns
        ]
        weights = weights.double().cpu().numpy()
        if first:
            sums.mass[index] = weights[:, exact] * self.draws if exact < p.shape[1] else 0.0
        if exact < p.shape[1]:
            sums.draws[index] += self.draws
        for i, per_pick in enumerate(zip(*picks)):
            s = torch.stack(per_pick, dim=1).double().cpu().numpy()  # [samples, picks, channels]
            if first:
                sums.exact[i][index] = (s[:, :exact] * weights[:, :exact, None]).sum(axis=1)
                s = s[:, exact:]
            sums.channel_sum[i][index] += s.sum(axis=1)
            sums.channel_sq[i][index] += (s**2).sum(axis=1)
            sums.layer_sum[index, i] += s.sum(axis=2).sum(axis=1)
            sums.layer_sq[index, i] += (s.sum(axis=2) ** 2).sum(axis=1)


def _noisiest(sums: _DrawSums, unsure: np.ndarray, max_draws: int) -> np.ndarray:
    """The fewest samples (under `max_draws` draws) holding GN_SHARE of the unsure layers' variance as the
    exactly summed classes predict it: m_i² (mean s of sample i's exact classes)², a stand-in for
    m_i² var_i that does not depend on the draws (choosing by the drawn values themselves would bias the
    means). Each layer's share is weighted by 1 / its total so that every unsure layer counts alike."""
    exact = np.stack([e.sum(axis=1) for e in sums.exact], axis=1)[:, unsure]
    predicted = (sums.mass[:, None] * exact / np.maximum(1.0 - sums.mass[:, None], 1e-12)) ** 2
    score = (predicted / np.maximum(predicted.sum(axis=0), 1e-300)).sum(axis=1)
    score[sums.draws >= max_draws] = 0.0
    order = np.argsort(-score, kind="stable")
    cumulative = np.cumsum(score[order])
    if cumulative[-1] <= 0:
        return np.array([], dtype=np.int64)
    count = int(np.searchsorted(cumulative, GN_SHARE * cumulative[-1]) + 1)
    return np.sort(order[:count])


def _mean_over_samples(model, layer_names, x, targets, settings, progress, squares, label: str) -> HessianTraces:
    """Per layer and channel the mean over samples of `squares(x_batch, t_batch)` ([samples, channels]
    per layer), with the standard error of that mean, and each sample's layer values (`sample_trace`);
    only the layers' weights require grad meanwhile."""
    weights = [model.get_submodule(n).weight for n in layer_names]
    sums = RunningSums.zeros([w.shape[0] for w in weights])
    per_sample_layer = np.zeros((len(x), len(weights)))
    started = time.perf_counter()
    with (
        weights_requiring_grad(model, weights),
        module_calls_visible(),
        bar(len(x), label, progress, unit="sample") as shown,
    ):
        for start in range(0, len(x), settings.batch_size):
            stop = start + settings.batch_size
            for i, per_sample in enumerate(squares(x[start:stop], targets[start:stop])):
                values = per_sample.double().cpu().numpy()
                per_sample_layer[start:stop, i] = values.sum(axis=1)
                for per_channel in values:
                    sums.add(i, per_channel)
            shown.update(min(stop, len(x)) - start)
    n = len(x)
    return HessianTraces(
        layer_names=list(layer_names),
        trace=sums.layer_sum / n,
        stderr=_stderr(sums.layer_sum, sums.layer_sq, n),
        probes=n,
        channel_trace=[s / n for s in sums.channel_sum],
        channel_stderr=[_stderr(s, q, n) for s, q in zip(sums.channel_sum, sums.channel_sq)],
        seconds=time.perf_counter() - started,
        stop_reason="exact",
        sample_trace=per_sample_layer,
    )
