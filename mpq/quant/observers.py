"""Quantization ranges: activation observers (clip range of a layer's input) and weight clipping.

Activation observers work on an `InputHistogram` of a layer's input over the calibration data (equal
bins over the observed [min, max], exact zeros counted apart) and return, per width b, the clip
range [lo, hi] (always containing 0) that the affine quantizer of mpq.quant.affine spans with 2^b levels:

    minmax      [min, max]
    percentile  [P_(100-p), P_p] of the values (p = 99.99 by default): rare outliers are clipped
    mse         argmin over bin edges lo <= 0 <= hi of the histogram's quantization MSE
                    MSE(lo, hi) = sum_{x < lo} n_x (x - lo)^2 + sum_{x > hi} n_x (x - hi)^2
                                  + N_inside * D^2 / 12,        D = (hi - lo) / (2^b - 1)
                (clipping error exactly on the bin centres + uniform rounding noise; exact zeros
                cost nothing, 0 being a grid point), searched exhaustively over every pair of edges
    aciq        Banner et al. 2019 (ACIQ): fit a Laplace (or Gaussian) to the values and clip at the
                analytic optimum alpha_b = a_b * scale, where a_b minimises the expected MSE of the
                fitted density (see `aciq_alpha`)

Weight clipping chooses, per output channel c, the ratio r_c of max|W_c| the symmetric scale spans:
    s_c = r_c * max|W_c| / (2^(b-1) - 1)
    minmax  r_c = 1
    mse     r_c = argmin_r ||Q_b(W_c; r) - W_c||^2 over the grid r in {0.2, 0.205, ..., 1} (see MseWeightClip)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, stats

HISTOGRAM_BINS = 2048
# weight-clip search: rows × candidates evaluated at once, about this many weight copies (4 MB): a buffer the caches
# hold, where one candidate over a whole 2048×5632 weight (46 MB) made every pass go to memory
CHUNK_ELEMENTS = 2**20


@dataclass(frozen=True)
class InputHistogram:
    """Counts of one layer's input values: `counts[i]` in the i-th of equal bins over [lo, hi]
    (exact zeros excluded), and `zeros`, the number of values exactly 0."""

    lo: float
    hi: float
    counts: np.ndarray
    zeros: float

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, len(self.counts) + 1)

    @property
    def centers(self) -> np.ndarray:
        edges = self.edges
        return (edges[:-1] + edges[1:]) / 2

    @property
    def total(self) -> float:
        return float(self.counts.sum() + self.zeros)

    @classmethod
    def of(cls, x: torch.Tensor, lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> "InputHistogram":
        """The histogram of one tensor over a given range (values outside are counted in the end bins)."""
        hist = cls(lo=lo, hi=hi, counts=np.zeros(bins), zeros=0.0)
        return hist.add(x)

    def add(self, x: torch.Tensor) -> "InputHistogram":
        """This histogram with the values of `x` added."""
        x = x.detach().reshape(-1).float()
        nonzero = x[x != 0]
        span = max(self.hi - self.lo, 1e-12)
        index = ((nonzero - self.lo) / span * len(self.counts)).floor().clamp(0, len(self.counts) - 1).long()
        counts = torch.bincount(index, minlength=len(self.counts)).double().cpu().numpy()
        zeros = float(x.numel() - nonzero.numel())
        return InputHistogram(self.lo, self.hi, self.counts + counts, self.zeros + zeros)

    def to_json(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "counts": self.counts.tolist(), "zeros": self.zeros}

    @classmethod
    def from_json(cls, data: dict) -> "InputHistogram":
        return cls(lo=data["lo"], hi=data["hi"], counts=np.array(data["counts"], dtype=np.float64), zeros=data["zeros"])


def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    return min(lo, 0.0), max(hi, 0.0)


class MinMaxActObserver:
    """[min, max] of everything seen: no value is clipped."""

    name = "minmax"

    def clip_range(self, hist: InputHistogram, bits: int) -> tuple[float, float]:
        return _with_zero(hist.lo, hist.hi)


@dataclass(frozen=True)
class PercentileActObserver:
    """[P_(100-p), P_p]: the p-th percentile of the values and its mirror (to a bin centre)."""

    percentile: float = 99.99
    name = "percentile"

    def _quantile(self, hist: InputHistogram, q: float) -> float:
        values = np.append(hist.centers, 0.0)
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(np.append(hist.counts, hist.zeros)[order]) / max(hist.total, 1.0)
        return float(values[order][min(np.searchsorted(cumulative, q), len(values) - 1)])

    def clip_range(self, hist: InputHistogram, bits: int) -> tuple[float, float]:
        p = self.percentile / 100
        return _with_zero(self._quantile(hist, 1 - p), self._quantile(hist, p))


class MseActObserver:
    """The clip range of least quantization MSE on the histogram (formula in the module docstring)."""

    name = "mse"

    def clip_range(self, hist: InputHistogram, bits: int) -> tuple[float, float]:
        edges, centers, n = hist.edges, hist.centers, hist.counts
        lows = np.append(edges[edges < 0], 0.0) if hist.lo < 0 else np.array([0.0])
        highs = np.insert(edges[edges > 0], 0, 0.0) if hist.hi > 0 else np.array([0.0])
        below = _tail_error(n, centers, lows, side="below")  # per candidate lo: sum n (x - lo)^2, count
        above = _tail_error(n, centers, highs, side="above")
        inside = n.sum() - below[1][:, None] - above[1][None, :]
        step = (highs[None, :] - lows[:, None]) / (2**bits - 1)
        mse = below[0][:, None] + above[0][None, :] + inside * step**2 / 12
        i, j = np.unravel_index(int(np.argmin(mse)), mse.shape)
        return float(lows[i]), float(highs[j])


def _tail_error(n: np.ndarray, x: np.ndarray, clips: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """For every clip value t: sum of n (x - t)^2 and of n over the bins beyond t (below or above)."""
    if side == "below":
        beyond = x[None, :] < clips[:, None]
    else:
        beyond = x[None, :] > clips[:, None]
    s0 = beyond @ n
    s1 = beyond @ (n * x)
    s2 = beyond @ (n * x * x)
    return s2 - 2 * clips * s1 + clips**2 * s0, s0


def _laplace_clip_mse(alpha: float, levels: int) -> float:
    """Expected MSE of clipping Laplace(0, 1) at +-alpha and rounding on `levels` levels over [-alpha, alpha]:
    2 e^(-alpha) + alpha^2 / (3 levels^2)."""
    return 2 * math.exp(-alpha) + alpha**2 / (3 * levels**2)


def _gauss_clip_mse(alpha: float, levels: int) -> float:
    """The same for N(0, 1): 2[(1 + alpha^2)(1 - Phi(alpha)) - alpha phi(alpha)] + alpha^2 / (3 levels^2)."""
    return 2 * ((1 + alpha**2) * stats.norm.sf(alpha) - alpha * stats.norm.pdf(alpha)) + alpha**2 / (3 * levels**2)


def aciq_alpha(bits: int, distribution: str = "laplace") -> float:
    """Banner et al.'s optimal clip in units of the fitted scale (Laplace b or Gaussian sigma) for
    2^bits levels: argmin_alpha of the expected clipping + rounding MSE (2.83, 3.89, 5.03 for a
    Laplace at 2, 3, 4 bits; 1.71, 2.15, 2.55 for a Gaussian)."""
    mse = _laplace_clip_mse if distribution == "laplace" else _gauss_clip_mse
    return float(
        optimize.minimize_scalar(
            lambda a: mse(a, 2**bits), bounds=(0.1, 40.0), method="bounded", options={"xatol": 1e-6}
        ).x
    )


@dataclass(frozen=True)
class AciqActObserver:
    """ACIQ: signed inputs [mu - alpha_b s, mu + alpha_b s] with mu the mean and s the fitted scale
    (Laplace: b = E|x - mu|; Gaussian: sigma); non-negative inputs (after a ReLU) [0, alpha_(b+1) s]
    with s the scale of the positive values (E[x | x > 0] for a Laplace, their RMS for a Gaussian):
    one-sided, 2^b levels cover what 2^(b+1) would cover on both sides. Never wider than [min, max]."""

    distribution: str = "laplace"
    name = "aciq"

    def clip_range(self, hist: InputHistogram, bits: int) -> tuple[float, float]:
        x, n = hist.centers, hist.counts
        total = hist.total
        if total == 0:
            return 0.0, 0.0
        if hist.lo >= 0:
            positive = n.sum()
            if positive == 0:
                return 0.0, 0.0
            scale = (n @ x) / positive if self.distribution == "laplace" else math.sqrt((n @ (x * x)) / positive)
            return 0.0, min(hist.hi, aciq_alpha(bits + 1, self.distribution) * scale)
        mu = (n @ x) / total
        deviation = np.abs(np.append(x, 0.0) - mu)
        weights = np.append(n, hist.zeros)
        scale = (
            (weights @ deviation) / total
            if self.distribution == "laplace"
            else math.sqrt((weights @ deviation**2) / total)
        )
        alpha = aciq_alpha(bits, self.distribution) * scale
        return _with_zero(max(hist.lo, mu - alpha), min(hist.hi, mu + alpha))


ACT_OBSERVERS = {
    "minmax": MinMaxActObserver(),
    "percentile": PercentileActObserver(),
    "mse": MseActObserver(),
    "aciq": AciqActObserver(),
}


def _channels(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).float()


def clipped_channel_error(weight: torch.Tensor, bits: int, ratios: torch.Tensor) -> torch.Tensor:
    """||Q_b(W_c; r) - W_c||^2 for every ratio r (rows) and output channel c (columns)."""
    w = _channels(weight)
    qmax = 2 ** (bits - 1) - 1
    scale = (ratios.to(w.device)[:, None] * w.abs().amax(dim=1)[None, :] / qmax).clamp_min(1e-30)[:, :, None]
    err = torch.clamp(torch.round(w[None] / scale), -qmax - 1, qmax).mul_(scale).sub_(w[None])
    return err.pow_(2).sum(dim=2)


class MinMaxWeightClip:
    """r_c = 1: the scale spans max|W_c|."""

    name = "minmax"

    def ratios(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.ones(weight.shape[0], device=weight.device)


@dataclass(frozen=True)
class MseWeightClip:
    """r_c = argmin_r ||Q_b(W_c; r) - W_c||^2 over the ratios r in {low, low + fine, ..., 1}: every one of
    them for channels of at most `exhaustive_up_to` weights (their error is jagged in r), else `coarse`
    evenly spaced ones, then those within one coarse step of the best (larger channels are smooth in r).
    1 is always a candidate, so the error is never above min-max's."""

    low: float = 0.2
    fine: float = 0.005
    coarse: int = 17
    exhaustive_up_to: int = 64
    name = "mse"

    def _best(self, weight: torch.Tensor, bits: int, grid: torch.Tensor) -> torch.Tensor:
        """Per channel, the ratio of least error among that channel's row of `grid` [channels, candidates]."""
        w = _channels(weight)
        qmax = 2 ** (bits - 1) - 1
        grid = grid.to(w.device)
        scale = (grid * w.abs().amax(dim=1)[:, None] / qmax).clamp_min(1e-30)
        errors = torch.empty(scale.shape, dtype=w.dtype, device=w.device)
        candidates = max(1, min(grid.shape[1], CHUNK_ELEMENTS // w.shape[1]))
        rows = max(1, CHUNK_ELEMENTS // (candidates * w.shape[1]))
        for r in range(0, len(w), rows):
            block = w[r : r + rows, None, :]
            for k in range(0, grid.shape[1], candidates):
                s = scale[r : r + rows, k : k + candidates, None]  # [rows, candidates, 1]
                err = (block / s).round_().clamp_(-qmax - 1, qmax).mul_(s).sub_(block)  # one buffer
                errors[r : r + rows, k : k + candidates] = err.pow_(2).sum(dim=2)
        return grid.gather(1, errors.argmin(dim=1)[:, None]).squeeze(1)

    def grid(self) -> torch.Tensor:
        return torch.linspace(self.low, 1.0, round((1.0 - self.low) / self.fine) + 1)

    def ratios(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        channels = weight.shape[0]
        if weight[0].numel() <= self.exhaustive_up_to:
            return self._best(weight, bits, self.grid().expand(channels, -1))
        coarse = torch.linspace(self.low, 1.0, self.coarse, device=weight.device)
        first = self._best(weight, bits, coarse.expand(channels, -1))
        step = (1.0 - self.low) / (self.coarse - 1)
        offsets = torch.arange(-step, step + self.fine / 2, self.fine, device=weight.device)
        fine = (first[:, None] + offsets[None, :]).clamp(self.low, 1.0)
        return self._best(weight, bits, torch.cat([fine, torch.ones(channels, 1, device=weight.device)], dim=1))


WEIGHT_CLIPS = {"minmax": MinMaxWeightClip(), "mse": MseWeightClip()}
