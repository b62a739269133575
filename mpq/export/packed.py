"""Packed weights: the plan applied to a model, as the tensors a deployer stores.

Per quantized layer: `<name>.weight_codes` (uint8, the codes in offset binary, b bits each,
least significant bit first, ceil(n*b/8) bytes), `<name>.weight_scale` (float32 per output channel),
`<name>.bias` (float32), and for a quantized input `<name>.input_scale` (float32) and
`<name>.input_zero_point` (int32). Every other floating-point parameter and buffer is kept as is.
The bytes of these tensors are the measured size of the plan.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mpq.graph import quantizable_modules
from mpq.plan import Plan
from mpq.quant import ActQuantParams, QuantizedWeight, quantize_weight


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-2^(b-1), 2^(b-1)-1] -> uint8 bytes, b bits per code, LSB first."""
    unsigned = (codes.reshape(-1).to(torch.int64) + 2 ** (bits - 1)).numpy().astype(np.uint8)
    bit_planes = (unsigned[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(bit_planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_bits: the first `count` codes as int8."""
    bit_planes = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    unsigned = bit_planes.astype(np.int16) @ (1 << np.arange(bits, dtype=np.int16))
    return torch.from_numpy((unsigned - 2 ** (bits - 1)).astype(np.int8))


@dataclass
class PackedModel:
    """Exported tensors and, per quantized layer, its widths and weight shape."""

    tensors: dict[str, torch.Tensor]
    layers: dict[str, dict]

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def pack_model(
    model: nn.Module,
    plan: Plan,
    act_params: dict[str, ActQuantParams] | None = None,
    clip_ratios: dict[str, torch.Tensor] | None = None,
    biases: dict[str, torch.Tensor] | None = None,
) -> PackedModel:
    """Quantize `model`'s layers as `plan` says; `act_params` holds calibrated input quantizers,
    `clip_ratios` each layer's per-channel weight clip ratio at its width (absent: min-max), and
    `biases` the biases to export in place of the model's (bias correction)."""
    clip_ratios, biases = clip_ratios or {}, biases or {}
    modules = quantizable_modules(model, embeddings=True)
    missing = sorted(set(plan.layers) - set(modules))
    if missing:
        raise ValueError(f"plan names layers the model lacks: {missing[:3]}")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    for name, lp in plan.layers.items():
        module = modules[name]
        q = quantize_weight(module.weight, lp.weight_bits, clip_ratios.get(name))
        tensors[f"{name}.weight_codes"] = pack_bits(q.codes, lp.weight_bits)
        tensors[f"{name}.weight_scale"] = q.scale.clone()
        if getattr(module, "bias", None) is not None:
            tensors[f"{name}.bias"] = biases[name] if name in biases else module.bias.detach().to(torch.float32).clone()
        if lp.act_bits:
            params = act_params[name]
            tensors[f"{name}.input_scale"] = torch.tensor([params.scale], dtype=torch.float32)
            tensors[f"{name}.input_zero_point"] = torch.tensor([params.zero_point], dtype=torch.int32)
        layers[name] = {"weight_bits": lp.weight_bits, "act_bits": lp.act_bits, "weight_shape": list(module.weight.shape)}
    quantized = {f"{n}.{p}" for n in plan.layers for p in ("weight", "bias")}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name not in quantized and t.is_floating_point():
            tensors[name] = t.detach().clone()
    return PackedModel(tensors=tensors, layers=layers)


def unpack_model(model: nn.Module, packed: PackedModel) -> tuple[nn.Module, dict[str, ActQuantParams]]:
    """A copy of `model` whose quantized layers hold the dequantized packed weights, and the input quantizers."""
    rebuilt = copy.deepcopy(model)
    modules = quantizable_modules(rebuilt, embeddings=True)
    act_params = {}
    with torch.no_grad():
        for name, meta in packed.layers.items():
            shape, bits = meta["weight_shape"], meta["weight_bits"]
            codes = unpack_bits(packed.tensors[f"{name}.weight_codes"], bits, int(np.prod(shape))).reshape(shape)
            weight = QuantizedWeight(codes=codes, scale=packed.tensors[f"{name}.weight_scale"], bits=bits).dequantize()
            modules[name].weight.copy_(weight)
            if f"{name}.bias" in packed.tensors:
                modules[name].bias.copy_(packed.tensors[f"{name}.bias"])
            if meta["act_bits"]:
                act_params[name] = ActQuantParams(
                    scale=float(packed.tensors[f"{name}.input_scale"][0]),
                    zero_point=int(packed.tensors[f"{name}.input_zero_point"][0]),
                    bits=meta["act_bits"],
                )
        state = rebuilt.state_dict()
        for name, tensor in packed.tensors.items():
            if name in state:  # the float remainder
                state[name].copy_(tensor)
    return rebuilt, act_params


@dataclass(frozen=True)
class InputFakeQuant:
    """Forward pre-hook: the layer's first input becomes Q_b(x) (affine per tensor, see mpq.quant)."""

    params: ActQuantParams

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.params.fake_quantize(args[0]), *args[1:])


def fake_quant_model(model: nn.Module, packed: PackedModel) -> nn.Module:
    """The model the evaluator measures: unpack_model's copy with an InputFakeQuant hook on each quantized input."""
    rebuilt, act_params = unpack_model(model, packed)
    modules = quantizable_modules(rebuilt, embeddings=True)
    for name, params in act_params.items():
        modules[name].register_forward_pre_hook(InputFakeQuant(params))
    return rebuilt
