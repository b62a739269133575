"""Where models and data come from, as named on the command line.

Models (`--model`):
    package.module:attr, path/file.py:attr   an nn.Module, or a callable returning one (called with
                                             the `--model-arg key=value` pairs as keyword arguments)
    file.pt2                                 a torch.export program (torch.export.save)
    file.onnx                                an ONNX model, converted by onnx2torch (mpq.inputs.onnx_model)
    hf:DIR                                   a transformers model saved with save_pretrained (offline;
                                             mpq.inputs.huggingface), --model-arg pooling=/output=
    + `--weights file.pth`                   a state dict loaded (weights_only=True) into the model
TorchScript files (.pt/.ts from torch.jit.save) are recognised and refused with what to give instead:
their layers are compiled code, so mpq cannot hook, fold or requantize them.

Data (`--data`):
    file.npz, file.pt                        arrays/tensors x (inputs) and optional y (integer labels),
                                             or named inputs (input_ids, attention_mask, ...) and y
    file.txt, file.jsonl                     text for an hf: model, tokenized by its tokenizer (--seq-len)
    folder                                   images, flat (unlabelled) or in class subfolders; --transform
    package.module:attr, path/file.py:attr   an mpq.Dataset, a tensor of inputs, or a DataLoader /
                                             iterable of x or (x, y) batches (called first if callable)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError, first_line
from mpq.inputs.data import Dataset, from_batches, load_image_folder, load_npz, load_pt
from mpq.inputs.huggingface import PREFIX, TEXT_SUFFIXES, load_pretrained, load_text

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit")


def import_attr(spec: str, what: str):
    """The object named by `package.module:attr` or `path/file.py:attr`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise MpqError(f"{what} spec {spec!r} must read package.module:attr or path/to/file.py:attr")
    module = _import_file(target, what) if target.endswith(".py") else _import_module(target, what)
    if not hasattr(module, attr):
        raise MpqError(f"{target} has no attribute {attr!r} for the {what}; check the name after the colon")
    return getattr(module, attr)


def _import_file(target: str, what: str):
    path = Path(target)
    if not path.is_file():
        raise MpqError(f"{what} file {target} does not exist; check the path")
    module_name = f"_mpq_user_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SystemExit as exc:
        del sys.modules[module_name]
        raise MpqError(
            (
                f"importing {target} called sys.exit({exc.code}): a {what} file must define the {what}, not run a "
                'program; put its script part under if __name__ == "__main__":'
            )
        ) from None
    except Exception as exc:
        del sys.modules[module_name]
        raise MpqError(f"importing {target} failed ({type(exc).__name__}: {first_line(exc)}); fix that file") from None
    return module


def call_user(function, spec: str, what: str, arguments: dict | None = None):
    """`function(**arguments)`, a function of the user's named by `spec`; what it raises becomes one MpqError line.
    With `arguments` (the --model-arg pairs), a TypeError is taken as the call not fitting them."""
    try:
        return function(**(arguments or {}))
    except SystemExit as exc:
        raise MpqError(
            f"{spec} called sys.exit({exc.code}) while giving the {what}: return the {what} instead"
        ) from None
    except MpqError:
        raise
    except TypeError as exc:
        if arguments is None:
            raise MpqError(f"{spec} raised TypeError while giving the {what}: {first_line(exc)}") from None
        raise MpqError(
            f"calling {spec} with {arguments or 'no arguments'} failed ({first_line(exc)}); pass its arguments "
            "with --model-arg key=value"
        ) from None
    except Exception as exc:
        raise MpqError(f"{spec} raised {type(exc).__name__} while giving the {what}: {first_line(exc)}") from None


def _import_module(target: str, what: str):
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise MpqError(f"cannot import {target!r} for the {what} ({exc}); check the spelling or install it") from None
    except SystemExit as exc:
        raise MpqError(
            f"importing {target} called sys.exit({exc.code}): a {what} module must define the {what}, not run a program"
        ) from None
    except Exception as exc:
        raise MpqError(
            f"importing {target} failed ({type(exc).__name__}: {first_line(exc)}); fix that module"
        ) from None


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true'/'false' -> bool, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(pairs: list[str] | None) -> dict:
    """['depth=2', 'name=tiny'] -> {'depth': 2, 'name': 'tiny'}."""
    args = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise MpqError(f"--model-arg {pair!r} must read key=value, e.g. --model-arg depth=2")
        args[key.strip()] = parse_value(value)
    return args


