"""torchao export: the packed tensors the evaluator measures (mpq.verify.measure.pack_plan), as a file that
`load_torchao_config` reads into a torchao `FqnToConfig` of `MpqLayerConfig`s (mpq.export.torchao_layers):

    folded = mpq.inputs.graph.prepare_model(model, x).folded     # the BatchNorm-folded model the plan names
    quantize_(folded, load_torchao_config("plan.torchao.json"), filter_fn=None)

after which every planned layer's weight is torchao's IntxUnpackedToInt8Tensor holding mpq's codes and
per-output-channel scales (clip ratios, depthwise convs, per-channel widths included), its bias the
corrected bias, and its input quantized with mpq's calibrated static quantizer; by default each layer with
a quantized input computes as the evaluator does (integer accumulation), `integer=False` runs torchao's own
float kernels instead (mpq.export.torchao_layers).

The file is JSON (schema "mpq.torchao/1"): per layer, its module type, widths (channel_bits for a plan with
per-channel widths), weight shape, and the packed tensors of that layer, each as {"dtype", "shape",
"base64"} of its raw little-endian bytes: weight_codes (uint8, b bits a code, the chunks of
mpq.verify.apply.pack_chunks), weight_scale (float32), bias (float32), input_scale (float32) and
input_zero_point (int32). Reading it parses JSON and decodes bytes of an allowed dtype: nothing in the file
is executed or unpickled. A group-wise plan's layers also hold "group_size", their weight_scale [out, groups].

A plan whose inputs all stay in float (weight-only, `--act-bits none`) can also be applied as torchao's own
IntxWeightOnlyConfig per module (mpq.export.torchao_intx):

    quantize_(folded, load_intx_config("plan.torchao.json"), filter_fn=None)

and the export then writes beside the file a readable module map, "<name>.modules.json" (schema
"mpq.torchao-modules/1"): per module its widths, group size and the torchao config it gets.
"""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpq.errors import MpqError
from mpq.files import write_text_atomic
from mpq.inputs.graph import quantizable_modules, tied_modules
from mpq.quant.affine import ActQuantParams
from mpq.verify.apply import PackedModel, unpack_codes

SCHEMA = "mpq.torchao/1"
LAYER_TENSORS = ("weight_codes", "weight_scale", "bias", "input_scale", "input_zero_point")
DTYPES = {"uint8": np.uint8, "float32": np.float32, "int32": np.int32}


@dataclass(frozen=True)
class TorchaoExport:
    path: Path
    file_bytes: int
    notes: tuple[str, ...]


def _import_torchao():
    try:
        from torchao.quantization import FqnToConfig

        from mpq.export import torchao_layers
    except ImportError:
        raise MpqError(
            "the torchao export needs torchao: pip install torchao (it must not pull another torch)"
        ) from None
    return FqnToConfig, torchao_layers


def _encode(tensor: torch.Tensor) -> dict:
    array = tensor.detach().contiguous().numpy()
    dtype = next(name for name, t in DTYPES.items() if array.dtype == t)
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "base64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
    }


def _decode(entry: dict) -> torch.Tensor:
    dtype = np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")
    shape = [int(n) for n in entry["shape"]]
    raw = base64.b64decode(entry["base64"], validate=True)
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes for shape {shape} of {entry['dtype']}")
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape).copy())


def torchao_file(prepared_folded: nn.Module, packed: PackedModel) -> dict:
    """The JSON document of the export: every packed layer's widths and tensors."""
    modules = quantizable_modules(prepared_folded, embeddings=True)
    layers = {}
    for name, meta in packed.layers.items():
        tensors = {k: _encode(packed.tensors[f"{name}.{k}"]) for k in LAYER_TENSORS if f"{name}.{k}" in packed.tensors}
        layers[name] = {
            "module": type(modules[name]).__name__,
            **meta,
            "tensors": tensors,
            "tied": tied_modules(prepared_folded, name),
        }  # they read its quantized table, as the evaluator's do
    return {
        "schema": SCHEMA,
        "apply": (
            "torchao.quantization.quantize_(folded_model, mpq.export.torchao_config.load_torchao_config(path), "
            "filter_fn=None)"
        ),
        "layers": layers,
    }


def _with_tied(configs: dict, layers: dict, untied) -> dict:
    """`configs` and, for every module tied to a layer (the file's "tied"), `untied(config)`: the layer's codes
    and scales without its bias and input quantizer (a tied embedding reads token ids and adds no bias)."""
    extra = {tied: untied(configs[name]) for name, layer in layers.items() for tied in layer["meta"].get("tied", [])}
    return {**configs, **extra}


def save_torchao_config(prepared_folded: nn.Module, packed: PackedModel, path: "str | Path") -> TorchaoExport:
    """Write the export (JSON), atomically."""
    text = json.dumps(torchao_file(prepared_folded, packed), separators=(",", ":")) + "\n"
    write_text_atomic(path, text)
    weight_only = bool(packed.layers) and not any(meta["act_bits"] for meta in packed.layers.values())
    if weight_only:
        write_text_atomic(module_map_path(path), json.dumps(module_map(prepared_folded, packed), indent=1) + "\n")
    mixed = sum(1 for meta in packed.layers.values() if meta.get("channel_bits"))
    inputs = sum(1 for meta in packed.layers.values() if meta["act_bits"])
    notes = [
        f"{len(packed.layers)} layers as torchao IntxUnpackedToInt8Tensor weights (mpq's codes and scales; "
        f"{mixed} with per-channel widths), "
        f"{inputs} with mpq's static input quantizer; apply to the BatchNorm-folded model with "
        "quantize_(model, mpq.export.torchao_config.load_torchao_config(path), filter_fn=None)"
    ]
    if weight_only:
        notes.append(
            "weight-only: also torchao's own IntxWeightOnlyConfig per module with load_intx_config(path); the "
            f"module map is {module_map_path(path)}"
        )
    return TorchaoExport(Path(path), len(text.encode("utf-8")), tuple(notes))


