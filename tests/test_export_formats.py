"""`mpq export` on the tiny model: the packed file's exact bytes, load_packed, ONNX QDQ in onnxruntime, torchao."""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mpq
from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.export.packed_file import read_packed
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import fake_quantize_weight
from mpq.quant.observers import WEIGHT_CLIPS
from mpq.quant.quantizer import DEFAULT_QUANTIZER
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration

MPQ = str(Path(sys.executable).parent / "mpq")


@pytest.fixture
def tiny(tiny_model, tiny_data):
    """The tiny model prepared, its data, a mixed plan (3/5/8-bit weights, 8-bit / float / 6-bit inputs), and the evaluator's logits."""
    x, y = tiny_data
    data = Dataset(x=x, y=y)
    prepared = prepare_model(tiny_model, x[:2])
    plan = Plan(
        layers={"conv1": LayerPlan(3, 8), "conv2": LayerPlan(5, None), "fc": LayerPlan(8, 6)},
        model={"fingerprint": prepared.fingerprint},
    )
    reference = fp32_reference(prepared, data, 8, Cache(None))
    packed = pack_plan(prepared, plan, plan_calibration(prepared, plan, data, reference, 8))
    return prepared, data, plan, packed, packed_logits(prepared, packed, data, 8)


def test_packed_file_is_the_counted_tensor_bytes_plus_its_header(tiny, tmp_path):
    prepared, data, plan, packed, _ = tiny
    result = mpq.export_plan(
        prepared.original, plan, data, tmp_path / "tiny.mpqpack", format="packed", cache_dir=False, eval_split=0
    )
    raw = (tmp_path / "tiny.mpqpack").read_bytes()
    (header_length,) = struct.unpack("<I", raw[8:12])
    # the same tensor bytes as test_predicted_size_equals_exported_bytes: (21+12+12+8) + (34+8+8) + (32+16+16+8)
    assert packed.size_bytes == result.counted_bytes == 175
    assert raw[:8] == b"MPQPACK1"
    assert len(raw) == result.file_bytes == 175 + 12 + header_length
    assert 100 < header_length < 400
    stored = read_packed(tmp_path / "tiny.mpqpack")
    assert stored.header_bytes == 12 + header_length and stored.tensor_bytes == 175
    assert stored.packed.layers == packed.layers
    assert all(
        torch.equal(stored.packed.tensors[k], t) and stored.packed.tensors[k].dtype == t.dtype
        for k, t in packed.tensors.items()
    )


def test_load_packed_reproduces_the_evaluator_exactly(tiny, tmp_path):
    prepared, data, plan, packed, evaluator_logits = tiny
    mpq.export_plan(prepared.original, plan, data, tmp_path / "tiny.mpqpack", cache_dir=False, eval_split=0)
    rebuilt = mpq.load_packed(tmp_path / "tiny.mpqpack", prepared.original)
    with torch.inference_mode():
        logits = torch.cat([rebuilt(x) for x, _ in data.batches(8)])
    assert torch.equal(logits, evaluator_logits)
    conv2 = prepared.folded.conv2.weight  # the default quantizer: MSE-clipped weights, corrected biases
    assert torch.equal(
        rebuilt.conv2.weight,
        fake_quantize_weight(conv2, 5, WEIGHT_CLIPS[DEFAULT_QUANTIZER.weight_clip].ratios(conv2, 5)),
    )
    assert torch.equal(rebuilt.conv2.bias, packed.tensors["conv2.bias"])
    assert not torch.allclose(packed.tensors["conv2.bias"], prepared.folded.conv2.bias, atol=1e-6)  # bias-corrected
    # the fake-quantized inputs matter: without the hooks the logits differ
    plain = prepared.folded(data.x[:8])
    assert not torch.allclose(plain, evaluator_logits[:8], atol=1e-4)


def test_load_packed_refuses_another_model(tiny, tmp_path, tiny_model):
    prepared, data, plan, _, _ = tiny
    mpq.export_plan(prepared.original, plan, data, tmp_path / "tiny.mpqpack", cache_dir=False, eval_split=0)
    other = type(tiny_model)()
    with pytest.raises(MpqError, match="exported from another model"):
        mpq.load_packed(tmp_path / "tiny.mpqpack", other)
    (tmp_path / "cut.mpqpack").write_bytes((tmp_path / "tiny.mpqpack").read_bytes()[:-3])
    with pytest.raises(MpqError, match="damaged"):
        mpq.load_packed(tmp_path / "cut.mpqpack", prepared.original)


