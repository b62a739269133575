"""A plan as a compressed-tensors checkpoint: a save_pretrained folder transformers (and vLLM) load.

    DIR/config.json        the model's config with its `quantization_config` (quant_method "compressed-tensors",
                           format "pack-quantized"): one config group per scheme, its `targets` the full names
                           of its layers (`re:^name$`), `ignore` the Linear layers left in float
    DIR/model.safetensors  per quantized layer weight_packed, weight_scale, weight_shape
                           (mpq.quant.formats.compressed_tensors), every other tensor of the state dict as the
                           model holds it (float32), each tensor once (a tied tensor under its first name)
    DIR/tokenizer files    copied from the hf: folder the model came from, when there is one

The safetensors file is written here (an 8-byte header length, the JSON header padded with spaces to a multiple
of 8, the tensors in the header's order), so that its size is known before it is written (file_size): the
plan's predicted size is that file's size to the byte.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError
from mpq.plan import Plan

DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float64: "F64",
}
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside mpq's adapter (or the model itself)."""
    return getattr(model, "inner", model)


def _spec(t: torch.Tensor) -> tuple[str, list[int], int]:
    if t.dtype not in DTYPES:
        raise MpqError(f"the compressed-tensors export cannot store {t.dtype} tensors: export with --format packed")
    return DTYPES[t.dtype], list(t.shape), t.numel() * t.element_size()


def header_bytes(specs: dict[str, tuple[str, list[int], int]]) -> bytes:
    """The safetensors header of tensors (name: dtype, shape, bytes) in the order given, padded to 8 bytes."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, nbytes) in specs.items():
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def file_size(specs: dict[str, tuple[str, list[int], int]]) -> int:
    """The bytes of the safetensors file that holds tensors of these specs."""
    return 8 + len(header_bytes(specs)) + sum(nbytes for _, _, nbytes in specs.values())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """`tensors` as a safetensors file at `path` (atomically); its size."""
    from mpq.files import atomic_path

    header = header_bytes({name: _spec(t) for name, t in tensors.items()})
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for t in tensors.values():
            data = t.detach().cpu().contiguous()
            f.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return path.stat().st_size


def _layout(model: nn.Module, plan: Plan) -> list[tuple[str, str | None, str]]:
    """(file name, quantized layer or None, part) of every tensor the file holds, in its order: the state dict's,
    a quantized layer's weight replaced by weight_packed, weight_scale and weight_shape, each tensor once."""
    inner = transformers_model(model)
    layers = {name.removeprefix("inner."): name for name in plan.layers}
    seen, layout = set(), []
    for key, value in inner.state_dict(keep_vars=True).items():
        owner, _, part = key.rpartition(".")
        if id(value) in seen:
            continue  # a tied tensor, stored under its first name
        seen.add(id(value))
        if owner in layers and part == "weight":
            layout += [(f"{owner}.{p}", layers[owner], p) for p in ("weight_packed", "weight_scale", "weight_shape")]
        else:
            layout.append((key, layers.get(owner) if part == "bias" else None, part))
    return layout


def checkpoint_specs(model: nn.Module, plan: Plan) -> dict[str, tuple[str, list[int], int]]:
    """The file's tensors (dtype, shape, bytes) for `plan`, without quantizing anything."""
    inner, fmt = transformers_model(model), plan.weight_format
    state = inner.state_dict()
    specs = {}
    for key, layer, part in _layout(model, plan):
        if layer is None or part == "bias":
            specs[key] = _spec(state[key].to(torch.float32) if state[key].is_floating_point() else state[key])
            continue
        weight = state[f"{key.rpartition('.')[0]}.weight"]
        out, per_channel = weight.shape[0], weight[0].numel()
        bits = plan.layers[layer].weight_bits
        shapes = {
            "weight_packed": ("I32", [out, math.ceil(per_channel * bits / 32)], 4),
            "weight_scale": (DTYPES[getattr(torch, fmt.scale_dtype)], [out, fmt.scales_per_channel(per_channel)], 2),
            "weight_shape": ("I64", [2], 8),
        }
        dtype, shape, size = shapes[part]
        specs[key] = (dtype, shape, math.prod(shape) * size)
    return specs


