"""GGUF tensor types as weight formats: each width stands for one ggml type, quantized as llama.cpp does it.

    gguf         2: Q2_K  3: Q3_K  4: Q4_K  5: Q5_K  6: Q6_K  8: Q8_0
    gguf-legacy  4: Q4_0  5: Q5_0  8: Q8_0

A layer's weight [out, ...] is stored as llama.cpp stores a matrix: out rows of `in` weights (the row is the
input dimension). When a row's length is not a multiple of the type's block, the type is the one llama-quantize
substitutes (mpq.quant.gguf.llama_cpp_type: Q4_K -> Q5_0, ...). The bytes are llama.cpp's bit for bit
(mpq.quant.gguf); weight_bytes is the tensor's bytes padded to the file's alignment (a GGUF file pads every
tensor's data to it), so that the solver's bytes are the file's. The packed tensors hold the block bytes
(`<layer>.weight_codes`, uint8, padded likewise) and no scales: the blocks carry their own. No clipping: the
types choose their own scales. One type per layer (no per-channel widths).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, ClassVar

from mpq.errors import MpqError
from mpq.quant.formats.base import WeightFormat

if TYPE_CHECKING:
    from mpq.quant.gguf import GGMLType

GGUF_ALIGNMENT = 32  # GGUF's default general.alignment: every tensor's data starts at a multiple of it


def padded(nbytes: int, alignment: int = GGUF_ALIGNMENT) -> int:
    return (nbytes + alignment - 1) // alignment * alignment


def matrix_shape(shape) -> tuple[int, int]:
    """(rows, row length) of a weight of `shape` as GGUF stores it: dim 0 rows, the rest flattened into each row."""
    return int(shape[0]), int(prod(shape[1:]))


@dataclass(frozen=True)
class GGUFTensorData:
    """One layer's weight in a ggml type: its block bytes (uint8 [rows, row bytes]) and its shape."""

    data: object  # numpy uint8
    ggml_type: GGMLType
    shape: tuple[int, ...]
    bits: int
    device: object = None

    def dequantize(self):
        import torch

        from mpq.quant.gguf import dequantize

        values = dequantize(self.data, self.ggml_type, matrix_shape(self.shape))
        return torch.from_numpy(values).reshape(self.shape).to(self.device)


@dataclass(frozen=True)
class GGUFTypes(WeightFormat):
    """K-quant GGUF types by width (the module docstring)."""

    name = "gguf"
    # by name: mpq.quant.gguf (numpy) is imported when a tensor is quantized, not when the `mpq` parser names formats
    types: ClassVar[dict[int, str]] = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}
    widths = tuple(types)
    clipped = False
    own_tensors = True  # mpq.verify.apply stores `packed_tensors` and reads back `unpacked_weight`
    slow = True

    def __post_init__(self) -> None:
        if self.group_size is not None:
            raise MpqError(f"the {self.name} weight format's blocks hold their own scales: leave out the group size")

    def ggml_type(self, bits: int, row: int) -> GGMLType:
        """The type a layer with rows of `row` weights is stored in at `bits` (llama-quantize's substitution)."""
        if bits not in self.types:
            raise MpqError(
                f"the {self.name} weight format has no {bits}-bit type: choose widths from "
                f"{', '.join(f'{b} ({t})' for b, t in self.types.items())}"
            )
        from mpq.quant.gguf import llama_cpp_type

        return llama_cpp_type(self.types[bits], row)

    def quantize(self, weight, bits, clip_ratio=None) -> GGUFTensorData:
        widths = set(bits)
        if len(widths) != 1:
            raise MpqError(f"the {self.name} weight format stores one type per layer: search with --granularity layer")
        (b,) = widths
        matrix = weight.detach().reshape(weight.shape[0], -1)
        ggml_type = self.ggml_type(b, matrix.shape[1])
        from mpq.quant.gguf import quantize

        data = quantize(matrix, ggml_type)
        return GGUFTensorData(data, ggml_type, tuple(weight.shape), b, weight.device)

    def weight_bytes(self, per_channel: int, channels: int, bits: int) -> int:
        from mpq.quant.gguf import tensor_nbytes

        return padded(tensor_nbytes(self.ggml_type(bits, per_channel), (channels, per_channel)))

    def packed_tensors(self, q: GGUFTensorData) -> dict:
        """{"weight_codes": the block bytes, zero-padded to the alignment}."""
        import numpy as np
        import torch

        raw = np.ascontiguousarray(q.data).reshape(-1)
        stored = np.zeros(padded(raw.size), dtype=np.uint8)
        stored[: raw.size] = raw
        return {"weight_codes": torch.from_numpy(stored)}

    def unpacked_weight(self, tensors: dict, shape: list[int], bits: int):
        """The float32 weight of `shape` that packed_tensors' bytes stand for."""
        import torch

        from mpq.quant.gguf import dequantize, tensor_nbytes

        rows = matrix_shape(shape)
        ggml_type = self.ggml_type(bits, rows[1])
        data = tensors["weight_codes"].numpy()[: tensor_nbytes(ggml_type, rows)]
        return torch.from_numpy(dequantize(data, ggml_type, rows)).reshape(tuple(shape))

    def cache_fields(self) -> dict:
        return {"weight_format": self.name}

    def describe(self) -> str:
        types = ", ".join(f"{b}: {t}" for b, t in self.types.items())
        return f"{self.name} weights (GGUF types by width, {types})"


@dataclass(frozen=True)
class GGUFLegacyTypes(GGUFTypes):
    """The 32-weight-block GGUF types by width."""

    name = "gguf-legacy"
    types: ClassVar[dict[int, str]] = {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}
    widths = tuple(types)
