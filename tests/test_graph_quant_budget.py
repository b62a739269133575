"""Layers, BatchNorm folding, MACs and data flow; quantizers; budget grammar."""

import pytest
import torch

from mpq.cost.budget import parse_budget
from mpq.errors import MpqError
from mpq.inputs.graph import prepare_model
from mpq.quant.affine import channel_quant_error, quantize_weight


def test_folding_keeps_outputs_and_leaves_the_user_model_alone(tiny_model, tiny_data):
    x, _ = tiny_data
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    prepared = prepare_model(tiny_model, x[:2])
    assert prepared.graph.folded_batchnorms == ["bn1"]
    assert isinstance(prepared.folded.bn1, torch.nn.Identity)
    with torch.no_grad():
        assert torch.allclose(prepared.folded(x), tiny_model(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    assert isinstance(tiny_model.bn1, torch.nn.BatchNorm2d)


def test_layer_shapes_params_and_macs(tiny_model, tiny_data):
    x, _ = tiny_data
    layers = prepare_model(tiny_model, x[:2]).graph.by_name
    assert layers["conv1"].input_shape == (2, 6, 6) and layers["conv1"].output_shape == (3, 6, 6)
    assert layers["conv1"].params == 54 and layers["conv1"].bias_params == 3  # bias comes from the folded BN
    assert layers["conv1"].macs == 3 * 6 * 6 * 2 * 9
    assert layers["conv2"].macs == 2 * 2 * 2 * 3 * 9
    assert layers["fc"].macs == 8 * 4


def test_weight_codes_stay_in_range_and_error_shrinks_with_bits():
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = []
    for bits in range(2, 9):
        q = quantize_weight(weight, bits)
        assert int(q.codes.min()) >= -(2 ** (bits - 1)) and int(q.codes.max()) <= 2 ** (bits - 1) - 1
        # the largest magnitude of every channel is represented exactly
        absmax = weight.reshape(6, -1).abs().amax(dim=1)
        assert torch.allclose(q.dequantize().reshape(6, -1).abs().amax(dim=1), absmax, rtol=1e-6)
        errors.append(float(channel_quant_error(weight, bits).sum()))
    assert all(a > b for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize(
    "text, kind, limit",
    [
        ("4MB", "size_bytes", 4_000_000),
        ("3.5MiB", "size_bytes", 3.5 * 2**20),
        ("500KB", "size_bytes", 500_000),
        ("123456B", "size_bytes", 123_456),
        ("1.2GB", "size_bytes", 1_200_000_000),
        ("20GBOPs", "bops", 20e9),
        ("2.5ms", "latency_s", 2.5e-3),
        ("800us", "latency_s", 800e-6),
    ],
)
def test_budget_grammar(text, kind, limit):
    budget = parse_budget(text)
    assert budget.kind == kind and budget.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    "text, message",
    [("4XB", "unknown budget unit"), ("0MB", "positive"), ("MB", "cannot read"), ("-1MB", "must be a positive number")],
)
def test_bad_budgets_say_what_to_do(text, message):
    with pytest.raises(MpqError, match=message):
        parse_budget(text)
