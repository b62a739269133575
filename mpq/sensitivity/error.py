"""Quantization error tables: ||Q_b(W) - W||^2 per layer and per output channel, for every width.

Q_b is the weight quantizer the plan is verified with: `clip_ratios` (mpq.quant.calibration.weight_clip_ratios)
gives its clip ratio per scale, per layer and width (None is min-max); the weight format `fmt` (mpq.quant.formats)
quantizes, and a channel's error sums its groups'.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.quant.widths import ALL_BITS


def channel_error_table(
    model: nn.Module,
    layer_names: list[str],
    bits: tuple[int, ...] = ALL_BITS,
    clip_ratios: "dict[str, dict[int, torch.Tensor]] | None" = None,
    fmt: WeightFormat = PER_CHANNEL_INT,
) -> dict[str, dict[int, np.ndarray]]:
    """{layer: {bits: per-channel squared error}}."""
    ratio = lambda name, b: None if clip_ratios is None else clip_ratios[name][b]  # noqa: E731
    return {
        name: {
            b: fmt.channel_error(model.get_submodule(name).weight, b, ratio(name, b)).double().cpu().numpy()
            for b in bits
        }
        for name in layer_names
    }
