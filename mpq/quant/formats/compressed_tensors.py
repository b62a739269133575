"""compressed-tensors' integer weight schemes (vLLM, transformers: the `pack-quantized` format) as weight formats.

    compressed-tensors       int 2-8 bits, symmetric, bfloat16 scales
    compressed-tensors-fp16  the same with float16 scales

A layer's weight [out, in] takes one scheme: `num_bits` b, one scale per output channel ("channel") or per group
of g consecutive inputs ("group", g the quantizer's group size; compressed-tensors needs `in` to be a multiple
of g). The file holds, per layer, as compressed-tensors' PackedQuantizationCompressor writes it:

    weight_packed  int32 [out, ceil(in * b / 32)]: the codes q + 2^(b-1), 32 codes in b words, densely,
                   the first code in the lowest bits (pack_codes)
    weight_scale   bfloat16 (float16) [out, groups]
    weight_shape   int64 [2]

so a layer's bytes are 4·out·ceil(in·b/32) + 2·out·groups (+16 for weight_shape, the same at every width: the
container's). s = r·max|w| / (2^(b-1) - 1) rounded to the scale type, q = clamp(round(w / s), -2^(b-1),
2^(b-1) - 1); transformers' loader dequantizes q · s in the model's float type, as dequantize() does.
vLLM loads q/k/v_proj as one layer and gate/up_proj as one: fused_groups gives them one width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mpq.errors import MpqError
from mpq.quant.formats.base import WeightFormat

WORD_BITS = 32
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # vLLM's packed_modules_mapping


@dataclass(frozen=True)
class CompressedTensorsInt(WeightFormat):
    """compressed-tensors' symmetric int schemes, bfloat16 scales (module docstring)."""

    name = "compressed-tensors"
    widths = (2, 3, 4, 5, 6, 7, 8)
    own_tensors = True  # mpq.verify.apply stores `packed_tensors` and reads back `unpacked_weight`
    scale_dtype: ClassVar[str] = "bfloat16"

    def scheme(self, bits: int) -> str:
        """The scheme's name as plan.json's layers record it: "int4-g128-sym", "int8-channel-sym"."""
        return f"int{bits}-{'channel' if self.group_size is None else f'g{self.group_size}'}-sym"

    def fused_groups(self, layer_names: list[str]) -> list[list[str]]:
        """The layers vLLM loads as one (its packed_modules_mapping: q/k/v_proj as qkv_proj, gate/up_proj as
        gate_up_proj), present in `layer_names`: one scheme each, or vLLM refuses the checkpoint."""
        groups: dict[tuple[str, int], list[str]] = {}
        for name in layer_names:
            parent, _, leaf = name.rpartition(".")
            for i, fused in enumerate(FUSED):
                if leaf in fused:
                    groups.setdefault((parent, i), []).append(name)
        return [g for g in groups.values() if len(g) > 1]

    def check_rows(self, name: str, per_channel: int) -> None:
        """MpqError unless a layer of rows of `per_channel` weights can take this format's groups."""
        if self.group_size is not None and per_channel % self.group_size:
            raise MpqError(
                f"layer {name} has rows of {per_channel} weights, not a multiple of --group-size {self.group_size}, "
                "which compressed-tensors needs: choose a group size that divides it, or leave out --group-size "
                "(a scale per output channel)"
            )

    def quantize(self, weight, bits, clip_ratio=None):
        import torch

        from mpq.quant.affine import QuantizedWeight, quantize_weight_channels

        if len(set(bits)) != 1:
            raise MpqError(
                f"the {self.name} weight format stores one scheme per layer: search with --granularity layer"
            )
        rough = quantize_weight_channels(weight, bits, clip_ratio, self.group_size)
        scale = self.scale_from_stored(self.stored_scale(rough.scale))
        out, b = weight.shape[0], bits[0]
        rows = weight.detach().reshape(out, -1).float()
        spread = scale.reshape(out, -1).repeat_interleave(rows.shape[1] // scale.reshape(out, -1).shape[1], dim=1)
        safe = torch.where(spread > 0, spread, torch.ones_like(spread))
        codes = torch.clamp(torch.round(rows / safe), -(2 ** (b - 1)), 2 ** (b - 1) - 1).to(torch.int8)
        return QuantizedWeight(codes.reshape(weight.shape), scale, b, self.group_size)

    def weight_bytes(self, per_channel: int, channels: int, bits: int) -> int:
        words = math.ceil(per_channel * bits / WORD_BITS)
        return 4 * channels * words + 2 * channels * self.scales_per_channel(per_channel)

    def stored_scale(self, scale):
        import torch

        return scale.to(getattr(torch, self.scale_dtype))

    def packed_tensors(self, q) -> dict:
        """{"weight_packed": int32 codes (pack_codes), "weight_scale": [out, groups] in the scale type}."""
        out = q.codes.shape[0]
        codes = q.codes.reshape(out, -1).cpu()
        return {
            "weight_packed": pack_codes(codes, q.bits),
            "weight_scale": self.stored_scale(q.scale.detach().cpu()).reshape(out, -1).clone(),
        }

    def unpacked_weight(self, tensors: dict, shape: list[int], bits: int):
        """The float32 weight of `shape` that packed_tensors' tensors stand for."""
        from mpq.quant.affine import QuantizedWeight

        out, per_channel = shape[0], math.prod(shape[1:])
        codes = unpack_codes(tensors["weight_packed"], bits, per_channel)
        scale = self.scale_from_stored(tensors["weight_scale"])
        scale = scale.reshape(out) if self.group_size is None else scale
        return QuantizedWeight(codes.reshape(tuple(shape)), scale, bits, self.group_size).dequantize()

    def cache_fields(self) -> dict:
        return {"weight_format": self.name} | ({"group_size": self.group_size} if self.group_size else {})

    def describe(self) -> str:
        groups = f"per group of {self.group_size}" if self.group_size is not None else "per output channel"
        return f"{self.name} weights (pack-quantized symmetric int, {self.scale_dtype} scales {groups})"


@dataclass(frozen=True)
class CompressedTensorsIntFp16(CompressedTensorsInt):
    """The same schemes with float16 scales."""

    name = "compressed-tensors-fp16"
    scale_dtype: ClassVar[str] = "float16"


def pack_codes(codes, bits: int):
    """int8 codes [rows, n] as compressed-tensors' pack_to_int32 packs them: q + 2^(b-1), rows padded to a multiple of
    32 codes, each 32 codes densely in b int32 words (code i at bit i·b), then cut to ceil(n·b/32) words."""
    import torch

    rows, n = codes.shape
    padded = math.ceil(n / WORD_BITS) * WORD_BITS
    values = torch.zeros(rows, padded, dtype=torch.int64)
    values[:, :n] = codes.to(torch.int64) + (1 << (bits - 1))
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((values.unsqueeze(-1) >> shifts) & 1).reshape(rows, -1, WORD_BITS)  # bits, lowest first, 32 a word
    words = (stream << torch.arange(WORD_BITS, dtype=torch.int64)).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words[:, : math.ceil(n * bits / WORD_BITS)].contiguous()


def unpack_codes(words, bits: int, n: int):
    """The int8 codes [rows, n] that pack_codes packed into `words`."""
    import torch

    rows = words.shape[0]
    unsigned = words.to(torch.int64) & 0xFFFFFFFF
    stream = (unsigned.unsqueeze(-1) >> torch.arange(WORD_BITS, dtype=torch.int64)) & 1
    stream = stream.reshape(rows, -1)[:, : n * bits].reshape(rows, n, bits)
    values = (stream << torch.arange(bits, dtype=torch.int64)).sum(-1)
    return (values - (1 << (bits - 1))).to(torch.int8)
