"""The packed export on disk: one file holding exactly the tensors of a PackedModel, and a small header.

Format "mpq.packed/1" (all integers little-endian):

    8 bytes     magic b"MPQPACK1"
    4 bytes     H, uint32: length of the compressed header
    H bytes     zlib-compressed UTF-8 JSON header:
                {"format": "mpq.packed/1",
                 "model_fingerprint": sha256 of the user's model (as in plan.json),
                 "input_shape": [one sample's input shape],
                 "input_dtype": "int64" (only when not float32: token ids),
                 "adapter": {"input_names": [...], "outputs": {...}} (only for a model mpq.inputs.adapter wraps),
                 "layers": {"<module name>": {"weight_bits", "act_bits", "weight_shape"[, "group_size"]}},
                 "tensors": [["<name>", "<dtype>", [shape]], ...]}     (in file order)
    the tensor bytes, back to back in "tensors" order, no padding: the tensors of
    mpq.verify.apply (uint8 weight codes, float32 scales and biases, float32 input scale and
    int32 input zero point, the float remainder), each in its dtype's little-endian layout.

So   file size = PackedModel.size_bytes (= report.json's measured.size_bytes) + 12 + H.
The container overhead is 12 + H bytes: 1,559 bytes for the default model (250 tensors). Why not
safetensors: its uncompressed JSON header costs 29,240 bytes there, more than a plan filling a
4 MB budget leaves (3,472 bytes), and the file has to fit the budget the plan was made for.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpq.device import model_device
from mpq.errors import MpqError
from mpq.files import write_bytes_atomic
from mpq.inputs.adapter import ModelAdapter, Outputs, restore
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, fold_batchnorm, model_fingerprint
from mpq.verify.apply import PackedModel, fake_quant_model

FORMAT = "mpq.packed/1"
MAGIC = b"MPQPACK1"
PREFIX_BYTES = len(MAGIC) + 4
EXAMPLE_BATCH = 2
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
}


@dataclass(frozen=True)
class ModelInputs:
    """What a packed file records of the model's input, so that load_packed can run the model: one sample's
    shape and dtype, and for a model mpq wraps (mpq.inputs.adapter) its named inputs and output."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    input_names: tuple[str, ...] = ()
    outputs: Outputs | None = None  # None: the model takes one tensor and returns one, unwrapped

    @classmethod
    def of(cls, prepared: PreparedModel, data: Dataset) -> "ModelInputs":
        adapted = isinstance(prepared.original, ModelAdapter)
        return cls(
            tuple(data.x.shape[1:]),
            str(data.x.dtype).removeprefix("torch."),
            prepared.input_names,
            prepared.outputs if adapted else None,
        )

    def to_json(self) -> dict:
        adapter = (
            {"adapter": {"input_names": list(self.input_names), "outputs": self.outputs.to_json()}}
            if self.outputs is not None
            else {}
        )
        return (
            {"input_shape": list(self.shape)}
            | ({"input_dtype": self.dtype} if self.dtype != "float32" else {})
            | adapter
        )

    @classmethod
    def from_json(cls, header: dict) -> "ModelInputs":
        adapter = header.get("adapter")
        if adapter is None:
            return cls(tuple(header["input_shape"]), header.get("input_dtype", "float32"))
        return cls(
            tuple(header["input_shape"]),
            header.get("input_dtype", "float32"),
            tuple(adapter["input_names"]),
            Outputs(**adapter["outputs"]),
        )


@dataclass(frozen=True)
class PackedFile:
    """A packed export as stored: its tensors, the model it was made from, and its byte counts."""

    packed: PackedModel
    model_fingerprint: str
    inputs: ModelInputs
    file_bytes: int
    header_bytes: int  # 12 + H: everything in the file that is not tensor data

    @property
    def tensor_bytes(self) -> int:
        return self.packed.size_bytes


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_packed(packed: PackedModel, model_fingerprint: str, inputs: ModelInputs) -> tuple[bytes, int]:
    """The file's bytes and its header length (12 + H)."""
    prefix = _prefix(packed, model_fingerprint, inputs)
    return prefix + b"".join(_tensor_bytes(t) for t in packed.tensors.values()), len(prefix)


