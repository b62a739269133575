"""GGUF's 32-weight block types Q8_0, Q5_0, Q5_1, Q4_0, Q4_1: ggml-quants.c's quantize_row_*_ref, vectorized.

Each function takes float32 blocks [blocks, 32] and returns their bytes [blocks, type size]; the
dequantizers invert that. Block layouts (ggml-common.h): Q4_0 = fp16 d, 16 B nibbles; Q4_1 = d, m, 16 B;
Q5_0 = d, 4 B high bits, 16 B; Q5_1 = d, m, 4 B, 16 B; Q8_0 = d, 32 int8.
"""

from __future__ import annotations

import numpy as np

from mpq.quant.gguf.common import F32, first_absmax, fp16_bits, fp16_value, le_bytes, round_away


def _inverse(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f`."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Weights j and j+16 of a block share byte j (low, high nibble)."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 codes, as a little-endian uint32 (Q5 types)."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    return le_bytes(np.bitwise_or.reduce(bits, axis=1), np.uint32)


def _codes(packed: np.ndarray) -> np.ndarray:
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def _with_high_bits(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    high = (np.ascontiguousarray(qh).view("<u4") >> np.arange(32, dtype=np.uint32)) & 1
    return _codes(qs) | (high.astype(np.uint8) << 4)


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    _, signed_max = first_absmax(blocks.T)
    d = signed_max / F32(-8)
    x = blocks * _inverse(d)[:, None]
    q = np.minimum(15, np.trunc(x + F32(8.5)).astype(np.int32)).astype(np.uint8)
    return np.concatenate([le_bytes(fp16_bits(d), np.uint16), _nibbles(q)], axis=1)


def quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    _, signed_max = first_absmax(blocks.T)
    d = signed_max / F32(-16)
    x = blocks * _inverse(d)[:, None]
    q = np.minimum(31, np.trunc(x + F32(16.5)).astype(np.int32)).astype(np.uint8)
    return np.concatenate([le_bytes(fp16_bits(d), np.uint16), _high_bits(q), _nibbles(q)], axis=1)


def _min_max_codes(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # the first minimum / maximum, as C's `if (v < min)` loop keeps it (the sign of a zero reaches the bytes)
    lo = np.take_along_axis(blocks, np.argmin(blocks, axis=1)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(blocks, np.argmax(blocks, axis=1)[:, None], axis=1)[:, 0]
    d = (hi - lo) / F32(levels)
    x = (blocks - lo[:, None]) * _inverse(d)[:, None]
    return d, lo, np.trunc(x + F32(0.5)).astype(np.int32)


def quantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, lo, q = _min_max_codes(blocks, 15)
    q = np.minimum(15, q).astype(np.uint8)
    scales = [le_bytes(fp16_bits(d), np.uint16), le_bytes(fp16_bits(lo), np.uint16)]
    return np.concatenate([*scales, _nibbles(q)], axis=1)


def quantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, lo, q = _min_max_codes(blocks, 31)
    q = (q & 0xFF).astype(np.uint8)  # (uint8_t) cast, no clamp in the C code
    scales = [le_bytes(fp16_bits(d), np.uint16), le_bytes(fp16_bits(lo), np.uint16)]
    return np.concatenate([*scales, _high_bits(q), _nibbles(q)], axis=1)


def quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = np.abs(blocks).max(axis=1) / F32(127)
    q = round_away(blocks * _inverse(d)[:, None]).astype(np.int8)
    return np.concatenate([le_bytes(fp16_bits(d), np.uint16), q.view(np.uint8)], axis=1)


def _half(data: np.ndarray, offset: int) -> np.ndarray:
    return fp16_value(np.ascontiguousarray(data[:, offset : offset + 2]).view("<u2")[:, 0])[:, None]


def dequantize_q4_0(data: np.ndarray) -> np.ndarray:
    return _half(data, 0) * (_codes(data[:, 2:]).astype(np.int8) - 8).astype(F32)


def dequantize_q4_1(data: np.ndarray) -> np.ndarray:
    return _half(data, 0) * _codes(data[:, 4:]).astype(F32) + _half(data, 2)


def dequantize_q5_0(data: np.ndarray) -> np.ndarray:
    q = _with_high_bits(data[:, 2:6], data[:, 6:]).astype(np.int8) - 16
    return _half(data, 0) * q.astype(F32)


def dequantize_q5_1(data: np.ndarray) -> np.ndarray:
    q = _with_high_bits(data[:, 4:8], data[:, 8:])
    return _half(data, 0) * q.astype(F32) + _half(data, 2)


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    return _half(data, 0) * data[:, 2:].view(np.int8).astype(F32)
