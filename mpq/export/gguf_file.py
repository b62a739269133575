"""Write a GGUF file of pre-quantized tensors, and predict its exact size in bytes without writing it.

The writer is gguf-py's GGUFWriter (the reference writer of llama.cpp's repository), given each tensor's
bytes in its own ggml type; the prediction counts what that writer puts in the file, by the GGUF spec
(llama.cpp docs/gguf.md): a 24-byte header (magic, version, tensor count, KV count), each metadata
key/value (key string, value type, value), each tensor info (name, n_dims, dims, type, offset), zero
padding to the alignment (general.alignment, 32 by default), then each tensor's data padded to the
alignment (gguf-py pads the last one too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.gguf_writer import GGUFValue

from mpq.quant.gguf import GGMLType, tensor_nbytes

DEFAULT_ALIGNMENT = 32
HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, metadata KV count
_SCALAR_BYTES = {
    GGUFValueType.UINT8: 1,
    GGUFValueType.INT8: 1,
    GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4,
    GGUFValueType.INT32: 4,
    GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8,
    GGUFValueType.INT64: 8,
    GGUFValueType.FLOAT64: 8,
    GGUFValueType.BOOL: 1,
}
_NUMPY_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8,
    np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16,
    np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32,
    np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.float32): GGUFValueType.FLOAT32,
    np.dtype(np.uint64): GGUFValueType.UINT64,
    np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float64): GGUFValueType.FLOAT64,
    np.dtype(np.bool_): GGUFValueType.BOOL,
}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: shape in numpy/torch order (the last dimension is the row), its ggml type
    and its bytes (uint8, as mpq.quant.gguf.quantize returns them); `data` may be None for a prediction."""

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.shape)


@dataclass(frozen=True)
class GGUFLayout:
    """Where everything lands in the file; file_size is what `ls -l` shows."""

    file_size: int
    header_bytes: int  # header + metadata KVs + tensor infos, before the padding
    data_offset: int  # start of the tensor data (aligned)
    tensor_offsets: dict[str, int]  # absolute file offset of each tensor's data
    data_bytes: int  # the tensors' own bytes, without padding
    padding_bytes: int  # all alignment padding in the file


def pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _int_type(values: Sequence[int]) -> GGUFValueType:
    lo, hi = min(values), max(values)
    if lo >= 0:
        return GGUFValueType.UINT32 if hi < 2**32 else GGUFValueType.UINT64
    return GGUFValueType.INT32 if lo >= -(2**31) and hi < 2**31 else GGUFValueType.INT64


def _scalar_type(values: Sequence[Any]) -> GGUFValueType:
    """The one GGUF type of these plain Python values: bool, ints (UINT32 unless negative or wide), float, str."""
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return GGUFValueType.BOOL
    if kinds <= {int}:
        return _int_type(values)
    if kinds <= {int, float}:
        return GGUFValueType.FLOAT32
    if kinds <= {str, bytes}:
        return GGUFValueType.STRING
    raise ValueError(f"GGUF metadata values must be bool, int, float, str or lists of one of them, got {kinds}")


def typed_value(value: Any) -> GGUFValue:
    """A metadata value with its GGUF type: a GGUFValue as given, a numpy array as its dtype, a plain value
    or list inferred (ints are UINT32 unless negative or wider, as llama.cpp's counts and token ids).
    Arrays of arrays are refused: llama.cpp's reader rejects the whole file for one."""
    if isinstance(value, GGUFValue):
        if value.type == GGUFValueType.ARRAY and value.sub_type is None:  # fix the item type gguf-py would infer
            value = GGUFValue(value.value, value.type, _inferred_item_type(value.value))
        if value.sub_type == GGUFValueType.ARRAY:
            raise ValueError("GGUF metadata arrays of arrays cannot be read by llama.cpp; flatten them")
        return value
    if isinstance(value, np.ndarray):
        if value.dtype not in _NUMPY_TYPES or value.ndim != 1:
            raise ValueError(f"a GGUF metadata array must be 1-D of a GGUF scalar type, got {value.dtype}")
        return GGUFValue(value.tolist(), GGUFValueType.ARRAY, _NUMPY_TYPES[value.dtype])
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("GGUF metadata arrays cannot be empty")
        return GGUFValue(list(value), GGUFValueType.ARRAY, _scalar_type(value))
    return GGUFValue(value, _scalar_type([value]))