def container_bytes(packed: PackedModel, model_fingerprint: str, inputs: ModelInputs) -> int:
    """12 + H: the bytes of the file that are not tensor data."""
    return len(_prefix(packed, model_fingerprint, inputs))


def _prefix(packed: PackedModel, model_fingerprint: str, inputs: ModelInputs) -> bytes:
    header = {
        "format": FORMAT,
        "model_fingerprint": model_fingerprint,
        **inputs.to_json(),
        "layers": packed.layers,
        "tensors": [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in packed.tensors.items()],
    }
    compressed = zlib.compress(json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)
    return MAGIC + struct.pack("<I", len(compressed)) + compressed


def save_packed(packed: PackedModel, path: "str | Path", model_fingerprint: str, inputs: ModelInputs) -> PackedFile:
    """Write `packed` atomically; return what was written and its byte counts."""
    data, header_bytes = encode_packed(packed, model_fingerprint, inputs)
    write_bytes_atomic(path, data)
    return PackedFile(packed, model_fingerprint, inputs, file_bytes=len(data), header_bytes=header_bytes)


def _decode_tensors(data: bytes, offset: int, entries: list) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, dtype_name, shape in entries:
        dtype = DTYPES[dtype_name]
        count = 1
        for d in shape:
            count *= d
        size = count * dtype.itemsize
        chunk = bytearray(data[offset : offset + size])
        if len(chunk) != size:
            raise ValueError(f"tensor {name} is cut short")
        tensors[name] = (
            torch.frombuffer(chunk, dtype=torch.uint8).view(dtype).reshape(shape)
            if size
            else torch.empty(shape, dtype=dtype)
        )
        offset += size
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes follow the last tensor")
    return tensors


def read_packed(path: "str | Path") -> PackedFile:
    """Read a file written by save_packed; a file of another kind is a user error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MpqError(
            f"cannot read packed file {path}: {exc.strerror}; write one with `mpq export PLAN --format packed`"
        ) from None
    if data[: len(MAGIC)] != MAGIC:
        raise MpqError(
            f"{path} is not an mpq packed export (it does not start with {MAGIC!r}); export it again with `mpq export`"
        )
    try:
        (length,) = struct.unpack("<I", data[len(MAGIC) : PREFIX_BYTES])
        header = json.loads(zlib.decompress(data[PREFIX_BYTES : PREFIX_BYTES + length]))
        tensors = _decode_tensors(data, PREFIX_BYTES + length, header["tensors"])
        packed = PackedModel(tensors=tensors, layers=header["layers"])
        return PackedFile(
            packed, header["model_fingerprint"], ModelInputs.from_json(header), len(data), PREFIX_BYTES + length
        )
    except (struct.error, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise MpqError(f"{path} is a damaged mpq packed export ({exc}); export it again with `mpq export`") from None


def load_packed(path: "str | Path", model: nn.Module) -> nn.Module:
    """The fake-quant model the evaluator measures, rebuilt from a packed file and the user's `model`.

    `model` must be the model the plan was made for (same fingerprint); its BatchNorms are folded on
    a copy exactly as in `mpq search`, then every exported tensor is taken from the file. The returned
    module fake-quantizes each quantized layer's input with forward pre-hooks; `model` is not changed.
    """
    stored = read_packed(path)
    inputs = stored.inputs
    model = restore(model, inputs.input_names, inputs.outputs)  # wrapped as it was when the plan was applied
    if model_fingerprint(model) != stored.model_fingerprint:
        raise MpqError(
            f"{path} was exported from another model (its fingerprint differs): export the plan for this model"
        )
    example = torch.zeros(
        (EXAMPLE_BATCH, *inputs.shape), dtype=DTYPES.get(inputs.dtype, torch.float32), device=model_device(model)
    )
    folded, _ = fold_batchnorm(model, example)
    return fake_quant_model(folded, stored.packed)
