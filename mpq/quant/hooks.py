"""Forward pre-hooks on a model's quantizable layers, and one FP32 pass over the data that hands each named layer's
input to a callback (calibration, the FP32 reference, AdaRound's input moments)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from mpq.inputs.data import Dataset
from mpq.inputs.graph import module_calls_visible, quantizable_modules


@contextmanager
def input_hooks(model: nn.Module, per_layer: dict[str, object]):
    """Forward pre-hooks on the named layers; each hook object is called with the layer's input."""
    modules = quantizable_modules(model, embeddings=True)
    handles = []
    for name, fn in per_layer.items():
        handles.append(modules[name].register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0]), *args[1:])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def pass_inputs(model: nn.Module, per_layer: dict[str, object], data: Dataset, batch_size: int) -> None:
    """One FP32 pass over the data, each named layer's input given to its callback (which returns nothing)."""

    def passing(fn):
        def hook(x):
            fn(x)
            return x

        return hook

    with torch.no_grad(), module_calls_visible(), input_hooks(model, {n: passing(fn) for n, fn in per_layer.items()}):
        for x, _ in data.batches(batch_size):
            model(x)