def module_map_path(path: "str | Path") -> Path:
    """Where the readable module map of the export at `path` goes: plan.torchao.json -> plan.torchao.modules.json."""
    return Path(path).with_suffix(".modules.json")


def module_map(prepared_folded: nn.Module, packed: PackedModel) -> dict:
    """Per module: its type, widths, group size and the torchao config load_intx_config gives it."""
    from mpq.export.torchao_intx import describe, intx_config

    modules = quantizable_modules(prepared_folded, embeddings=True)
    entries = {}
    for name, meta in packed.layers.items():
        config = (
            None
            if meta.get("channel_bits")
            else intx_config(meta["weight_shape"], meta["weight_bits"], meta.get("group_size"))
        )
        how = (
            describe(config)
            if config is not None
            else (
                "mpq.export.torchao_layers.MpqLayerConfig (mpq's dequantized weight: torchao's blocks cannot hold "
                "these groups or widths)"
            )
        )
        entries[name] = {
            "module": type(modules[name]).__name__,
            "weight_bits": meta["weight_bits"],
            "group_size": meta.get("group_size"),
            "torchao": how,
        }
    return {
        "schema": "mpq.torchao-modules/1",
        "load": "mpq.export.torchao_config.load_intx_config(<the .torchao.json file>)",
        "modules": entries,
    }


def read_torchao_file(path: "str | Path") -> dict[str, dict]:
    """{layer: {"meta": widths and shape, "tensors": decoded tensors}} of a file save_torchao_config wrote."""
    try:
        document = json.loads(Path(path).read_text())
        if document.get("schema") != SCHEMA:
            raise ValueError(f"schema {document.get('schema')!r}, expected {SCHEMA!r}")
        layers = {}
        for name, entry in document["layers"].items():
            unknown = set(entry["tensors"]) - set(LAYER_TENSORS)
            if unknown:
                raise ValueError(f"unknown tensors {sorted(unknown)} in layer {name}")
            meta = {k: v for k, v in entry.items() if k != "tensors"}
            layers[name] = {"meta": meta, "tensors": {k: _decode(v) for k, v in entry["tensors"].items()}}
        return layers
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise MpqError(f"{path} is not a torchao export written by `mpq export --format torchao` ({exc})") from None


@contextmanager
def _damaged(path, name: str):
    """What reading a layer's tensors raises becomes one MpqError naming the layer."""
    try:
        yield
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise MpqError(f"{path}: layer {name} is damaged ({exc})") from None


def load_torchao_config(path: "str | Path", *, integer: bool = True):
    """The FqnToConfig of the export at `path`: one MpqLayerConfig per layer, keyed by its module name.
    `integer`: layers with a quantized input compute as the evaluator (exact accumulation) or, False,
    with torchao's float kernels on the fake-quantized input."""
    FqnToConfig, layers_module = _import_torchao()
    configs = {}
    layers = read_torchao_file(path)
    for name, layer in layers.items():
        meta, tensors = layer["meta"], layer["tensors"]
        with _damaged(path, name):
            codes = unpack_codes(tensors["weight_codes"], meta)
            params = None
            if meta["act_bits"]:
                params = ActQuantParams(
                    float(tensors["input_scale"][0]), int(tensors["input_zero_point"][0]), int(meta["act_bits"])
                )
        configs[name] = layers_module.MpqLayerConfig(
            codes,
            tensors["weight_scale"],
            int(meta["weight_bits"]),
            tensors.get("bias"),
            params,
            integer,
            meta.get("group_size"),
        )
    return FqnToConfig(_with_tied(configs, layers, lambda c: replace(c, bias=None, input=None)))


def load_intx_config(path: "str | Path", *, carry_scales: bool = True):
    """The FqnToConfig of a weight-only export at `path`, one torchao IntxWeightOnlyConfig per module where its
    blocks hold the plan's groups (mpq.export.torchao_intx), else mpq's MpqLayerConfig. `carry_scales`: with mpq's
    codes, scales and biases (the evaluator's numbers exactly), or False: torchao chooses its own scales."""
    FqnToConfig, layers_module = _import_torchao()
    from mpq.export import torchao_intx

    configs = {}
    layers = read_torchao_file(path)
    for name, layer in layers.items():
        meta, tensors = layer["meta"], layer["tensors"]
        if meta["act_bits"]:
            raise MpqError(
                f"{path}: layer {name} quantizes its input, and torchao's IntxWeightOnlyConfig keeps inputs in "
                "float: apply it with load_torchao_config, or search with --act-bits none"
            )
        with _damaged(path, name):
            codes = unpack_codes(tensors["weight_codes"], meta)
        group, bits, bias = meta.get("group_size"), int(meta["weight_bits"]), tensors.get("bias")
        config = None if meta.get("channel_bits") else torchao_intx.intx_config(meta["weight_shape"], bits, group)
        if config is None:
            configs[name] = layers_module.MpqLayerConfig(codes, tensors["weight_scale"], bits, bias, None, True, group)
        else:
            configs[name] = (
                torchao_intx.carried(config, codes, tensors["weight_scale"], bias, group) if carry_scales else config
            )
    return FqnToConfig(_with_tied(configs, layers, lambda c: replace(c, bias=None) if hasattr(c, "bias") else c))
