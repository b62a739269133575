"""GGUF tensor types (mpq.quant.gguf): llama.cpp's bytes bit for bit, and gguf-py's dequantization.

The 32-weight block types are compared with gguf-py's numpy quantizers (gguf.quants.quantize) on random and
LLM-like matrices; every type, K-quants included, with fixtures made by llama.cpp's own C quantizer
(tests/data/gguf/make_fixtures.py documents the commit and the compile; the tests need no compiler).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from mpq.quant.gguf import (
    GGUF_TYPES,
    GGMLType,
    dequantize,
    llama_cpp_type,
    quantize,
    row_nbytes,
    tensor_nbytes,
    type_info,
)

FIXTURES = Path(__file__).parent / "data" / "gguf"
FIXTURE_NAMES = ["gauss", "heavy", "special", "llm_bf16"]
LEGACY = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
K_QUANTS = ["Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
ALL_TYPES = [*LEGACY, *K_QUANTS, "F16", "BF16", "F32"]


def fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as f:
        arrays = dict(f)
    if "x_bf16" in arrays:
        arrays["x"] = (arrays.pop("x_bf16").astype(np.uint32) << 16).view(np.float32)
    return arrays


def llm_like(rows: int, n: int, seed: int) -> np.ndarray:
    """Per-row scales over two decades, heavy tails, a few outlier columns, zero and constant rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, (rows, n)) * rng.uniform(0.002, 0.2, (rows, 1))
    x *= np.where(rng.random(n) < 0.01, 20.0, 1.0)
    x[1] = 0.0
    x[2] = 0.125
    x[3] = -7.5
    x[4, ::37] = 0.0
    return x.astype(np.float32)


def linear_weight(rows: int, n: int) -> np.ndarray:
    """A torch nn.Linear's initial weight (Kaiming uniform), as real layers start."""
    torch.manual_seed(0)
    return torch.nn.Linear(n, rows).weight.detach().numpy().copy()


def gguf_py_bytes(x: np.ndarray, name: str) -> np.ndarray:
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType[name])
    return np.ascontiguousarray(q).view(np.uint8).reshape(x.shape[0], -1)


@pytest.mark.parametrize("name", LEGACY + ["F16", "BF16"])
@pytest.mark.parametrize("maker", ["normal", "llm_like", "linear"])
def test_32_block_types_equal_gguf_py(name, maker):
    x = {
        "normal": lambda: (np.random.default_rng(1).standard_normal((64, 512)) * 0.02).astype(np.float32),
        "llm_like": lambda: llm_like(48, 1024, seed=2),
        "linear": lambda: linear_weight(32, 768),
    }[maker]()
    np.testing.assert_array_equal(quantize(x, name), gguf_py_bytes(x, name))


@pytest.mark.parametrize("fixture_name", FIXTURE_NAMES)
@pytest.mark.parametrize("name", LEGACY + K_QUANTS + ["F16", "BF16"])
def test_every_type_equals_llama_cpp(fixture_name, name):
    f = fixture(fixture_name)
    got = quantize(f["x"], name)
    assert got.shape == f[name].shape
    blocks_differing = (got != f[name]).reshape(-1, type_info(name).type_size).any(axis=1).sum()
    assert blocks_differing == 0, f"{blocks_differing} of {got.size // type_info(name).type_size} blocks differ"


@pytest.mark.parametrize("fixture_name", FIXTURE_NAMES)
@pytest.mark.parametrize("name", ALL_TYPES)
def test_dequantize_equals_gguf_py(fixture_name, name):
    x = fixture(fixture_name)["x"]
    data = quantize(x, name)
    ours = dequantize(data, name, x.shape)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[name]).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.reshape(x.shape).view(np.uint32))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_dequantized_error_is_within_the_types_step(name):
    """A sanity bound independent of the references: finer types are closer, none is off by a block's range."""
    x = llm_like(16, 1024, seed=3)
    err = np.abs(dequantize(quantize(x, name), name, x.shape) - x)
    block = type_info(name).block_size
    spread = np.abs(x).reshape(-1, block).max(axis=1, keepdims=True)
    bits = {"Q8_0": 7, "Q6_K": 5, "Q5_0": 4, "Q5_1": 4, "Q5_K": 4, "Q4_0": 3, "Q4_1": 3, "Q4_K": 3, "Q3_K": 2}
    if name in bits:
        assert (err.reshape(-1, block) <= spread * 2.0 ** -bits[name] * 1.01).all()
    if name == "F32":
        assert err.max() == 0


def test_sizes_and_bits_per_weight():
    expected_bpw = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K": 4.5, "Q4_1": 5.0}
    expected_bpw |= {"Q4_0": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625, "F16": 16.0, "BF16": 16.0, "F32": 32.0}
    assert {t.name: t.bits_per_weight for t in GGUF_TYPES.values()} == expected_bpw
    for t in GGUF_TYPES.values():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.name]] == (t.block_size, t.type_size)
        assert int(t.ggml_type) == int(gguf.GGMLQuantizationType[t.name])
    assert row_nbytes("q4_k", 1536) == 6 * 144
    assert tensor_nbytes(GGMLType.Q6_K, (576, 1536)) == 576 * 6 * 210
    assert type_info(12).name == "Q4_K"


def test_inputs_and_errors():
    x = linear_weight(8, 512)
    np.testing.assert_array_equal(quantize(torch.from_numpy(x), "Q4_K"), quantize(x, "Q4_K"))
    assert quantize(x.reshape(2, 4, 512), "Q8_0").shape == (8, 16 * 34)
    assert dequantize(quantize(x[0], "Q6_K"), "Q6_K", (512,)).shape == (512,)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((2, 576), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="unknown GGUF type"):
        type_info("Q4_X")
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(10, np.uint8), "Q8_0", (1, 32))


def test_a_large_matrix_in_chunks_matches_row_by_row(monkeypatch):
    """Chunking (bounded memory) does not change a byte."""
    import mpq.quant.gguf.types as types

    x = llm_like(24, 512, seed=4)
    whole = quantize(x, "Q3_K")
    monkeypatch.setattr(types, "CHUNK_WEIGHTS", 1000)
    np.testing.assert_array_equal(quantize(x, "Q3_K"), whole)


def test_llama_cpp_fallback_types():
    """llama-quantize's substitutes for rows that the block does not divide (SmolLM2's rows are 576 wide)."""
    assert [llama_cpp_type(t, 576).name for t in K_QUANTS] == ["Q8_0", "Q5_1", "Q5_0", "Q4_0", "Q4_0"]
    assert [llama_cpp_type(t, 1536).name for t in K_QUANTS] == K_QUANTS
    assert llama_cpp_type("Q4_K", 100) == GGMLType.F16
    assert llama_cpp_type("Q8_0", 100) == GGMLType.F16
    assert llama_cpp_type("BF16", 7) == GGMLType.BF16
