"""Byte accounting: the cost model's size equals the bytes of the real exported tensors."""

import importlib
import math

import numpy as np
import pytest
import torch

import mpq
from mpq.cost.layer_cost import Choice, model_costs
from mpq.inputs.graph import prepare_model
from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import ActQuantParams, fake_quantize_weight
from mpq.verify.apply import pack_bits, pack_model, unpack_bits, unpack_model


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_round_trips_and_takes_ceil_n_b_over_8_bytes(bits):
    codes = torch.randint(
        -(2 ** (bits - 1)), 2 ** (bits - 1), (1001,), generator=torch.Generator().manual_seed(bits)
    ).to(torch.int8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), codes)
    unsigned = (codes.numpy().astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)  # the layout, bit by bit
    stream = ((unsigned[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(-1)
    assert np.array_equal(packed.numpy(), np.packbits(stream, bitorder="little"))


@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_a_chunk_at_a_time_gives_the_same_bytes(bits, monkeypatch):
    apply = importlib.import_module("mpq.verify.apply")  # `mpq.verify` is also the API's function

    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (5003,), generator=torch.Generator().manual_seed(bits))
    whole = pack_bits(codes.to(torch.int8), bits)
    monkeypatch.setattr(apply, "PACK_CHUNK", 64)
    assert torch.equal(pack_bits(codes.to(torch.int8), bits), whole)
    assert torch.equal(unpack_bits(whole, bits, 5003), codes.to(torch.int8))


def mixed_plan(prepared) -> Plan:
    widths = {"conv1": LayerPlan(3, 8), "conv2": LayerPlan(5, None), "fc": LayerPlan(8, 6)}
    assert set(widths) == {layer.name for layer in prepared.graph.layers}
    return Plan(layers=widths)


def test_predicted_size_equals_exported_bytes(tiny_model, tiny_data):
    x, _ = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = mixed_plan(prepared)
    act = {"conv1": ActQuantParams(0.05, 10, 8), "fc": ActQuantParams(0.02, 0, 6)}
    packed = pack_model(prepared.folded, plan, act)
    predicted = model_costs(
        prepared.graph.layers, {n: lp.choice for n, lp in plan.layers.items()}, prepared.graph.float_bytes
    )
    # conv1: 54 weights at 3 bits -> 21 B + 3 scales + 3 folded biases + act params (8 B)
    # conv2: 54 at 5 bits -> 34 B + 2 scales + 2 biases; fc: 32 at 8 bits -> 32 B + 4 + 4 + 8
    expected = (21 + 12 + 12 + 8) + (34 + 8 + 8) + (32 + 16 + 16 + 8)
    assert packed.size_bytes == predicted["size_bytes"] == expected


def test_unpacked_model_holds_exactly_the_quantized_weights(tiny_model, tiny_data):
    x, _ = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = mixed_plan(prepared)
    act = {"conv1": ActQuantParams(0.05, 10, 8), "fc": ActQuantParams(0.02, 0, 6)}
    rebuilt, act_back = unpack_model(prepared.folded, pack_model(prepared.folded, plan, act))
    for name, lp in plan.layers.items():
        original = prepared.folded.get_submodule(name).weight
        assert torch.equal(rebuilt.get_submodule(name).weight, fake_quantize_weight(original, lp.weight_bits))
    assert act_back["fc"].zero_point == 0 and act_back["fc"].bits == 6
    assert act_back["conv1"].scale == pytest.approx(0.05)
    assert prepared.folded.get_submodule("fc").weight is not rebuilt.get_submodule("fc").weight


def test_choice_bops_use_32_bits_for_float_inputs(tiny_model, tiny_data):
    x, _ = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    layers = prepared.graph.layers
    costs = model_costs(layers, {"conv1": Choice(4, 8), "conv2": Choice(4, None), "fc": Choice(8, 8)}, 0)
    by_name = prepared.graph.by_name
    assert costs["bops"] == by_name["conv1"].macs * 32 + by_name["conv2"].macs * 128 + by_name["fc"].macs * 64


def test_integer_layers_give_the_same_bits_at_any_batch_size_and_accumulator(tiny_model, tiny_data, monkeypatch):
    """Integer accumulation is exact: batch 1 and batch 20, float32 and float64 accumulators, all equal."""
    from mpq.verify import apply as packed_module

    x, _ = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = mixed_plan(prepared)
    act = {"conv1": ActQuantParams(0.05, 10, 8), "fc": ActQuantParams(0.02, 0, 6)}
    packed = pack_model(prepared.folded, plan, act)
    model = packed_module.fake_quant_model(prepared.folded, packed)
    assert model.conv1.weight.dtype == torch.float32  # 8-bit inputs, 3-bit weights: sums stay below 2^24
    with torch.inference_mode():
        whole = model(x)
        one_by_one = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    monkeypatch.setattr(packed_module, "FLOAT32_EXACT_INTEGERS", 0)
    wide = packed_module.fake_quant_model(prepared.folded, packed)
    assert wide.conv1.weight.dtype == torch.float64
    with torch.inference_mode():
        assert torch.equal(whole, one_by_one) and torch.equal(whole, wide(x))


def test_search_leaves_room_for_the_packed_files_header(tmp_path):
    from mpq.export.packed_file import read_packed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    data = (
        torch.randn(32, 64, generator=torch.Generator().manual_seed(1)),
        torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2)),
    )
    options = dict(bits=(2, 4, 8), max_probes=4, cache_dir=False, progress=False)
    loose = mpq.search(model, data, "1MB", **options)
    assert loose.plan.settings.container_reserve_bytes == 0  # W8 everywhere and its header fit anyway
    full = loose.plan.predicted["size_bytes"]
    budget = f"{full + 40}B"  # the tensors of W8 fit, the header (hundreds of bytes) does not
    result = mpq.search(model, data, budget, **options)
    assert result.plan.settings.container_reserve_bytes > 0 and result.plan.budgets[0].text == budget
    written = mpq.export_plan(model, result.plan, data, tmp_path / "t.mpqpack", cache_dir=False)
    assert written.file_bytes == (tmp_path / "t.mpqpack").stat().st_size <= full + 40
    assert read_packed(tmp_path / "t.mpqpack").tensor_bytes == result.plan.predicted["size_bytes"]
