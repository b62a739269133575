"""Where models and data come from: `package.module:attr` or `path/file.py:attr`, and data files."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from mpq.data import Dataset, load_image_folder, load_npz
from mpq.errors import MpqError


def _import_attr(spec: str, what: str):
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise MpqError(f"{what} spec {spec!r} must read package.module:attr or path/to/file.py:attr")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise MpqError(f"{what} file {target} does not exist")
        module_name = f"_mpq_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise MpqError(f"importing {target} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise MpqError(f"cannot import {target!r} for the {what} ({exc}); check the spelling or install it") from None
    if not hasattr(module, attr):
        raise MpqError(f"{target} has no attribute {attr!r} for the {what}")
    return getattr(module, attr)


def load_model_spec(spec: str) -> nn.Module:
    """An nn.Module, or a callable returning one, named by `spec`; returned in eval mode."""
    obj = _import_attr(spec, "model")
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise MpqError(f"{spec} gives a {type(obj).__name__}, not a torch.nn.Module: point --model at a module or a function returning one")
    return obj.eval()


def load_data_spec(spec: str) -> Dataset:
    """A .npz file (x, optional y), a folder of images, or `module:callable` returning an mpq Dataset."""
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise MpqError(f"data file {spec} does not exist")
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    if ":" in spec:
        obj = _import_attr(spec, "data")
        data = obj() if callable(obj) else obj
        if isinstance(data, Dataset):
            return data
        if isinstance(data, torch.Tensor):
            return Dataset(x=data, description=spec)
        raise MpqError(f"{spec} gives a {type(data).__name__}: return an mpq.Dataset or a tensor of inputs")
    raise MpqError(f"cannot read data {spec!r}: give a .npz file with arrays x (and y), a folder of images, or module:function")
