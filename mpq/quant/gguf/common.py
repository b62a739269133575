"""Float32 building blocks that reproduce ggml's C arithmetic bit for bit (numpy, no FMA, no reassociation).

ggml computes every quantizer in float32, adds sums one element after another and converts scales to fp16
with round-to-nearest-even. numpy float32 operations are IEEE single precision, so writing each C expression
in the same order, with the same float32 constants, gives the same bits; `seq_sum` replaces numpy's pairwise
sums by the C loop's left-to-right order.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: a sub-block whose largest |x| is below this is all zeros
_ROUND_MAGIC = F32(12582912.0)  # 1.5 * 2**23


def nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (ties to even; int32)."""
    shifted = np.asarray(values, dtype=F32) + _ROUND_MAGIC
    return (shifted.view(np.int32) & 0x007FFFFF) - 0x00400000


def round_away(values: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), exact in float32."""
    a = np.abs(values)
    floored = np.floor(a)
    return np.sign(values) * (floored + np.floor(F32(2) * (a - floored)))


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in C loop order: ((0 + t0) + t1) + ... in float32."""
    acc = np.zeros(terms.shape[1:], dtype=F32)
    for term in terms:
        acc = acc + term
    return acc


def fp16_bits(values: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: round to nearest even half precision, as uint16 bits."""
    return np.asarray(values, dtype=F32).astype(np.float16).view(np.uint16)


def fp16_value(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 of uint16 bits."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(F32)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet."""
    u = np.asarray(values, dtype=F32).view(np.uint32).astype(np.uint64)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (u >> 16) | 64, rounded).astype(np.uint16)


def bf16_value(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max |x|, the signed value that reaches it first) over axis 0; +0 where all are zero, as the C loops."""
    idx = np.argmax(np.abs(x), axis=0)
    signed = np.take_along_axis(x, idx[None], axis=0)[0]
    amax = np.abs(signed)
    return amax, np.where(amax > 0, signed, F32(0))


def le_bytes(values: np.ndarray, dtype) -> np.ndarray:
    """Little-endian bytes of each value: [..., itemsize] uint8."""
    arr = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return arr.view(np.uint8).reshape(*arr.shape, arr.itemsize)


def pack_bits_by_32(flags: np.ndarray) -> np.ndarray:
    """[blocks, 256] booleans -> [blocks, 32] bytes: bit k of byte m is flags[32*k + m] (Q3_K hmask, Q5_K qh)."""
    f = flags.reshape(flags.shape[0], 8, 32).astype(np.uint8)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return np.bitwise_or.reduce(f << shifts, axis=1)


def unpack_bits_by_32(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_bits_by_32: [blocks, 32] bytes -> [blocks, 256] of 0/1."""
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return ((packed[:, None, :] >> shifts) & 1).reshape(packed.shape[0], 256)


def pack_2bit_by_32(q: np.ndarray) -> np.ndarray:
    """[blocks, 256] values 0..3 -> [blocks, 64]: byte 32*h + l holds q[128h + 32k + l] at bits 2k (Q2_K, Q3_K)."""
    q4 = q.reshape(q.shape[0], 2, 4, 32).astype(np.uint8)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return np.bitwise_or.reduce(q4 << shifts, axis=2).reshape(q.shape[0], 64)


def unpack_2bit_by_32(packed: np.ndarray) -> np.ndarray:
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return ((packed.reshape(packed.shape[0], 2, 1, 32) >> shifts) & 3).reshape(packed.shape[0], 256)
