"""GGUF tensor types in mpq: llama.cpp's quantizers bit for bit (numpy only), their sizes and dequantizers."""

from mpq.quant.gguf.types import (
    GGUF_TYPES,
    GGMLType,
    GGUFTypeInfo,
    dequantize,
    llama_cpp_type,
    quantize,
    row_nbytes,
    tensor_nbytes,
    type_info,
)

__all__ = [
    "GGUF_TYPES",
    "GGMLType",
    "GGUFTypeInfo",
    "dequantize",
    "llama_cpp_type",
    "quantize",
    "row_nbytes",
    "tensor_nbytes",
    "type_info",
]
