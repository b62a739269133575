"""The K-quants' per-sub-block scale searches of ggml-quants.c, vectorized over sub-blocks.

Every array is [n, sub-blocks] (one sub-block per column), float32; each C statement is one numpy
expression in the C order of operations, the loop over a sub-block's n weights stays a loop (seq_sum), and
the choices the C code makes per sub-block become np.where masks.
"""

from __future__ import annotations

import numpy as np

from mpq.quant.gguf.common import F32, GROUP_MAX_EPS, first_absmax, nearest_int, seq_sum


def _clamped(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(nearest_int(values), lo, hi).astype(F32)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type 1 and no importance (Q6_K): (scale [B], codes L + nmax [n, B])."""
    amax, signed_max = first_absmax(x)
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-nmax) / signed_max
        level = _clamped(iscale * x, -nmax, nmax - 1)
        codes = level + F32(nmax)
        sumlx = seq_sum(w * x * level)
        suml2 = seq_sum(w * level * level)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / signed_max
            level = _clamped(iscale * x, -nmax, nmax - 1)
            sumlx = seq_sum(w * x * level)
            suml2 = seq_sum(w * level * level)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            codes = np.where(better, level + F32(nmax), codes)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, F32(0), codes)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with do_rmse (Q3_K): (scale [B], codes L + nmax [n, B]) after 5 coordinate passes."""
    amax, signed_max = first_absmax(x)
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        level = _clamped((F32(-nmax) / signed_max) * x, -nmax, nmax - 1)
        sumlx = seq_sum(wx * level)
        suml2 = seq_sum(w * level * level)
        # A pass that changes nothing leaves the state as it was, so C's early exit cannot change the result.
        for _ in range(5):
            for i in range(x.shape[0]):
                slx = sumlx - wx[i] * level[i]
                sl2 = suml2 - w[i] * level[i] * level[i]
                new = _clamped(x[i] * sl2 / slx, -nmax, nmax - 1)
                slx_new = slx + wx[i] * new
                sl2_new = sl2 + w[i] * new * new
                take = (slx > 0) & (new != level[i]) & (sl2_new > 0)
                take &= slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new
                level[i] = np.where(take, new, level[i])
                sumlx = np.where(take, slx_new, sumlx).astype(F32)
                suml2 = np.where(take, sl2_new, suml2).astype(F32)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, F32(0), level + F32(nmax))


def _weighted_fit(x, w, sums, level, use_mad):
    """One candidate of make_qkx2_quants: the least-squares scale and min for codes `level`, and its error."""
    sum_w, sum_x = sums
    wl = w * level
    sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * level), seq_sum(wl * x)
    det = sum_w * sum_l2 - sum_l * sum_l
    scale = (sum_w * sum_xl - sum_x * sum_l) / det
    low = (sum_l2 * sum_x - sum_l * sum_xl) / det
    clipped = low > 0
    low = np.where(clipped, F32(0), low).astype(F32)
    scale = np.where(clipped, sum_xl / sum_l2, scale).astype(F32)
    diff = scale * level + low - x
    err = seq_sum(w * (np.abs(diff) if use_mad else diff * diff))
    return det, scale, low, err


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants (Q2_K, Q4_K, Q5_K): (scale [B], the_min [B], codes [n, B]) for x ~ scale*L - the_min."""
    lo, hi = x[0].copy(), x[0].copy()
    sum_w = weights[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, x.shape[0]):
        lo = np.where(x[i] < lo, x[i], lo)
        hi = np.where(x[i] > hi, x[i], hi)
        sum_w = sum_w + weights[i]
        sum_x = sum_x + weights[i] * x[i]
    lo = np.where(lo > 0, F32(0), lo).astype(F32)
    flat, flat_min = hi == lo, lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (hi - lo)
        scale = F32(1) / iscale
        codes = _clamped(iscale * (x - lo), 0, nmax)
        diff = scale * codes + lo - x
        best = seq_sum(weights * (np.abs(diff) if use_mad else diff * diff))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo)
            level = _clamped(iscale * (x - lo), 0, nmax)
            det, this_scale, this_min, err = _weighted_fit(x, weights, (sum_w, sum_x), level, use_mad)
            better = (det > 0) & (err < best)
            codes = np.where(better, level, codes)
            best = np.where(better, err, best).astype(F32)
            scale = np.where(better, this_scale, scale).astype(F32)
            lo = np.where(better, this_min, lo).astype(F32)
    scale = np.where(flat, F32(0), scale).astype(F32)
    codes = np.where(flat, F32(0), codes)
    return scale, -np.where(flat, flat_min, lo), codes