def _inferred_item_type(items: Sequence[Any]) -> GGUFValueType:
    """The item type GGUFWriter infers for an array given without one."""
    return GGUFValueType.UINT8 if isinstance(items, bytes) else GGUFValueType.get_type(items[0])


def _value_bytes(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> int:
    if vtype in _SCALAR_BYTES:
        return _SCALAR_BYTES[vtype]
    if vtype == GGUFValueType.STRING:
        return 8 + len(value.encode("utf-8") if isinstance(value, str) else value)
    if vtype != GGUFValueType.ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype}")
    item_type = sub_type if sub_type is not None else _inferred_item_type(value)
    if item_type in _SCALAR_BYTES:
        return 4 + 8 + len(value) * _SCALAR_BYTES[item_type]
    return 4 + 8 + sum(_value_bytes(v, item_type, None) for v in value)


def typed_metadata(arch: str, metadata: Mapping[str, Any] | None, alignment: int) -> dict[str, GGUFValue]:
    """Every KV the file holds, in file order: general.architecture, general.alignment when not 32, then
    `metadata` (which may override either)."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"GGUF alignment must be a power of two, got {alignment}")
    kv = {"general.architecture": GGUFValue(arch, GGUFValueType.STRING)}
    if alignment != DEFAULT_ALIGNMENT:
        kv["general.alignment"] = GGUFValue(alignment, GGUFValueType.UINT32)
    for key, value in (metadata or {}).items():
        kv[key] = typed_value(value)
    return kv


def _kv_bytes(kv: Mapping[str, GGUFValue]) -> int:
    key_bytes = sum(8 + len(key.encode("utf-8")) for key in kv)
    return key_bytes + sum(4 + _value_bytes(v.value, v.type, v.sub_type) for v in kv.values())


def _check_tensors(tensors: Sequence[GGUFTensor]) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("GGUF tensor names must be unique")
    for t in tensors:
        if t.data is not None and t.data.size != t.nbytes:
            raise ValueError(
                f"tensor {t.name}: {GGMLType(t.ggml_type).name} {t.shape} is {t.nbytes} bytes, data has {t.data.size}"
            )


def gguf_layout(
    arch: str,
    tensors: Sequence[GGUFTensor],
    metadata: Mapping[str, Any] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
) -> GGUFLayout:
    """The file's exact layout and size, computed from names, types, shapes and metadata alone."""
    _check_tensors(tensors)
    kv = typed_metadata(arch, metadata, alignment)
    infos = sum(8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    header = HEADER_BYTES + _kv_bytes(kv) + infos
    offset = data_offset = pad(header, alignment)
    offsets = {}
    for t in tensors:
        offsets[t.name] = offset
        offset += pad(t.nbytes, alignment)
    data_bytes = sum(t.nbytes for t in tensors)
    return GGUFLayout(offset, header, data_offset, offsets, data_bytes, offset - header - data_bytes)


def predict_gguf_size(
    arch: str,
    tensors: Sequence[GGUFTensor],
    metadata: Mapping[str, Any] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
) -> int:
    """Size in bytes of the file write_gguf writes for the same arguments."""
    return gguf_layout(arch, tensors, metadata, alignment).file_size


def write_gguf(
    path: str | Path,
    arch: str,
    tensors: Sequence[GGUFTensor],
    metadata: Mapping[str, Any] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
) -> GGUFLayout:
    """Write the GGUF file (every tensor in its own type, data as given) and return its layout."""
    layout = gguf_layout(arch, tensors, metadata, alignment)
    if any(t.data is None for t in tensors):
        raise ValueError("every tensor needs its bytes (GGUFTensor.data) to be written")
    writer = GGUFWriter(path, arch)
    writer.data_alignment = alignment
    for key, value in typed_metadata(arch, metadata, alignment).items():
        if key == "general.architecture" and value.value == arch:
            continue  # GGUFWriter adds it first
        writer.add_key_value(key, value.value, value.type, value.sub_type)
    for t in tensors:
        shape = tuple(int(s) for s in t.shape)
        data = np.ascontiguousarray(t.data, dtype=np.uint8).reshape(*shape[:-1], t.nbytes // max(1, prod(shape[:-1])))
        writer.add_tensor(t.name, data, raw_dtype=GGMLQuantizationType(int(t.ggml_type)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return layout
