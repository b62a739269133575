"""What an `hf:` folder may ask of mpq, checked before transformers builds anything from it.

A folder's config.json is data, never code: one that names custom code (`auto_map`) is refused, whatever
`trust_remote_code` would allow. Its shapes must be those of the weights beside it: the safetensors
header (a JSON table of names, dtypes and shapes before the tensors) is read without loading a tensor, and
the model is first built on the meta device (no memory), with a cap on how many modules it may create, so a
config asking for 100,000 layers or a vocabulary of 10**12 is refused in a second instead of taking the
machine's memory.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError, first_line

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
MAX_HEADER = 100_000_000  # bytes: safetensors' own limit
AGAIN = "save the model again with save_pretrained"


def read_config(folder: Path) -> dict:
    """config.json as a dict; MpqError for one that is not JSON, asks for custom code or names no class."""
    path = folder / "config.json"
    if not path.is_file():
        raise MpqError(f"{folder} has no config.json: give a folder written by model.save_pretrained(folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise MpqError(f"cannot read {path} as JSON ({first_line(exc)[:100]}): {AGAIN}") from None
    if not isinstance(config, dict):
        raise MpqError(f"{path} holds a {type(config).__name__}, not a JSON object: {AGAIN}")
    refuse_custom_code(config, path)
    names = config.get("architectures")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MpqError(f'{path}: "architectures" must list class names, such as ["GPT2LMHeadModel"]: {AGAIN}')
    return config


def refuse_custom_code(config: dict, path: Path) -> None:
    if "auto_map" in config:
        raise MpqError(
            f"{path} asks for custom code (auto_map), which mpq never runs: use a model class transformers ships, "
            "or build the model yourself in Python and pass the module to mpq.search"
        )


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor in the folder's safetensors files, read from their headers; None for
    pytorch_model.bin folders (transformers reads those with weights_only=True); MpqError without weights."""
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise MpqError(
            f"{folder} holds a config but no weights (model.safetensors): "
            f"save them with model.save_pretrained({str(folder)!r})"
        )
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        files = _shards(folder / "model.safetensors.index.json")
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        shapes.update(_header(file))
    return shapes


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        raise MpqError(f"{index} is not a safetensors index (a weight_map of names to files): {AGAIN}") from None
    if not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        raise MpqError(f"{index} names shards outside its folder: {AGAIN}")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise MpqError(f"{index} names {missing[0]}, which is not in {index.parent}: copy every shard there")
    return [index.parent / n for n in names]


def _header(file: Path) -> dict[str, tuple[int, ...]]:
    """The shapes in a safetensors file's header: 8 bytes of length (little-endian), then JSON."""
    bad = MpqError(f"{file} is not a safetensors file (its header is not a table of tensors): {AGAIN}")
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > min(MAX_HEADER, file.stat().st_size - 8):
                raise bad
            header = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError, struct.error):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad
        shapes[name] = tuple(shape)
    return shapes


class _TooManyModules(Exception):
    pass


def build_on_meta(build, limit: int) -> nn.Module:
    """`build()` on the meta device (parameters take no memory), stopped once it registers `limit` modules."""
    count = 0

    def hook(module, name, submodule):
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyModules

    handle = nn.modules.module.register_module_module_registration_hook(hook)
    try:
        with torch.device("meta"):
            return build()
    finally:
        handle.remove()


def check_fits(build, folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """MpqError unless the model `build()` makes from config.json has the shapes of the weights beside it."""
    try:
        model = build_on_meta(build, limit=8 * len(shapes) + 64)
    except _TooManyModules:
        raise MpqError(
            f"{folder}/config.json describes a model far larger than its weights ({len(shapes)} tensors), "
            f"e.g. more layers: {AGAIN}"
        ) from None
    except Exception as exc:
        raise MpqError(
            f"cannot build the model {folder}/config.json describes ({type(exc).__name__}: {first_line(exc)[:160]}): "
            f"{AGAIN}"
        ) from None
    state = model.state_dict()
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    for name, shape in shapes.items():
        key = next((k for k in (name, prefix + name, name.removeprefix(prefix)) if k in state), None)
        if key is not None and tuple(state[key].shape) != shape:
            raise MpqError(
                f"{folder}/config.json gives {key} the shape {list(state[key].shape)}, but the weights hold "
                f"{list(shape)}: {AGAIN}"
            )
    wanted = sum(p.numel() for p in model.parameters())
    held = sum(math.prod(s) for s in shapes.values())
    if wanted > held:
        raise MpqError(f"{folder}/config.json describes {wanted:,} parameters, but its weights hold {held:,}: {AGAIN}")
