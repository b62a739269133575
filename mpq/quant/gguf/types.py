"""GGUF tensor types: sizes, and quantize/dequantize of a matrix to the bytes llama.cpp writes.

Depends only on numpy (a torch tensor is accepted and read as float32), so that weight-format classes can
wrap it. The bytes equal llama.cpp's reference quantizers (ggml_quantize_chunk without an importance
matrix, as `llama-quantize` without --imatrix) bit for bit: tests/test_gguf_types.py checks them against
gguf-py and against fixtures made by llama.cpp's own C code (tests/data/gguf/make_fixtures.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from math import prod
from typing import Callable

import numpy as np

import mpq.quant.gguf.kdequant as kdequant
import mpq.quant.gguf.kquants as kquants
import mpq.quant.gguf.legacy as legacy
from mpq.quant.gguf.common import F32, bf16_bits, bf16_value, fp16_bits, fp16_value

CHUNK_WEIGHTS = 1 << 20  # weights quantized per numpy pass: bounds the temporaries (~tens of MB)


class GGMLType(IntEnum):
    """ggml_type numbers (ggml.h), as GGUF tensor infos store them."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class GGUFTypeInfo:
    ggml_type: GGMLType
    block_size: int  # weights per block (along a row)
    type_size: int  # bytes per block
    quantize_blocks: Callable[[np.ndarray], np.ndarray]  # float32 [blocks, block_size] -> uint8 [blocks, type_size]
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]

    @property
    def name(self) -> str:
        return self.ggml_type.name

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size


def _float_codec(dtype, to_bits, from_bits):
    def encode(blocks: np.ndarray) -> np.ndarray:
        bits = to_bits(blocks) if to_bits else np.asarray(blocks, dtype=F32)
        return np.ascontiguousarray(bits).astype(np.dtype(dtype).newbyteorder("<")).view(np.uint8)

    def decode(data: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(data).view(np.dtype(dtype).newbyteorder("<"))
        return from_bits(values) if from_bits else values.astype(F32)

    return encode, decode


def _info(ggml_type, block_size, type_size, quantize_fn, dequantize_fn) -> GGUFTypeInfo:
    return GGUFTypeInfo(GGMLType[ggml_type], block_size, type_size, quantize_fn, dequantize_fn)


GGUF_TYPES: dict[GGMLType, GGUFTypeInfo] = {
    info.ggml_type: info
    for info in [
        _info("F32", 1, 4, *_float_codec(np.float32, None, None)),
        _info("F16", 1, 2, *_float_codec(np.uint16, fp16_bits, fp16_value)),
        _info("BF16", 1, 2, *_float_codec(np.uint16, bf16_bits, bf16_value)),
        _info("Q8_0", 32, 34, legacy.quantize_q8_0, legacy.dequantize_q8_0),
        _info("Q5_1", 32, 24, legacy.quantize_q5_1, legacy.dequantize_q5_1),
        _info("Q5_0", 32, 22, legacy.quantize_q5_0, legacy.dequantize_q5_0),
        _info("Q4_1", 32, 20, legacy.quantize_q4_1, legacy.dequantize_q4_1),
        _info("Q4_0", 32, 18, legacy.quantize_q4_0, legacy.dequantize_q4_0),
        _info("Q6_K", 256, 210, kquants.quantize_q6_k, kdequant.dequantize_q6_k),
        _info("Q5_K", 256, 176, kquants.quantize_q5_k, kdequant.dequantize_q5_k),
        _info("Q4_K", 256, 144, kquants.quantize_q4_k, kdequant.dequantize_q4_k),
        _info("Q3_K", 256, 110, kquants.quantize_q3_k, kdequant.dequantize_q3_k),
        _info("Q2_K", 256, 84, kquants.quantize_q2_k, kdequant.dequantize_q2_k),
    ]
}


def type_info(ggml_type: GGMLType | str | int) -> GGUFTypeInfo:
    """The type's sizes and codecs, by GGMLType, ggml number or name ("Q4_K", case-insensitive)."""
    if isinstance(ggml_type, str):
        if ggml_type.upper() not in GGMLType.__members__:
            raise ValueError(f"unknown GGUF type {ggml_type!r}; use one of {', '.join(GGMLType.__members__)}")
        return GGUF_TYPES[GGMLType[ggml_type.upper()]]
    return GGUF_TYPES[GGMLType(int(ggml_type))]


def row_nbytes(ggml_type: GGMLType | str | int, n: int) -> int:
    """Bytes of one row of n weights (n a multiple of the block size)."""
    info = type_info(ggml_type)
    if n % info.block_size:
        raise ValueError(f"{info.name} needs rows whose length is a multiple of {info.block_size}; this one has {n}")
    return n // info.block_size * info.type_size


def tensor_nbytes(ggml_type: GGMLType | str | int, shape: tuple[int, ...] | list[int]) -> int:
    """Bytes of a tensor of this shape (numpy/torch order: the last dimension is the row)."""
    return row_nbytes(ggml_type, int(shape[-1])) * prod(int(s) for s in shape[:-1])


# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): the type llama-quantize writes instead when a
# row's length is not a multiple of the block size; F16 when the fallback's block does not divide it either.
LLAMA_CPP_FALLBACK = {
    GGMLType.Q2_K: GGMLType.Q4_0,
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}


def llama_cpp_type(ggml_type: GGMLType | str | int, n: int) -> GGMLType:
    """The type llama-quantize stores a tensor of rows of n weights in when asked for `ggml_type`."""
    wanted = type_info(ggml_type).ggml_type
    if n % GGUF_TYPES[wanted].block_size == 0:
        return wanted
    fallback = LLAMA_CPP_FALLBACK.get(wanted, wanted)
    return fallback if n % GGUF_TYPES[fallback].block_size == 0 else GGMLType.F16


def _as_float32(weights) -> np.ndarray:
    if hasattr(weights, "detach"):  # a torch tensor, read without importing torch
        weights = weights.detach().to("cpu").float().numpy()
    return np.ascontiguousarray(weights, dtype=F32)


def quantize(weights, ggml_type: GGMLType | str | int) -> np.ndarray:
    """llama.cpp's bytes for a float matrix [..., n] (numpy or torch): uint8 [rows, row_nbytes]."""
    info = type_info(ggml_type)
    x = _as_float32(weights)
    n = x.shape[-1] if x.ndim else 1
    rows = x.reshape(-1, n)
    out = np.empty((rows.shape[0], row_nbytes(info.ggml_type, n)), dtype=np.uint8)
    step = max(1, CHUNK_WEIGHTS // max(n, 1))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step]
        blocks = info.quantize_blocks(chunk.reshape(-1, info.block_size))
        out[start : start + step] = blocks.reshape(chunk.shape[0], -1)
    return out


def dequantize(data: np.ndarray, ggml_type: GGMLType | str | int, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Float32 weights of `shape` from the type's bytes (as llama.cpp's dequantize_row_*)."""
    info = type_info(ggml_type)
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    expected = tensor_nbytes(info.ggml_type, shape)
    if raw.size != expected:
        raise ValueError(f"{info.name} of shape {tuple(shape)} has {expected} bytes, got {raw.size}")
    values = info.dequantize_blocks(raw.reshape(-1, info.type_size))
    return np.asarray(values, dtype=F32).reshape(tuple(int(s) for s in shape))
