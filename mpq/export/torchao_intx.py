"""A weight-only plan as torchao's own `IntxWeightOnlyConfig`s: one per module in a `FqnToConfig`, applied by
`torchao.quantization.quantize_` (mpq.export.torchao_config.load_intx_config builds it from the export file).

Each layer whose weights torchao's blocks can hold (torchao_layers.torchao_block: Linear and Embedding, per
output channel, or per group of g along the input when g divides it or the input is at most g, PerAxis(0))
gets
    IntxWeightOnlyConfig(weight_dtype=torch.int<b>, granularity=PerGroup(g) | PerAxis(0), mapping_type=SYMMETRIC)
Two ways to apply it:
  carried (default)  `CarriedIntxWeightOnlyConfig`, an IntxWeightOnlyConfig that also carries mpq's codes,
                     scales and corrected bias: torchao's own IntxWeightOnly transform quantizes mpq's
                     dequantized weight s * q with mpq's scale as its custom scale, which gives back exactly
                     mpq's codes (|s * q / s - q| is a few float32 ulps of q, far from a rounding boundary), so
                     the module holds torchao's IntxUnpackedToInt8Tensor of mpq's codes and scales: the
                     evaluator's weights bit for bit.
  plain              the IntxWeightOnlyConfig alone: torchao chooses its own scales from the FP32 weights
                     (max|W| / ((2^b - 1) / 2) per group, no MSE clipping, no bias correction): the plan's widths
                     and groups, not its numbers.
A layer torchao's blocks cannot hold (a conv's groups, a shorter last group) keeps mpq's own layer config
(torchao_layers.MpqLayerConfig: mpq's dequantized weight) in both ways, and the module map says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchao.quantization import IntxWeightOnlyConfig, PerAxis, PerGroup
from torchao.quantization.quant_api import _intx_weight_only_transform
from torchao.quantization.transform_module import register_quantize_module_handler

from mpq.export.torchao_layers import torchao_block
from mpq.quant.affine import QuantizedWeight


def intx_config(shape: tuple[int, ...], weight_bits: int, group_size: int | None) -> IntxWeightOnlyConfig | None:
    """torchao's IntxWeightOnlyConfig for a weight of `shape` at these widths and groups (None: its blocks
    cannot hold them)."""
    block = torchao_block(tuple(shape), group_size)
    if block is None or len(shape) != 2:
        return None
    granularity = PerAxis(0) if block[1] == shape[1] else PerGroup(block[1])
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{weight_bits}"), granularity=granularity)


def describe(config: IntxWeightOnlyConfig) -> str:
    """IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size=128), ...) as one readable line."""
    return (
        f"IntxWeightOnlyConfig(weight_dtype={config.weight_dtype}, granularity={config.granularity}, "
        f"mapping_type={config.mapping_type.name})"
    )


@dataclass
class CarriedIntxWeightOnlyConfig(IntxWeightOnlyConfig):
    """An IntxWeightOnlyConfig carrying mpq's codes (int8, shaped like the weight), scales ([out] or [out, groups])
    and bias; torchao's IntxWeightOnly transform applies it with those scales (see the module doc)."""

    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    group_size: int | None = None


def carried(
    config: IntxWeightOnlyConfig,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int | None,
) -> CarriedIntxWeightOnlyConfig:
    # intx_choose_qparams_algorithm None: torchao takes the given scale instead of choosing one
    return CarriedIntxWeightOnlyConfig(
        weight_dtype=config.weight_dtype,
        granularity=config.granularity,
        mapping_type=config.mapping_type,
        intx_choose_qparams_algorithm=None,
        codes=codes,
        scale=scale,
        bias=bias,
        group_size=group_size,
    )


def _apply_carried(module: nn.Module, config: CarriedIntxWeightOnlyConfig, parameter_name: str = "weight") -> nn.Module:
    bits = int(str(config.weight_dtype).removeprefix("torch.int"))
    if tuple(config.codes.shape) != tuple(module.weight.shape):
        raise ValueError(
            f"the exported weight has shape {tuple(config.codes.shape)}, the module's {tuple(module.weight.shape)}"
        )
    device = module.weight.device  # the file's tensors are read on the CPU; the module may be on a GPU
    module.weight = nn.Parameter(
        QuantizedWeight(config.codes.to(device), config.scale.to(device), bits, config.group_size).dequantize(),
        requires_grad=False,
    )
    scale = config.scale.to(device, torch.float32).reshape(config.codes.shape[0], -1)
    scale = torch.where(
        scale > 0, scale, torch.ones_like(scale)
    )  # an all-zero group: codes 0 either way, and no 0 * (1 / 0)
    module = _intx_weight_only_transform(
        module, config, custom_scale=scale, custom_zero_point=torch.zeros_like(scale, dtype=torch.int8)
    )
    if config.bias is not None:
        module.bias = nn.Parameter(config.bias.to(device, torch.float32).clone(), requires_grad=False)
    return module


register_quantize_module_handler(CarriedIntxWeightOnlyConfig)(_apply_carried)
