"""mpq's own format: symmetric integer codes with float32 scales per output channel or per group.

s_{c,k} = r_{c,k} * max|W_{c,k}| / (2^(b-1) - 1),  q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1)
bytes   = ceil(n * b / 8) packed codes + 4 * scales           (mpq.quant.affine)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpq.quant.formats.base import WeightFormat

SCALE_BYTES = 4  # float32


@dataclass(frozen=True)
class SymmetricInt(WeightFormat):
    """Symmetric integer codes, 2-8 bits, float32 scales (mpq.quant.affine)."""

    name = "int"

    def quantize(self, weight, bits, clip_ratio=None):
        from mpq.quant.affine import quantize_weight_channels  # torch: not when the `mpq` parser names a format

        return quantize_weight_channels(weight, bits, clip_ratio, self.group_size)

    def fake_quantize(self, weight, bits: int, clip_ratio=None):
        from mpq.quant.affine import fake_quantize_weight

        return fake_quantize_weight(weight, bits, clip_ratio, self.group_size)

    def weight_bytes(self, per_channel: int, channels: int, bits: int) -> int:
        codes = math.ceil(per_channel * channels * bits / 8)
        return codes + SCALE_BYTES * channels * self.scales_per_channel(per_channel)
