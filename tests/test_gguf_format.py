"""The GGUF weight formats (mpq.quant.formats.gguf): each width one ggml type, llama.cpp's substitution for rows a
K-quant block does not divide, the solver's bytes the file's (padded to 32), and the packed tensors the evaluator reads
back equal to the type's dequantized bytes."""

import numpy as np
import pytest
import torch

import mpq
from mpq.plan import LayerPlan, Plan
from mpq.quant.formats import GGUFLegacyTypes, GGUFTypes
from mpq.quant.gguf import dequantize, quantize
from mpq.verify.apply import dequantized_weight, pack_model


def _weight(out, row, seed=0):
    return torch.randn(out, row, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("bits", "row", "expected", "nbytes"),
    [
        (4, 256, "Q4_K", 144),
        (4, 64, "Q5_0", 2 * 22),  # llama-quantize's substitute for Q4_K on 64-weight rows
        (6, 512, "Q6_K", 2 * 210),
        (6, 96, "Q8_0", 3 * 34),
        (2, 64, "Q4_0", 2 * 18),
        (8, 64, "Q8_0", 2 * 34),
    ],
)
def test_each_width_is_one_type_and_its_bytes(bits, row, expected, nbytes):
    fmt = GGUFTypes()
    assert fmt.ggml_type(bits, row).name == expected
    weight = _weight(3, row)
    q = fmt.quantize(weight, [bits] * 3)
    assert q.ggml_type.name == expected and q.data.nbytes == 3 * nbytes
    assert np.array_equal(q.data, quantize(weight, expected))
    assert torch.equal(q.dequantize(), torch.from_numpy(dequantize(q.data, expected, (3, row))))
    assert fmt.weight_bytes(row, 3, bits) == -(-3 * nbytes // 32) * 32


def test_the_formats_refuse_what_they_cannot_store():
    with pytest.raises(mpq.MpqError, match="has no 3-bit type"):
        GGUFLegacyTypes().ggml_type(3, 64)
    with pytest.raises(mpq.MpqError, match="one type per layer"):
        GGUFTypes().quantize(_weight(2, 64), [4, 8])
    with pytest.raises(mpq.MpqError, match="leave out the group size"):
        mpq.Quantizer(weight_format="gguf", group_size=32)
    assert mpq.Quantizer(weight_format="gguf-legacy").format.widths == (4, 5, 8)


def test_the_packed_tensors_are_the_block_bytes_and_read_back_as_the_evaluators_weight():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    plan = Plan(layers={"0": LayerPlan(4, None), "2": LayerPlan(6, None)})
    fmt = GGUFTypes()
    packed = pack_model(model, plan, fmt=fmt)
    codes = packed.tensors["0.weight_codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == fmt.weight_bytes(256, 32, 4) == 32 * 144
    assert "0.weight_scale" not in packed.tensors
    assert packed.tensors["2.weight_codes"].numel() == fmt.weight_bytes(32, 8, 6) == 288  # 8 rows of Q8_0, 272 -> 288
    for name, layer in (("0", model[0]), ("2", model[2])):
        assert torch.equal(
            dequantized_weight(packed, name), fmt.fake_quantize(layer.weight, plan.layers[name].weight_bits)
        )
    assert packed.bits_per_weight == 8 * (32 * 144 + 288) / (256 * 32 + 32 * 8)
