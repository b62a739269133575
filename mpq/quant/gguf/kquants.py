"""GGUF's K-quants Q6_K, Q5_K, Q4_K, Q3_K, Q2_K: ggml-quants.c's quantize_row_*_K_ref, vectorized.

Each function takes float32 super-blocks [blocks, 256] and returns their bytes [blocks, type size] in the
layouts of ggml-common.h. Where a sub-block's final scale rounds to zero, C keeps the codes the scale
search chose (`if (!d) continue;`), and so does this code.
"""

from __future__ import annotations

import numpy as np

from mpq.quant.gguf.common import (
    F32,
    GROUP_MAX_EPS,
    first_absmax,
    fp16_bits,
    fp16_value,
    le_bytes,
    nearest_int,
    pack_2bit_by_32,
    pack_bits_by_32,
    seq_sum,
)
from mpq.quant.gguf.ksearch import make_q3_quants, make_qkx2_quants, make_qx_quants


def _columns(blocks: np.ndarray, n: int) -> np.ndarray:
    """[blocks, 256] -> [n, sub-blocks]: one sub-block of n weights per column."""
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _rows(columns: np.ndarray, blocks: int) -> np.ndarray:
    return columns.T.reshape(blocks, -1)


def _requantize(x, d, offset, search_codes, lo, hi):
    """`l = nearest_int((x + offset)/d)` clamped to [lo, hi], minus lo, per sub-block; the search's codes
    (already offset) where d == 0."""
    blocks, subs = d.shape
    xs = x.reshape(blocks, subs, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int((xs + offset[..., None]) / d[..., None]), lo, hi) - lo
    codes = np.where(d[..., None] != 0, q, search_codes.reshape(blocks, subs, -1))
    return codes.reshape(blocks, -1).astype(np.uint8)


def _positive_max(values: np.ndarray) -> np.ndarray:
    """`max = 0; if (v > max) max = v` over each row."""
    return np.where(values.max(axis=1) > 0, values.max(axis=1), F32(0)).astype(F32)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    scales, codes = make_qx_quants(_columns(blocks, 16), 32)
    scales, codes = scales.reshape(nb, 16), _rows(codes, nb)
    max_abs, max_scale = first_absmax(scales.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d_bits = fp16_bits(F32(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = fp16_value(d_bits)[:, None] * sc.astype(F32)
    q = _requantize(blocks, d, np.zeros_like(d), codes, -32, 31)
    q4 = q.reshape(nb, 2, 4, 32)
    ql = ((q4[:, :, :2] & 0x0F) | ((q4[:, :, 2:] & 0x0F) << 4)).reshape(nb, 128)
    qh = np.bitwise_or.reduce((q4 >> 4) << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1), axis=2)
    out = np.concatenate([ql, qh.reshape(nb, 64), sc.view(np.uint8), le_bytes(d_bits, np.uint16)], axis=1)
    out[max_abs < GROUP_MAX_EPS] = 0
    return out


def _q3_scale_bytes(levels: np.ndarray) -> np.ndarray:
    """16 six-bit scales -> 12 bytes: low nibbles of j and j+8 share byte j, high 2 bits in bytes 8..11."""
    low = (levels[:, :8] & 0x0F) | ((levels[:, 8:] & 0x0F) << 4)
    high = (levels >> 4).reshape(-1, 4, 4) << (2 * np.arange(4)).reshape(1, 4, 1)
    return np.concatenate([low, np.bitwise_or.reduce(high, axis=1)], axis=1).astype(np.uint8)


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    scales, codes = make_q3_quants(_columns(blocks, 16), 4)
    scales, codes = scales.reshape(nb, 16), _rows(codes, nb)
    _, max_scale = first_absmax(scales.T)
    has_scale = (max_scale != 0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / max_scale
        d_bits = np.where(has_scale[:, 0], fp16_bits(F32(1) / iscale), 0).astype(np.uint16)
        level = nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32)
    level = np.where(has_scale, np.clip(level, -32, 31) + 32, 0)
    d = fp16_value(d_bits)[:, None] * (level - 32).astype(F32)
    q = _requantize(blocks, d, np.zeros_like(d), codes, -4, 3)
    high = q > 3
    q = np.where(high, q - 4, q).astype(np.uint8)
    parts = [pack_bits_by_32(high), pack_2bit_by_32(q), _q3_scale_bytes(level), le_bytes(d_bits, np.uint16)]
    return np.concatenate(parts, axis=1)


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    xs = _columns(blocks, 16)
    scales, mins, codes = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins, codes = scales.reshape(nb, 16), mins.reshape(nb, 16), _rows(codes, nb)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
        lm = nearest_int((F32(15) / max_min)[:, None] * mins)
        d_bits = np.where(max_scale > 0, fp16_bits(max_scale / F32(15)), 0).astype(np.uint16)
        dmin_bits = np.where(max_min > 0, fp16_bits(max_min / F32(15)), 0).astype(np.uint16)
    sb = np.where((max_scale > 0)[:, None], ls & 0xFF, 0)
    sb = np.where((max_min > 0)[:, None], (sb | (lm << 4)) & 0xFF, sb)
    d = fp16_value(d_bits)[:, None] * (sb & 0x0F).astype(F32)
    dm = fp16_value(dmin_bits)[:, None] * (sb >> 4).astype(F32)
    q = _requantize(blocks, d, dm, codes, 0, 3)
    parts = [sb.astype(np.uint8), pack_2bit_by_32(q), le_bytes(d_bits, np.uint16), le_bytes(dmin_bits, np.uint16)]
    return np.concatenate(parts, axis=1)


def _k4_scale_bytes(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> the 12 bytes get_scale_min_k4 reads."""
    first = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    second = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    third = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=1).astype(np.uint8)


def _q45_k(blocks: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The shared part of Q4_K and Q5_K: (d and dmin bytes + scales [blocks, 16], codes [blocks, 256])."""
    nb = blocks.shape[0]
    xs = _columns(blocks, 32)
    av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
    scales, mins, codes = make_qkx2_quants(xs, av_x + np.abs(xs), nmax, rmin, 0.1, nstep, False)
    scales, mins, codes = scales.reshape(nb, 8), mins.reshape(nb, 8), _rows(codes, nb)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    d_bits, dmin_bits = fp16_bits(max_scale / F32(63)), fp16_bits(max_min / F32(63))
    d = fp16_value(d_bits)[:, None] * ls.astype(F32)
    dm = fp16_value(dmin_bits)[:, None] * lm.astype(F32)
    q = _requantize(blocks, d, dm, codes, 0, nmax)
    head = [le_bytes(d_bits, np.uint16), le_bytes(dmin_bits, np.uint16), _k4_scale_bytes(ls, lm)]
    return np.concatenate(head, axis=1), q


def _nibbles_by_32(q: np.ndarray) -> np.ndarray:
    """Byte 32c + l holds q[64c + l] (low nibble) and q[64c + 32 + l] (high nibble)."""
    q2 = q.reshape(q.shape[0], 4, 2, 32)
    return ((q2[:, :, 0] & 0x0F) | ((q2[:, :, 1] & 0x0F) << 4)).reshape(q.shape[0], 128)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    head, q = _q45_k(blocks, 15, -1.0, 20)
    return np.concatenate([head, _nibbles_by_32(q)], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    head, q = _q45_k(blocks, 31, -0.5, 15)
    return np.concatenate([head, pack_bits_by_32(q > 15), _nibbles_by_32(q)], axis=1)
