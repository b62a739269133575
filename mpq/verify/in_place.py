"""The evaluator without a copy of the model: a plan's packed tensors applied in place, one layer at a call.

fake_quant_model (mpq.verify.apply) builds a second model that holds the dequantized weights: twice the memory of a
model as large as the machine's. InPlace computes the same numbers on the model itself: the plan's packed codes
(its bytes: 4.5 bits a weight at 4.5 bpw) stay packed, and while `active()` each call of a quantized layer unpacks
and dequantizes its weight, swaps it in, and swaps the model's own back after the call. A plan whose int8 codes take
at most KEEP_CODES_BYTES keeps them unpacked instead (unpacking at every call costs a small model's batches time).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from mpq.inputs.graph import quantizable_modules
from mpq.quant.affine import ActQuantParams, QuantizedWeight
from mpq.verify.apply import (
    FakeQuantInput,
    IntegerLayer,
    PackedModel,
    combined_scale,
    dequantized_weight,
    exact_accumulator,
    input_quantizers,
    unpack_codes,
)

KEEP_CODES_BYTES = 1 << 28  # a plan's int8 codes kept unpacked up to this size; beyond, each layer's unpacked per call


@dataclass
class _Swap:
    """One layer of an InPlace model: at each call its parameters are swapped for the packed values (the dequantized
    `weight()` made then; an IntegerLayer's `codes()` and no bias) and its input and output treated as
    fake_quant_model's copy treats them; swapped back after the call (and by InPlace on leaving, should a call
    fail)."""

    weight: Callable[[], torch.Tensor]
    bias: torch.Tensor | None
    integer: IntegerLayer | None = None
    codes: Callable[[], torch.Tensor] | None = None
    fake_input: FakeQuantInput | None = None
    saved: dict = field(default_factory=dict)

    def enter(self, module: nn.Module, args: tuple) -> tuple | None:
        self.saved = {k: module._parameters[k] for k in ("weight", "bias") if k in module._parameters}
        own_bias = module._parameters.get("bias")
        if self.integer is not None:
            module._parameters["weight"], module._parameters["bias"] = self.codes(), None
            return self.integer.centred_codes(module, args)
        module._parameters["weight"] = self.weight().to(self.saved["weight"].dtype)
        if own_bias is not None and self.bias is not None:
            module._parameters["bias"] = self.bias.to(own_bias.dtype)
        return self.fake_input(module, args) if self.fake_input is not None else None

    def leave(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        self.restore(module)
        return self.integer.rescale(module, args, output) if self.integer is not None else None

    def restore(self, module: nn.Module) -> None:
        module._parameters.update(self.saved)
        self.saved = {}


class InPlace:
    """`model` computing as fake_quant_model's copy of it computes, without a copy: the evaluator of a model as large as
    memory. The packed codes stay packed (a plan's int8 codes up to KEEP_CODES_BYTES are unpacked once); while
    `active()`, each call of a quantized layer swaps in the weight they give (unpacked and dequantized then, one layer
    at a time) and swaps the model's own back after it."""

    def __init__(self, model: nn.Module, packed: PackedModel) -> None:
        self.model, self.modules = model, quantizable_modules(model, embeddings=True)
        codes = [m["weight_shape"] for n, m in packed.layers.items() if not packed.weight_format(n).own_tensors]
        self.keep_codes = sum(math.prod(shape) for shape in codes) <= KEEP_CODES_BYTES
        act_params = input_quantizers(packed)
        self.swaps = [(self.modules[n], self._swap(packed, n, act_params.get(n))) for n in packed.layers]
        self._by_name = {n: swap for n, (_, swap) in zip(packed.layers, self.swaps)}
        self.swaps += self._tied()

    def weight(self, name: str) -> torch.Tensor:
        """Layer `name`'s dequantized weight, as its calls see it."""
        return self._by_name[name].weight()

    def _tied(self) -> list[tuple[nn.Module, "_Swap"]]:
        """A swap for every other module holding a quantized layer's weight (a tied LM head): the copy's shared
        parameter holds the dequantized weight for both."""
        swapped = {id(module.weight): swap for module, swap in self.swaps}
        done = {id(module) for module, _ in self.swaps}
        return [
            (module, _Swap(swapped[id(p)].weight, None))
            for module in self.model.modules()
            if id(module) not in done
            for key, p in module._parameters.items()
            if key == "weight" and p is not None and id(p) in swapped
        ]

    def _swap(self, packed: PackedModel, name: str, params: ActQuantParams | None) -> _Swap:
        meta, device = packed.layers[name], self.modules[name].weight.device
        bias = packed.tensors.get(f"{name}.bias")
        bias = None if bias is None else bias.to(device)
        if packed.weight_format(name).own_tensors:
            return _Swap(lambda: dequantized_weight(packed, name).to(device), bias, fake_input=_fake_input(params))
        codes = functools.partial(_unpacked_codes, packed, name, device)
        if self.keep_codes:  # a small plan: unpacked once, not at every call
            kept = codes()
            codes = lambda: kept  # noqa: E731
        scale, group = packed.weight_scale(name).to(device), meta.get("group_size")
        weight = lambda: QuantizedWeight(codes(), scale, meta["weight_bits"], group).dequantize()  # noqa: E731
        if params is not None and meta.get("group_size") is None:
            acc = exact_accumulator(params, codes())
            layer = IntegerLayer(params, combined_scale(params, scale).to(device), bias, acc)
            return _Swap(weight, None, integer=layer, codes=lambda: codes().to(acc))
        return _Swap(weight, bias, fake_input=_fake_input(params))

    @contextmanager
    def active(self) -> Iterator[nn.Module]:
        handles = []
        try:
            for module, swap in self.swaps:
                handles += [module.register_forward_pre_hook(swap.enter), module.register_forward_hook(swap.leave)]
            yield self.model
        finally:
            for h in handles:
                h.remove()
            for module, swap in self.swaps:
                swap.restore(module)


def _unpacked_codes(packed: PackedModel, name: str, device: torch.device) -> torch.Tensor:
    """Layer `name`'s int8 codes, unpacked from the plan's bytes (at each call: only the packed bytes are kept)."""
    return unpack_codes(packed.tensors[f"{name}.weight_codes"], packed.layers[name]).to(device)


def _fake_input(params: ActQuantParams | None) -> FakeQuantInput | None:
    return None if params is None else FakeQuantInput(params)


@contextmanager
def packed_in_place(model: nn.Module, packed: PackedModel) -> Iterator[nn.Module]:
    """`with packed_in_place(model, packed) as quantized:` the model as the evaluator measures it (InPlace)."""
    with InPlace(model, packed).active() as quantized:
        yield quantized