def _write_tiny_specs(tmp_path, tiny_data) -> tuple[str, str]:
    (tmp_path / "tiny_model.py").write_text(
        "import torch, sys\nsys.path.insert(0, %r)\nfrom conftest import TinyConvNet\n"
        "def build():\n    torch.manual_seed(0)\n    return TinyConvNet().eval()\n" % str(Path(__file__).parent)
    )
    x, y = tiny_data
    np.savez(tmp_path / "tiny.npz", x=x.numpy(), y=y.numpy())
    return f"{tmp_path / 'tiny_model.py'}:build", str(tmp_path / "tiny.npz")


def test_cli_export_of_a_plan_for_another_model_exits_2_with_one_line(tiny, tmp_path, tiny_data):
    _, _, plan, _, _ = tiny
    plan.model = {"fingerprint": "0" * 64}
    plan.save(tmp_path / "plan.json")
    model_spec, data_spec = _write_tiny_specs(tmp_path, tiny_data)
    args = [
        MPQ,
        "export",
        str(tmp_path / "plan.json"),
        "--out",
        str(tmp_path / "x.mpqpack"),
        "--model",
        model_spec,
        "--data",
        data_spec,
        "--no-cache",
    ]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "mpq: error: this plan was made for another model"
    )
    assert not (tmp_path / "x.mpqpack").exists()


def test_cli_export_packed_prints_the_measured_bytes(tmp_path, tiny_data):
    model_spec, data_spec = _write_tiny_specs(tmp_path, tiny_data)
    from mpq.inputs.specs import load_model_spec

    prepared = prepare_model(load_model_spec(model_spec), tiny_data[0][:2])
    Plan(
        layers={"conv1": LayerPlan(4, 8), "conv2": LayerPlan(4, 8), "fc": LayerPlan(4, 8)},
        model={"fingerprint": prepared.fingerprint},
    ).save(tmp_path / "plan.json")
    args = [
        MPQ,
        "export",
        str(tmp_path / "plan.json"),
        "--out",
        str(tmp_path / "x.mpqpack"),
        "--model",
        model_spec,
        "--data",
        data_spec,
        "--no-cache",
    ]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    size = (tmp_path / "x.mpqpack").stat().st_size
    assert f"{size:,} bytes on disk" in result.stdout
    # 4-bit: conv1 27 + 12 + 12 + 8, conv2 27 + 8 + 8 + 8, fc 16 + 16 + 16 + 8 (codes, scales, biases, input params)
    assert "the plan counts 166 bytes" in result.stdout and f"container overhead {size - 166:,} bytes" in result.stdout


def test_onnx_qdq_carries_the_widths_and_matches_the_evaluator_in_onnxruntime(tiny, tmp_path):
    import onnx

    from mpq.export.onnx_qdq import run_onnx

    prepared, data, plan, packed, evaluator_logits = tiny
    result = mpq.export_plan(
        prepared.original, plan, data, tmp_path / "tiny.onnx", format="onnx", cache_dir=False, eval_split=0
    )
    model = onnx.load(str(tmp_path / "tiny.onnx"))
    assert result.file_bytes == (tmp_path / "tiny.onnx").stat().st_size
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["conv1.weight_codes"].data_type == onnx.TensorProto.INT4  # 3 bits, INT4 storage
    assert inits["conv2.weight_codes"].data_type == onnx.TensorProto.INT8  # 5 bits, INT8 storage
    assert inits["fc.weight_codes"].data_type == onnx.TensorProto.INT8
    assert not any(name.endswith(".weight") for name in inits)  # no float copies of quantized weights
    array = lambda name: onnx.numpy_helper.to_array(inits[name]).reshape(-1)  # noqa: E731
    # the evaluator's (bias-corrected) biases and (clipped) weight scales: conv2 (float input) as Conv's own,
    # conv1 and fc (integer layers) added after the rescaling by s_x * s_w
    assert np.array_equal(array("conv2.bias"), packed.tensors["conv2.bias"].numpy())
    assert np.array_equal(array("conv2.weight_scale"), packed.tensors["conv2.weight_scale"].numpy())
    for name in ("conv1", "fc"):
        assert np.array_equal(array(f"{name}.output_bias"), packed.tensors[f"{name}.bias"].numpy())
        input_scale = float(packed.tensors[f"{name}.input_scale"][0])
        assert np.allclose(
            array(f"{name}.output_scale"), input_scale * packed.tensors[f"{name}.weight_scale"].numpy(), rtol=1e-6
        )
    ops = [n.op_type for n in model.graph.node]
    # conv1 and fc (quantized inputs) in integers; conv2 (float input) through DequantizeLinear weights
    assert ops.count("ConvInteger") == 1 and ops.count("MatMulInteger") == 1 and ops.count("Conv") == 1
    assert ops.count("DequantizeLinear") == 1 and ops.count("QuantizeLinear") == 2
    clip = next(n for n in model.graph.node if n.name == "fc/input/Clip")
    assert onnx.numpy_helper.to_array(inits[clip.input[2]]) == 2**6 - 1
    assert json.loads({p.key: p.value for p in model.metadata_props}["mpq.layers"])["conv1"]["weight_bits"] == 3
    logits = run_onnx(tmp_path / "tiny.onnx", data.x, batch_size=8)
    assert torch.allclose(logits, evaluator_logits, atol=1e-5)
    # conv1's output is computed in integers and rescaled, bit for bit as the evaluator does it
    assert torch.equal(
        _onnx_node_output(tmp_path / "tiny.onnx", "conv1/Add", data.x[:8]),
        _torch_output(prepared, packed, "conv1", data.x[:8]),
    )


