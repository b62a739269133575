"""AdaRound and cross-layer equalization (mpq.quant.adaround, mpq.quant.equalize) on tiny models: the float model
unchanged, the ranges equalized, the learned codes within one of nearest's and better on the calibration data, the
packed file's codes the evaluator's, plan.json with the new quantizer fields."""

import json

import pytest
import torch
from torch import nn

import mpq
from mpq.cache import Cache
from mpq.export.packed_file import read_packed
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import LayerPlan, Plan
from mpq.plan.settings import PlanSettings
from mpq.quant.calibration import calibrate
from mpq.quant.equalize import equalization_pairs, equalized
from mpq.quant.quantizer import DEFAULT_QUANTIZER, PRESETS, Quantizer
from mpq.quant.reference import fp32_reference
from mpq.verify.apply import unpack_codes
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration


class DepthwiseNet(nn.Module):
    """conv -> BN -> ReLU6 -> depthwise -> BN -> ReLU -> pointwise -> BN -> linear head: a ReLU6 pair, a ReLU pair,
    channels of very different ranges (the BatchNorm gains)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.pw = nn.Conv2d(8, 12, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.act1(self.bn1(self.dw(self.act0(self.bn0(self.conv(x))))))
        return self.fc(self.bn2(self.pw(x)).mean(dim=(2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = DepthwiseNet()
    with torch.no_grad():
        for bn in (model.bn0, model.bn1, model.bn2):
            bn.weight.copy_(torch.logspace(-1.5, 1, bn.num_features)[torch.randperm(bn.num_features)])
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return model.eval(), Dataset(x=x)


def test_pairs_are_found_through_folded_batchnorms_and_activations(net):
    model, data = net
    prepared = prepare_model(model, data.x[:2])
    pairs = equalization_pairs(prepared.folded, data.x[:2])
    assert [(p.first, p.second, p.activation) for p in pairs] == [("conv", "dw", "relu6"), ("dw", "pw", "relu")]


def test_equalization_keeps_the_float_model_and_equalizes_the_ranges(net):
    model, data = net
    prepared = prepare_model(model, data.x[:2])
    before = {n: prepared.folded.get_submodule(n).weight.detach().clone() for n in ("dw", "pw")}
    eq = equalized(prepared, data, 16)
    with torch.no_grad():
        assert torch.allclose(eq.folded(data.x), prepared.folded(data.x), rtol=1e-5, atol=1e-5)
    assert eq.fingerprint != prepared.fingerprint
    assert torch.equal(prepared.folded.dw.weight, before["dw"])  # the prepared model is untouched
    # the last pair of the last sweep (dw -> pw, through ReLU): both ranges sqrt(r1 r2), per channel
    r1 = eq.folded.dw.weight.detach().abs().reshape(8, -1).amax(dim=1)
    r2 = eq.folded.pw.weight.detach().abs().transpose(0, 1).reshape(8, -1).amax(dim=1)
    assert torch.allclose(r1, r2, rtol=1e-5)
    # the depthwise layer's channel ranges, 243x apart, come within 29x of each other
    spread = lambda r: float(r.max() / r.min())  # noqa: E731
    assert spread(r1) < spread(before["dw"].abs().reshape(8, -1).amax(dim=1)) / 5


def test_the_product_rule_on_one_pair_and_relu6_channels_near_6_keep_their_scale(net):
    from mpq.quant.equalize import RELU6_HEADROOM, Pair, equalize_model

    model, data = net
    prepared = prepare_model(model, data.x[:2])
    folded = prepared.folded
    r1 = folded.dw.weight.detach().abs().reshape(8, -1).amax(dim=1)
    r2 = folded.pw.weight.detach().abs().transpose(0, 1).reshape(8, -1).amax(dim=1)
    equalize_model(folded, [Pair("dw", "pw", "relu")], {})
    assert torch.allclose(folded.dw.weight.detach().abs().reshape(8, -1).amax(dim=1), (r1 * r2).sqrt(), rtol=1e-5)
    top = torch.tensor([7.0, 1.0, 3.0, 0.5, 9.0, 2.0, 6.0, 1.5], dtype=torch.float64)
    scales = equalize_model(folded, [Pair("conv", "dw", "relu6")], {"conv": top})["conv->dw"]
    for i, s in enumerate(scales):
        if top[i] >= 6 / RELU6_HEADROOM:  # near the cap: left alone
            assert s == 1.0
        else:
            assert top[i] / s <= 6 / RELU6_HEADROOM + 1e-9  # still well below the cap after scaling


def test_adaround_codes_are_within_one_of_nearest_and_lower_the_layer_output_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=generator) @ torch.randn(8, 64, generator=generator)  # correlated inputs
    data = Dataset(x=x)
    prepared = prepare_model(model, x[:2])
    reference = fp32_reference(prepared, data, 64, Cache(None))
    nearest = calibrate(prepared, data, reference.input_ranges, DEFAULT_QUANTIZER, 64)
    learned = calibrate(prepared, data, reference.input_ranges, Quantizer(rounding="adaround"), 64)
    weight = prepared.folded.get_submodule("0").weight.detach()
    for bits in (3, 4):
        q0, q1 = (c.weight("0", weight, [bits] * 32) for c in (nearest, learned))
        assert (q0.codes.int() - q1.codes.int()).abs().max() == 1
        assert torch.equal(q0.scale, q1.scale)  # only the rounding moves
        error = lambda q: float((x @ (q.dequantize() - weight).T).pow(2).mean())  # noqa: E731
        assert error(q1) < 0.8 * error(q0)


def test_packed_file_carries_the_learned_codes_of_an_equalized_model(net, tmp_path):
    model, data = net
    prepared = prepare_model(model, data.x[:2])
    quantizer = PRESETS["adaround-equalize"]
    plan = Plan(
        layers={"conv": LayerPlan(4, 8), "dw": LayerPlan(3, 8), "pw": LayerPlan(4, None), "fc": LayerPlan(5, 8)},
        model={"fingerprint": prepared.fingerprint},
        settings=PlanSettings(quantizer=quantizer),
    )
    reference = fp32_reference(prepared, data, 16, Cache(None))
    calibration = plan_calibration(prepared, plan, data, reference, 16, Cache(tmp_path / "cache"))
    packed = pack_plan(prepared, plan, calibration)
    mpq.export_plan(model, plan, data, tmp_path / "net.mpqpack", cache_dir=tmp_path / "cache", eval_split=0)
    stored = read_packed(tmp_path / "net.mpqpack").packed
    for name, lp in plan.layers.items():
        weight = calibration.model(prepared).folded.get_submodule(name).weight
        expected = calibration.weight(name, weight, [lp.weight_bits] * weight.shape[0]).codes
        assert torch.equal(unpack_codes(stored.tensors[f"{name}.weight_codes"], stored.layers[name]), expected)
    nearest_dw = calibrate(prepared, data, reference.input_ranges, Quantizer(equalize=True), 16)
    assert not torch.equal(expected, nearest_dw.weight("fc", weight, [5] * weight.shape[0]).codes)
    rebuilt = mpq.load_packed(tmp_path / "net.mpqpack", model)
    with torch.inference_mode():
        assert torch.equal(rebuilt(data.x), packed_logits(prepared, packed, data, 16))


def test_plan_json_round_trips_the_new_fields_and_old_plans_still_load(tmp_path):
    quantizer = Quantizer(rounding="adaround", equalize=True)
    assert quantizer.to_json() | {} == DEFAULT_QUANTIZER.to_json() | {"rounding": "adaround", "equalize": True}
    assert "rounding" not in DEFAULT_QUANTIZER.to_json() and "equalize" not in DEFAULT_QUANTIZER.to_json()
    plan = Plan(layers={"fc": LayerPlan(4, 8)}, model={"fingerprint": "x"}, settings=PlanSettings(quantizer=quantizer))
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").quantizer == quantizer
    old = json.loads((tmp_path / "plan.json").read_text())
    for key in ("rounding", "equalize"):
        old["settings"]["quantizer"].pop(key)
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Plan.load(tmp_path / "old.json").quantizer == DEFAULT_QUANTIZER
    # the sensitivity is round-to-nearest on the unequalized model: its cache keys ignore both
    assert quantizer.sensitivity_json() == DEFAULT_QUANTIZER.to_json()


def test_bad_rounding_settings_are_one_sentence_errors():
    with pytest.raises(mpq.MpqError, match="nearest, adaround"):
        Quantizer(rounding="stochastic")
    with pytest.raises(mpq.MpqError, match="(?i)equalize.*true or false"):
        Quantizer(equalize="yes")


def test_cli_options_reach_the_quantizer():
    from mpq.cli.parser import build_parser
    from mpq.cli.translate import quantizer_arg

    args = build_parser().parse_args(["search", "--budget", "4MB", "--rounding", "adaround", "--equalize", "on"])
    assert quantizer_arg(args, default_is_plan=False) == PRESETS["adaround-equalize"]
    args = build_parser().parse_args(["verify", "plan.json", "--quantizer", "adaround", "--equalize", "on"])
    assert quantizer_arg(args, default_is_plan=True) == PRESETS["adaround-equalize"]
    args = build_parser().parse_args(["export", "plan.json", "--out", "x.mpqpack"])
    assert quantizer_arg(args, default_is_plan=True) is None  # the plan's own
