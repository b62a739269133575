"""One mpq layer as a torchao config: `MpqLayerConfig`, applied by torchao's `quantize_` through the handler
registered here (torchao's extension point, `register_quantize_module_handler`).

The handler puts the layer's own packed numbers into the module:

  weight   torchao's `IntxUnpackedToInt8Tensor(qdata, scale, zero_point, int<b>, block_size)` built from
           mpq's codes (int8, every channel's codes within its own width), mpq's scale per output channel
           (clip ratios included) and zero point 0; block_size = (1, *weight.shape[1:]), i.e. one scale
           per output channel for Linear, Conv2d, depthwise Conv2d and Embedding alike. Its
           `dequantize()` is (q - 0) * s in float32: bit for bit the evaluator's weight.
           Conv1d keeps that dequantized weight as a plain tensor (torchao 0.18 implements conv2d,
           linear and embedding for the tensor, not conv1d).
           With group-wise scales (group size g, mpq.quant.affine): block_size = (1, g) for 2-D weights
           (Linear, Embedding) whose input size is a multiple of g (no larger than g: (1, n), one group);
           other layers keep mpq's dequantized weight as a plain tensor (torchao groups a conv's weights
           along input channels at each kernel position, mpq along the flattened (C_in, kh, kw) weights;
           and torchao's blocks must divide the weight, mpq's last group may be shorter).
  bias     the packed (bias-corrected) bias.
  input    (layers whose input mpq quantizes) a forward pre-hook with mpq's static affine per-tensor
           quantizer: scale s_x, zero point z, b bits, as calibrated. torchao has no static per-tensor
           input quantizer for these weights (its Int8DynamicActivation* configs choose ranges per token at
           run time; Int8StaticActivationInt8WeightConfig takes Linear only, 8-bit weights only), so
           this part is mpq's.

How the layer computes (`integer`):
  True   (per-channel scales) as the evaluator (mpq.verify.apply.IntegerLayer) and an integer engine:
         acc = layer(q_x - z, q) on the tensor's qdata (exact in float32, float64 where a partial sum could
         reach 2^24), then
         y = acc * (float32(s_x) * scale) + bias. Bit-identical to the evaluator's outputs.
  False  torchao's own eager kernels: the input fake-quantized, (q_x - z) * s_x, the weight dequantized
         by torchao, a float conv/linear + bias: the same numbers up to float rounding. Group-wise layers
         always compute so, as the evaluator computes them (mpq.verify.apply.fake_quant_model).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn
from torchao.core.config import AOBaseConfig
from torchao.quantization import IntxUnpackedToInt8Tensor
from torchao.quantization.transform_module import register_quantize_module_handler

from mpq.quant.affine import ActQuantParams, QuantizedWeight
from mpq.verify.apply import FakeQuantInput, IntegerLayer, combined_scale, exact_accumulator

TORCHAO_TENSOR_MODULES = (
    nn.Linear,
    nn.Conv2d,
    nn.Embedding,
)  # torchao 0.18 computes with IntxUnpackedToInt8Tensor for these


@dataclass
class MpqLayerConfig(AOBaseConfig):
    """The packed numbers of one layer: codes (int8, shaped like the weight), scale (float32 per output channel, or
    [out, groups] with `group_size`), the widest weight width, the (corrected) bias, and the input quantizer when the
    input is quantized."""

    codes: torch.Tensor
    scale: torch.Tensor
    weight_bits: int
    bias: torch.Tensor | None = None
    input: ActQuantParams | None = None
    integer: bool = True
    group_size: int | None = None


def torchao_block(shape: "tuple[int, ...]", group_size: int | None) -> tuple[int, ...] | None:
    """torchao's block_size for mpq's scales of a weight of `shape`: one scale per output channel, or per group of
    `group_size` along a 2-D weight's input (None: torchao's blocks cannot hold mpq's groups, see the module doc)."""
    if group_size is None:
        return (1, *shape[1:])
    if len(shape) != 2:
        return None
    if shape[1] <= group_size:
        return (1, shape[1])
    return (1, group_size) if shape[1] % group_size == 0 else None


def torchao_weight(
    codes: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None = None
) -> IntxUnpackedToInt8Tensor | None:
    """mpq's codes and scales as torchao's IntxUnpackedToInt8Tensor (symmetric: zero point 0); None where
    torchao_block is."""
    block = torchao_block(tuple(codes.shape), group_size)
    if block is None:
        return None
    blocks = tuple(size // b for size, b in zip(codes.shape, block))
    scale = scale.to(torch.float32).reshape(blocks)
    return IntxUnpackedToInt8Tensor(
        codes.to(torch.int8),
        scale,
        torch.zeros(blocks, dtype=torch.int8, device=codes.device),
        getattr(torch, f"int{bits}"),
        block,
        torch.float32,
        None,
    )


class IntegerExecution:
    """Hooks computing the layer as IntegerLayer does, from the torchao weight's qdata and scale: during the call
    the module holds the codes (in the accumulator type) and no bias; afterwards its torchao weight and bias again."""

    def __init__(self, weight: IntxUnpackedToInt8Tensor, params: ActQuantParams, bias: torch.Tensor | None) -> None:
        accumulator = exact_accumulator(params, weight.qdata)
        self.codes = nn.Parameter(weight.qdata.to(accumulator), requires_grad=False)
        self.layer = IntegerLayer(params, combined_scale(params, weight.scale.reshape(-1)), bias, accumulator)
        self.saved: dict[str, nn.Parameter | None] = {}

    def before(self, module: nn.Module, args: tuple) -> tuple:
        self.saved = {"weight": module._parameters["weight"], "bias": module._parameters.get("bias")}
        module._parameters["weight"], module._parameters["bias"] = self.codes, None
        return self.layer.centred_codes(module, args)

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        module._parameters.update(self.saved)
        return self.layer.rescale(module, args, output)


def _apply(module: nn.Module, config: MpqLayerConfig) -> nn.Module:
    if tuple(config.codes.shape) != tuple(module.weight.shape):
        raise ValueError(
            f"the exported weight has shape {tuple(config.codes.shape)}, the module's {tuple(module.weight.shape)}"
        )
    device = module.weight.device  # the file's tensors are read on the CPU; the module may be on a GPU
    codes, scale = config.codes.to(device), config.scale.to(device)
    weight = torchao_weight(codes, scale, config.weight_bits, config.group_size)
    if weight is not None and isinstance(module, TORCHAO_TENSOR_MODULES):
        module.weight = nn.Parameter(weight, requires_grad=False)
    else:
        dequantized = QuantizedWeight(codes, scale, config.weight_bits, config.group_size).dequantize()
        module.weight = nn.Parameter(dequantized, requires_grad=False)
    if config.bias is not None:
        module.bias = nn.Parameter(config.bias.to(device, torch.float32).clone(), requires_grad=False)
    if config.input is not None:
        if config.integer and config.group_size is None:
            hooks = IntegerExecution(weight, config.input, module.bias)
            module.register_forward_pre_hook(hooks.before)
            module.register_forward_hook(hooks.after)
        else:
            module.register_forward_pre_hook(FakeQuantInput(config.input))
    original = module.extra_repr
    module.extra_repr = types.MethodType(
        lambda self: (
            f"{original()}, mpq: int{config.weight_bits} weights"
            + (f", {config.input.bits}-bit input" if config.input else "")
        ),
        module,
    )
    return module


register_quantize_module_handler(MpqLayerConfig)(_apply)
