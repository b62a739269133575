"""Weight formats: how a layer's weights are stored, one class per format.

A format owns the three facts that depend on the storage layout, and every stage asks it for them:

    widths            the widths (bits) it can store                      (the search's candidates)
    quantize(W, b, r) the quantized tensor: codes and scales, dequantize() (Δ for the sensitivity,
                      the evaluator's weights, the exports' codes)
    weight_bytes      the exact bytes of `channels` output channels at one width (the cost model)

A format is a frozen dataclass holding its own parameters (a group size); `Quantizer.weight_format` names
it and `Quantizer.format` builds it. Subclassing `WeightFormat` with a new `name` registers the format, so
adding one is one file (tests/test_weight_formats.py adds a power-of-two-scale format that way).
"""

from __future__ import annotations

from mpq.quant.formats.base import DEFAULT_FORMAT, FORMATS, QuantizedTensor, WeightFormat, weight_format
from mpq.quant.formats.gguf import GGUFLegacyTypes, GGUFTypes
from mpq.quant.formats.compressed_tensors import CompressedTensorsInt, CompressedTensorsIntFp16
from mpq.quant.formats.symmetric_int import SymmetricInt

PER_CHANNEL_INT = SymmetricInt()  # the format of a plan without a group size

__all__ = ["DEFAULT_FORMAT", "FORMATS", "PER_CHANNEL_INT", "QuantizedTensor", "SymmetricInt", "WeightFormat"]
__all__ += ["CompressedTensorsInt", "CompressedTensorsIntFp16", "GGUFLegacyTypes", "GGUFTypes", "weight_format"]