def checkpoint_tensors(model: nn.Module, plan: Plan, packed) -> dict[str, torch.Tensor]:
    """The file's tensors: the quantized layers' from the packed tensors the evaluator measured, the rest float."""
    inner = transformers_model(model)
    state = inner.state_dict()
    tensors = {}
    for key, layer, part in _layout(model, plan):
        if layer is None:
            value = packed.tensors.get(key, packed.tensors.get(f"inner.{key}", state[key]))
        elif part == "weight_shape":
            value = torch.tensor(packed.layers[layer]["weight_shape"], dtype=torch.int64)
        else:
            value = packed.tensors[f"{layer}.{part}"]
        tensors[key] = value.to(torch.float32) if value.is_floating_point() and part not in ("weight_scale",) else value
    return tensors


def check_layers(model: nn.Module, names: list[str], fmt) -> None:
    """MpqError unless every named layer is a Linear layer compressed-tensors quantizes, with rows `fmt`'s groups
    fit."""
    conv1d = getattr(transformers_model(model), "mpq_conv1d_layers", ())  # transformers' Conv1D, seen as Linear
    for name in names:
        module = model.get_submodule(name)
        if type(module) is not nn.Linear or name.removeprefix("inner.") in conv1d:
            raise MpqError(
                f"compressed-tensors quantizes nn.Linear layers, and {name} is not one (a {type(module).__name__} or "
                "transformers' Conv1D): search this "
                "model with --target packed (or gguf)"
            )
        fmt.check_rows(name, module.weight[0].numel())


def quantization_config(model: nn.Module, plan: Plan) -> dict:
    """config.json's quantization_config: a config group per scheme targeting its layers by full name, the other
    Linear layers ignored."""
    fmt, groups = plan.weight_format, {}
    for name, lp in sorted(plan.layers.items()):
        groups.setdefault(lp.weight_bits, []).append(name.removeprefix("inner."))
    strategy = (
        {"strategy": "channel"} if fmt.group_size is None else {"strategy": "group", "group_size": fmt.group_size}
    )
    config_groups = {
        f"group_{i}": {
            "targets": [f"re:^{name.replace('.', '[.]')}$" for name in names],
            "weights": {"num_bits": bits, "type": "int", "symmetric": True, "dynamic": False, **strategy},
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
        for i, (bits, names) in enumerate(sorted(groups.items()))
    }
    planned = {name.removeprefix("inner.") for name in plan.layers}
    inner = transformers_model(model)
    ignore = [n for n, m in inner.named_modules() if isinstance(m, nn.Linear) and n not in planned]
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
    }


def export_compressed_tensors(model: nn.Module, plan: Plan, packed, out: Path) -> tuple[int, list[str]]:
    """The folder `out` (module docstring); the safetensors file's bytes and the files written."""
    from mpq.files import write_json_atomic

    check_layers(model, list(plan.layers), plan.weight_format)
    inner = transformers_model(model)
    out = Path(out)
    size = write_safetensors(out / WEIGHTS_FILE, checkpoint_tensors(model, plan, packed))
    config = inner.config.to_dict() | {"quantization_config": quantization_config(model, plan), "dtype": "float32"}
    config.setdefault("architectures", [type(inner).__name__])
    config["architectures"] = config["architectures"] or [type(inner).__name__]
    write_json_atomic(out / "config.json", config)
    written = [WEIGHTS_FILE, "config.json"]
    folder = getattr(model, "folder", None)
    for name in TOKENIZER_FILES if folder is not None else ():
        if (Path(folder) / name).is_file():
            shutil.copyfile(Path(folder) / name, out / name)
            written.append(name)
    return size, written