def _onnx_node_output(path, node_name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of one node of the ONNX model in onnxruntime (made a graph output)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    name = next(n.output[0] for n in model.graph.node if n.name == node_name)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([name], {"input": x.numpy()})[0])


def _torch_output(prepared, packed, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The evaluator's output of one layer."""
    from mpq.verify.apply import fake_quant_model

    model, seen = fake_quant_model(prepared.folded, packed), {}
    model.get_submodule(layer).register_forward_hook(lambda m, a, out: seen.__setitem__(layer, out))
    with torch.inference_mode():
        model(x)
    return seen[layer]


def test_torchao_export_names_every_layer_with_its_width_and_reproduces_the_evaluator(tiny, tmp_path):
    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_torchao_config

    prepared, data, plan, packed, evaluator_logits = tiny
    mpq.export_plan(
        prepared.original, plan, data, tmp_path / "tiny.torchao.json", format="torchao", cache_dir=False, eval_split=0
    )
    saved = json.loads((tmp_path / "tiny.torchao.json").read_text())["layers"]
    assert {n: (e["weight_bits"], e["act_bits"]) for n, e in saved.items()} == {
        "conv1": (3, 8),
        "conv2": (5, None),
        "fc": (8, 6),
    }
    config = load_torchao_config(tmp_path / "tiny.torchao.json")
    assert type(config).__name__ == "FqnToConfig" and set(config.fqn_to_config) == {"conv1", "conv2", "fc"}
    model = prepare_model(prepared.original, data.x[:2]).folded
    quantize_(model, config, filter_fn=None)
    assert [model.get_submodule(n).weight.target_dtype for n in ("conv1", "conv2", "fc")] == [
        torch.int3,
        torch.int5,
        torch.int8,
    ]
    # the evaluator's weights (MSE-clipped scales) and bias-corrected biases
    assert torch.equal(
        model.conv2.weight.dequantize(),
        fake_quantize_weight(
            prepared.folded.conv2.weight,
            5,
            WEIGHT_CLIPS[DEFAULT_QUANTIZER.weight_clip].ratios(prepared.folded.conv2.weight, 5),
        ),
    )
    assert torch.equal(model.conv2.bias, packed.tensors["conv2.bias"])
    with torch.inference_mode():
        logits = torch.cat([model(x) for x, _ in data.batches(8)])
    assert torch.equal(logits, evaluator_logits)


def test_onnx_stores_2_bit_weights_as_int2_and_4_bit_inputs_clipped(tiny_model, tiny_data, tmp_path):
    import onnx

    from mpq.export.onnx_qdq import run_onnx

    x, y = tiny_data
    data = Dataset(x=x, y=y)
    prepared = prepare_model(tiny_model, x[:2])
    plan = Plan(
        layers={"conv1": LayerPlan(2, 8), "conv2": LayerPlan(4, 4), "fc": LayerPlan(7, 8)},
        model={"fingerprint": prepared.fingerprint},
    )
    packed = pack_plan(
        prepared, plan, plan_calibration(prepared, plan, data, fp32_reference(prepared, data, 8, Cache(None)), 8)
    )
    result = mpq.export_plan(
        tiny_model, plan, data, tmp_path / "narrow.onnx", format="onnx", cache_dir=False, eval_split=0
    )
    assert "1 layers as INT2, 1 layers as INT4, 1 layers as INT8" in result.summary()
    model = onnx.load(str(tmp_path / "narrow.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 25
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["conv1.weight_codes"].data_type == onnx.TensorProto.INT2
    assert len(inits["conv1.weight_codes"].raw_data) == math.ceil(54 * 2 / 8)
    assert len(inits["conv2.weight_codes"].raw_data) == 54 // 2
    assert onnx.numpy_helper.to_array(inits["conv2.input_qmax"]) == 15
    logits = run_onnx(tmp_path / "narrow.onnx", x, batch_size=8)
    assert torch.allclose(logits, packed_logits(prepared, packed, data, 8), atol=1e-5)
