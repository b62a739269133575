"""Quantization error tables: ||Q_b(W) - W||^2 per layer and per output channel, for every width."""

from __future__ import annotations

import numpy as np
from torch import nn

from mpq.quant import MAX_BITS, MIN_BITS, channel_quant_error

ALL_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))


def channel_error_table(model: nn.Module, layer_names: list[str], bits: tuple[int, ...] = ALL_BITS) -> dict[str, dict[int, np.ndarray]]:
    """{layer: {bits: per-channel squared error}}."""
    return {
        name: {b: channel_quant_error(model.get_submodule(name).weight, b).double().numpy() for b in bits}
        for name in layer_names
    }
