"""Dequantization of the K-quants: ggml-quants.c's dequantize_row_*_K, vectorized, same float32 order.

Each function takes bytes [blocks, type size] and returns float32 [blocks, 256].
"""

from __future__ import annotations

import numpy as np

from mpq.quant.gguf.common import F32, fp16_value, unpack_2bit_by_32, unpack_bits_by_32


def _half(data: np.ndarray, offset: int) -> np.ndarray:
    return fp16_value(np.ascontiguousarray(data[:, offset : offset + 2]).view("<u2")[:, 0])[:, None]


def _by_sub_block(values: np.ndarray, sub: int) -> np.ndarray:
    return values.reshape(values.shape[0], -1, sub)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: (scales, mins) [blocks, 8]."""
    sc = np.concatenate([s[:, :4] & 63, (s[:, 8:] & 0x0F) | ((s[:, :4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(F32), mn.astype(F32)


def _nibbles_by_32(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(qs.shape[0], 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(qs.shape[0], 256)


def dequantize_q2_k(data: np.ndarray) -> np.ndarray:
    sc = data[:, :16]
    q = unpack_2bit_by_32(data[:, 16:80]).astype(F32)
    dl = (_half(data, 80) * (sc & 0x0F).astype(F32))[..., None]
    ml = (_half(data, 82) * (sc >> 4).astype(F32))[..., None]
    return (dl * _by_sub_block(q, 16) - ml).reshape(-1, 256)


def dequantize_q3_k(data: np.ndarray) -> np.ndarray:
    high = unpack_bits_by_32(data[:, :32])
    q = unpack_2bit_by_32(data[:, 32:96]).astype(np.int8) - np.where(high == 1, 0, 4).astype(np.int8)
    s = data[:, 96:108]
    low = np.concatenate([s[:, :8] & 0x0F, s[:, :8] >> 4], axis=1)
    top = (s[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 4, 1)) & 3
    level = (low | (top.reshape(-1, 16) << 4)).astype(np.int8) - 32
    dl = (_half(data, 108) * level.astype(F32))[..., None]
    return (dl * _by_sub_block(q.astype(F32), 16)).reshape(-1, 256)


def dequantize_q4_k(data: np.ndarray) -> np.ndarray:
    sc, mn = _k4_scales(data[:, 4:16])
    d = (_half(data, 0) * sc)[..., None]
    m = (_half(data, 2) * mn)[..., None]
    return (d * _by_sub_block(_nibbles_by_32(data[:, 16:]).astype(F32), 32) - m).reshape(-1, 256)


def dequantize_q5_k(data: np.ndarray) -> np.ndarray:
    sc, mn = _k4_scales(data[:, 4:16])
    d = (_half(data, 0) * sc)[..., None]
    m = (_half(data, 2) * mn)[..., None]
    q = _nibbles_by_32(data[:, 48:]) + (unpack_bits_by_32(data[:, 16:48]) << 4)
    return (d * _by_sub_block(q.astype(F32), 32) - m).reshape(-1, 256)


def dequantize_q6_k(data: np.ndarray) -> np.ndarray:
    nb = data.shape[0]
    ql = data[:, :128].reshape(nb, 2, 2, 32)
    qh = data[:, 128:192].reshape(nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [nb, half, 4, 32]: q1, q2, q3, q4 of the C loop
    q = (low | ((qh & 3) << 4)).astype(np.int8) - 32
    d = (_half(data, 208) * data[:, 192:208].view(np.int8).astype(F32))[..., None]
    return (d * _by_sub_block(q.reshape(nb, 256).astype(F32), 16)).reshape(-1, 256)
