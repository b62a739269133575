"""The torchao export on a small conv -> depthwise conv -> pointwise conv -> linear net with per-channel widths,
clipped weights and bias correction: applied with torchao's quantize_, it gives the evaluator's logits."""

import json

import pytest
import torch
from torch import nn

import mpq
from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import ChannelRun, LayerPlan, Plan
from mpq.quant.reference import fp32_reference
from mpq.verify.apply import unpack_codes, unpack_model
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration

pytest.importorskip("torchao")


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net():
    """The net, its data, a plan (stem and fc with per-channel widths, every input 8 or 6 bits or float) and the packed tensors."""
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(32, 3, 8, 8, generator=generator)
    data = Dataset(x=x, y=torch.randint(0, 5, (32,), generator=generator))
    prepared = prepare_model(model, x[:2])
    layers = {
        "stem": LayerPlan(6, 8, channel_bits=(ChannelRun(0, 3, 3), ChannelRun(3, 8, 6)), channel_group=2),
        "dw": LayerPlan(4, 8),
        "pw": LayerPlan(5, None),
        "fc": LayerPlan(8, 6, channel_bits=(ChannelRun(0, 2, 2), ChannelRun(2, 5, 8))),
    }
    plan = Plan(layers=layers, model={"fingerprint": prepared.fingerprint})
    reference = fp32_reference(prepared, data, 25, Cache(None))  # batches of 25, as export_plan calibrates
    packed = pack_plan(prepared, plan, plan_calibration(prepared, plan, data, reference, 25))
    return model, prepared, data, plan, packed, packed_logits(prepared, packed, data, 8)


def _apply(model, data, path, **options):
    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_torchao_config

    folded = prepare_model(model, data.x[:2]).folded
    quantize_(folded, load_torchao_config(path, **options), filter_fn=None)
    with torch.inference_mode():
        return folded, torch.cat([folded(x) for x, _ in data.batches(8)])


def test_quantize_with_the_export_gives_the_evaluators_logits(net, tmp_path):
    from torchao.quantization import IntxUnpackedToInt8Tensor

    model, prepared, data, plan, packed, evaluator = net
    result = mpq.export_plan(
        model, plan, data, tmp_path / "net.torchao.json", format="torchao", cache_dir=False, eval_split=0
    )  # calibrated on all of data, as the evaluator
    assert result.file_bytes == (tmp_path / "net.torchao.json").stat().st_size
    folded, logits = _apply(model, data, tmp_path / "net.torchao.json")
    assert torch.equal(logits, evaluator)  # integer execution: bit for bit
    _, float_logits = _apply(model, data, tmp_path / "net.torchao.json", integer=False)
    assert torch.allclose(float_logits, evaluator, rtol=0, atol=1e-5)  # torchao's float kernels
    rebuilt, _ = unpack_model(prepared.folded, packed)
    for name, meta in packed.layers.items():
        weight = folded.get_submodule(name).weight
        assert isinstance(weight, IntxUnpackedToInt8Tensor)
        assert weight.block_size == (1, *meta["weight_shape"][1:])  # one scale per output channel
        assert weight.target_dtype == getattr(torch, f"int{plan.layers[name].weight_bits}")
        assert torch.equal(weight.qdata, unpack_codes(packed.tensors[f"{name}.weight_codes"], meta))
        assert torch.equal(weight.scale.reshape(-1), packed.tensors[f"{name}.weight_scale"])  # the clipped scales
        assert torch.equal(weight.dequantize(), rebuilt.get_submodule(name).weight)
    assert folded.dw.weight.block_size == (1, 1, 3, 3)  # the depthwise conv, quantized
    # the stem's first 3 channels are 3-bit codes, the rest 6-bit; fc's first 2 rows 2-bit
    assert int(folded.stem.weight.qdata[:3].abs().max()) <= 4 < int(folded.stem.weight.qdata[3:].abs().max())
    assert int(folded.fc.weight.qdata[:2].abs().max()) <= 2
    for name in ("stem", "dw", "pw", "fc"):  # the corrected biases, not the folded model's
        assert torch.equal(folded.get_submodule(name).bias, packed.tensors[f"{name}.bias"])
        assert not torch.allclose(packed.tensors[f"{name}.bias"], prepared.folded.get_submodule(name).bias, atol=1e-6)


def test_the_inputs_are_quantized_with_the_calibrated_ranges(net, tmp_path):
    model, prepared, data, plan, packed, evaluator = net
    mpq.export_plan(model, plan, data, tmp_path / "net.torchao.json", format="torchao", cache_dir=False)
    folded, _ = _apply(model, data, tmp_path / "net.torchao.json", integer=False)
    seen = {}
    folded.fc.register_forward_pre_hook(lambda m, args: seen.__setitem__("fc", args[0]), prepend=False)
    with torch.inference_mode():
        folded(data.x[:8])
    scale, zero = float(packed.tensors["fc.input_scale"][0]), int(packed.tensors["fc.input_zero_point"][0])
    codes = seen["fc"] / scale + zero  # after mpq's quantizer: 6-bit codes on the calibrated grid
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -1e-3 and codes.max() <= 63 + 1e-3


def test_the_file_is_json_with_each_layers_tensors_and_damage_is_refused(net, tmp_path):
    from mpq.export.torchao_config import load_torchao_config

    model, _, data, plan, packed, _ = net
    mpq.export_plan(model, plan, data, tmp_path / "net.torchao.json", format="torchao", cache_dir=False)
    document = json.loads((tmp_path / "net.torchao.json").read_text())
    assert document["schema"] == "mpq.torchao/1"
    stem = document["layers"]["stem"]
    assert stem["channel_bits"] == [[0, 3, 3], [3, 8, 6]] and stem["module"] == "Conv2d"
    assert set(stem["tensors"]) == {
        "weight_codes",
        "weight_scale",
        "bias",
        "input_scale",
        "input_zero_point",
    }  # the bias from BatchNorm folding
    # the codes as packed: 3 channels x 27 weights at 3 bits (chunks of 2 channels), 5 x 27 at 6 bits
    assert stem["tensors"]["weight_codes"]["shape"] == [packed.tensors["stem.weight_codes"].numel()]
    document["layers"]["dw"]["tensors"]["weight_scale"]["dtype"] = "object"
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(MpqError, match="not a torchao export"):
        load_torchao_config(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text((tmp_path / "net.torchao.json").read_text()[:-40])
    with pytest.raises(MpqError, match="not a torchao export"):
        load_torchao_config(tmp_path / "cut.json")