def _refuse_torchscript(path: Path) -> None:
    try:
        torch.jit.load(str(path), map_location="cpu")
    except Exception:
        raise MpqError(
            f"{path} is not a TorchScript file: for a state dict give --model package.module:factory --weights {path}; "
            "for a torch.export program save it as .pt2"
        ) from None
    raise MpqError(
        f"{path} is a TorchScript module, whose compiled layers mpq cannot hook, fold or requantize: give the Python "
        f"model as --model file.py:factory --weights state_dict.pth, or a torch.export program (.pt2)"
    )


def _from_file(path: Path) -> nn.Module:
    if not path.is_file():
        raise MpqError(f"model file {path} does not exist; check the path")
    if path.suffix == ".pt2":
        from mpq.inputs.exported import load_exported

        return load_exported(path)
    if path.suffix == ".onnx":
        from mpq.inputs.onnx_model import load_onnx

        return load_onnx(path)
    _refuse_torchscript(path)
    raise AssertionError("unreachable")


def _build(spec: str, model_args: dict) -> nn.Module:
    obj = import_attr(spec, "model")
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = call_user(obj, spec, "model", model_args)
    elif model_args:
        raise MpqError(
            f"{spec} is not callable, so --model-arg cannot be passed to it; drop --model-arg or name a function"
        )
    if not isinstance(obj, nn.Module):
        raise MpqError(
            f"{spec} gives a {type(obj).__name__}, not a torch.nn.Module: point --model at a module or a "
            "function returning one"
        )
    return obj


def load_weights(model: nn.Module, path: "str | Path") -> nn.Module:
    """Load a state dict (weights_only=True; a {"state_dict": ...} wrapper is unwrapped) strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MpqError(f"weights file {path} does not exist; check the path") from None
    except Exception as exc:
        raise MpqError(
            f"cannot read {path} as a state dict with weights_only=True ({type(exc).__name__}); save "
            "model.state_dict() with torch.save"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MpqError(
            f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict() with torch.save"
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise MpqError(f"{path} does not fit the model ({detail}); check --model-arg or the factory") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys[:3], result.unexpected_keys[:3]
        raise MpqError(
            f"{path} does not fit the model (missing {missing}, unexpected {unexpected}); check --model-arg or "
            "the factory"
        )
    return model


def load_model_spec(spec: str, model_args: dict | None = None, weights: "str | Path | None" = None) -> nn.Module:
    """The model named by `spec` (see the module docstring), weights loaded, in eval mode."""
    if spec.startswith(PREFIX):
        if weights is not None:
            raise MpqError(
                "--weights applies to a Python factory; an hf: folder holds its own weights (save_pretrained)"
            )
        return load_pretrained(spec[len(PREFIX) :], model_args)
    path = Path(spec)
    if path.suffix in (".pt2", ".onnx") or (":" not in spec and path.suffix in TORCHSCRIPT_SUFFIXES):
        if model_args:
            raise MpqError(f"--model-arg applies to a Python factory, not to the file {spec}")
        model = _from_file(path)
    else:
        model = _build(spec, model_args or {})
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_data_spec(
    spec: str, transform: str = "imagenet", model: nn.Module | None = None, seq_len: int | None = None
) -> Dataset:
    """A .npz or .pt file (x, optional y), a folder of images, text for an hf: `model`, or `module:attr`
    (see the module docstring)."""
    path = Path(spec)
    if path.suffix in TEXT_SUFFIXES:
        return load_text(path, model, seq_len)
    if seq_len is not None:
        raise MpqError("--seq-len applies to text data (.txt, .jsonl); drop it, or give text")
    if path.suffix in (".npz", ".pt", ".pth"):
        if not path.is_file():
            raise MpqError(f"data file {spec} does not exist; check the path")
        return load_npz(path) if path.suffix == ".npz" else load_pt(path)
    if path.is_dir():
        return load_image_folder(path, transform)
    if ":" in spec:
        obj = import_attr(spec, "data")
        data = (
            call_user(obj, spec, "data")
            if callable(obj) and not isinstance(obj, (Dataset, torch.Tensor)) and not hasattr(obj, "__iter__")
            else obj
        )
        if isinstance(data, Dataset):
            return data
        if isinstance(data, torch.Tensor):
            return Dataset(x=data, description=spec)
        if hasattr(data, "__iter__"):
            return call_user(lambda: from_batches(data, spec), spec, "data")
        raise MpqError(
            f"{spec} gives a {type(data).__name__}: return an mpq.Dataset, a tensor of inputs, or an iterable "
            "of (x, y) batches"
        )
    raise MpqError(
        f"cannot read data {spec!r}: give a .npz or .pt file with x (and y), a folder of images, text (.txt, "
        ".jsonl) for an hf: model, or module:function"
    )
