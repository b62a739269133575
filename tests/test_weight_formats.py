"""Weight formats are one file each: this module adds a power-of-two-scale integer format by subclassing
mpq.quant.formats.WeightFormat, and a search picks it up with no change elsewhere: its Δ in the sensitivity, its
bytes in the solver and in the exported tensors, its weights in the evaluator."""

import math
from dataclasses import dataclass

import pytest
import torch

import mpq
from mpq.cost.layer_cost import Choice, model_costs
from mpq.inputs.graph import prepare_model
from mpq.quant.affine import QuantizedWeight, grouped
from mpq.quant.formats import FORMATS, WeightFormat
from mpq.export.packed_file import read_packed
from mpq.verify.apply import dequantized_weight
from tests.user_models import group_net

GROUP = 16


@dataclass(frozen=True)
class PowerOfTwoInt(WeightFormat):
    """Symmetric integer codes with power-of-two scales, each stored as one int8 exponent:
    s = 2^ceil(log2(max|W_g| / (2^(b-1) - 1))), q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1);
    bytes = ceil(n * b / 8) + 1 per scale."""

    name = "pow2"
    clipped = False

    def quantize(self, weight, bits, clip_ratio=None):
        out = weight.shape[0]
        rows = grouped(weight, self.group_size)
        qmax = torch.tensor([2 ** (b - 1) - 1 for b in bits], dtype=torch.float32).repeat_interleave(len(rows) // out)
        exponent = torch.ceil(torch.log2(rows.abs().amax(1).clamp_min(2.0**-100) / qmax))
        scale = torch.exp2(exponent)
        codes = torch.clamp(torch.round(rows / scale[:, None]), -qmax[:, None] - 1, qmax[:, None])
        codes = codes.reshape(out, -1)[:, : weight[0].numel()].reshape(weight.shape).to(torch.int8)
        return QuantizedWeight(codes, scale.reshape(out, -1).reshape(out, -1), max(bits), self.group_size)

    def weight_bytes(self, per_channel, channels, bits):
        return math.ceil(per_channel * channels * bits / 8) + channels * self.scales_per_channel(per_channel)

    def stored_scale(self, scale):
        return torch.log2(scale).to(torch.int8)

    def scale_from_stored(self, stored):
        return torch.exp2(stored.to(torch.float32))


@pytest.fixture(scope="module")
def x():
    return torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def searched(x):
    quantizer = mpq.Quantizer(group_size=GROUP, weight_format="pow2")
    space = mpq.SearchSpace(bits=(2, 4, 8), act_bits=None)
    return mpq.search(group_net(), x, "4.5bpw", space=space, quantizer=quantizer, cache_dir=False, progress=False)


def test_the_format_registers_itself_by_its_name():
    assert FORMATS["pow2"] is PowerOfTwoInt
    assert mpq.Quantizer(weight_format="pow2").format == PowerOfTwoInt(None)
    with pytest.raises(mpq.MpqError, match="unknown weight format 'nope': choose one of"):
        mpq.Quantizer(weight_format="nope")


def test_the_search_counts_the_formats_bytes_and_the_file_holds_them(searched, x):
    plan, report = searched.plan, searched.report
    assert plan.quantizer.weight_format == "pow2"
    assert mpq.Plan.from_json(plan.to_json()).quantizer.format == PowerOfTwoInt(GROUP)
    prepared = prepare_model(group_net(), x[:2])
    choices = {n: Choice(lp.weight_bits, None) for n, lp in plan.layers.items()}
    costs = model_costs(prepared.graph.layers, choices, prepared.graph.float_bytes, fmt=PowerOfTwoInt(GROUP))
    assert plan.predicted["size_bytes"] == int(costs["size_bytes"]) == report.plan.size_bytes
    assert costs["bits_per_weight"] <= 4.5
    # one byte per scale: the same widths cost less than with float32 scales
    int_costs = model_costs(
        prepared.graph.layers, choices, prepared.graph.float_bytes, fmt=mpq.Quantizer(group_size=GROUP).format
    )
    scales = sum(lay.out_channels * math.ceil(lay.params // lay.out_channels / GROUP) for lay in prepared.graph.layers)
    assert int_costs["size_bytes"] - costs["size_bytes"] == 3 * scales


def test_the_exported_file_and_the_sensitivity_use_the_formats_weights(searched, x, tmp_path):
    plan = searched.plan
    mpq.export_plan(group_net(), plan, x, tmp_path / "model.mpq", cache_dir=False)
    packed = read_packed(tmp_path / "model.mpq").packed
    prepared = prepare_model(group_net(), x[:2])
    for name, lp in plan.layers.items():
        weight = prepared.folded.get_submodule(name).weight
        assert packed.tensors[f"{name}.weight_scale"].dtype == torch.int8
        expected = PowerOfTwoInt(GROUP).fake_quantize(weight, lp.weight_bits)
        codes = packed.tensors[f"{name}.weight_codes"]
        assert codes.numel() == math.ceil(weight.numel() * lp.weight_bits / 8)
        assert torch.equal(dequantized_weight(packed, name), expected)
    for name, s in searched.sensitivity.layers.items():
        weight = prepared.folded.get_submodule(name).weight
        err = float(PowerOfTwoInt(GROUP).channel_error(weight, 4).double().sum())
        assert s.quant_error[4] == pytest.approx(err, rel=1e-6)
