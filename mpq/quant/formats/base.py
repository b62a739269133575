"""The weight-format protocol and its registry (see mpq.quant.formats)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from mpq.errors import MpqError
from mpq.quant.widths import ALL_BITS, groups_per_channel

FORMATS: dict[str, type[WeightFormat]] = {}
DEFAULT_FORMAT = "int"


class QuantizedTensor(Protocol):
    """What a format's `quantize` returns: at least the float weights it stands for."""

    bits: int

    def dequantize(self): ...


@dataclass(frozen=True)
class WeightFormat:
    """One storage format of a layer's weights; `group_size` None means one scale per output channel."""

    group_size: int | None = None

    name: ClassVar[str]
    widths: ClassVar[tuple[int, ...]] = ALL_BITS
    clipped: ClassVar[bool] = True  # its scales span a clip ratio (mpq.quant.observers) of each group's largest |w|
    # False: mpq.verify.apply packs quantize()'s codes and scales; True: the format's packed_tensors(q) are stored
    # and its unpacked_weight(tensors, shape, bits) reads them back (a format with its own block layout)
    own_tensors: ClassVar[bool] = False
    # True: quantize() is slow next to dequantize() (GGUF's K-quant scale searches in numpy), so the sensitivity
    # keeps each layer's quantized tensor per width, in the format's compact form, instead of quantizing again
    slow: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            FORMATS[cls.name] = cls

    def quantize(self, weight, bits: list[int], clip_ratio=None) -> QuantizedTensor:
        """The weight (dim 0: output channels) quantized with output channel c at width bits[c]; `clip_ratio` one
        ratio per scale (None: 1)."""
        raise NotImplementedError

    def weight_bytes(self, per_channel: int, channels: int, bits: int) -> int:
        """Bytes of the stored weights of `channels` output channels of `per_channel` weights each, at `bits`."""
        raise NotImplementedError

    def stored_scale(self, scale):
        """The scales as a packed file stores them (float32 here; a format with its own scale type overrides both)."""
        import torch

        return scale.to(torch.float32)

    def scale_from_stored(self, stored):
        """The float32 scales a packed file's stored scales stand for."""
        import torch

        return stored.to(torch.float32)

    def scales_per_channel(self, per_channel: int) -> int:
        """Weight scales of one output channel: one, or one per group of `group_size` weights."""
        return groups_per_channel(per_channel, self.group_size)

    def fake_quantize(self, weight, bits: int, clip_ratio=None):
        """Q_b(W) as a float tensor of the weight's dtype."""
        return self.quantize(weight, [bits] * weight.shape[0], clip_ratio).dequantize().to(weight.dtype)

    def channel_error(self, weight, bits: int, clip_ratio=None):
        """||Q_b(W_c) - W_c||^2 for every output channel c."""
        diff = self.fake_quantize(weight, bits, clip_ratio) - weight.detach()
        return diff.reshape(weight.shape[0], -1).pow(2).sum(dim=1)

    def fused_groups(self, layer_names: list[str]) -> list[list[str]]:
        """Layers the runtime fuses into one, which must take one width (mpq.solver.build ties them): none here."""
        return []

    def cache_fields(self) -> dict:
        """What a cache key holds of the format: nothing for per-channel `int` (keys as before formats existed)."""
        fields = {"group_size": self.group_size} if self.group_size else {}
        return fields | ({"weight_format": self.name} if self.name != DEFAULT_FORMAT else {})

    def describe(self) -> str:
        groups = f" per group of {self.group_size}" if self.group_size is not None else " per output channel"
        return f"{self.name} weights, scales{groups}"


def weight_format(name: str, group_size: int | None = None) -> WeightFormat:
    """The registered format called `name` with its group size; MpqError naming the known ones otherwise."""
    if name not in FORMATS:
        raise MpqError(f"unknown weight format {name!r}: choose one of {', '.join(sorted(FORMATS))}")
    return FORMATS[name](group_size)
