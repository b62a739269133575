"""--target compressed-tensors (issue 22): the format's packing is compressed-tensors' own bit for bit, the solver
gives vLLM's fused layers one scheme, the plan's predicted size is the exported model.safetensors' size to the
byte, and transformers' compressed-tensors loader reproduces the evaluator's logits. A tiny LLaMA built from a
config (tests/test_llm_metrics.py)."""

import json

import pytest
import torch

import mpq
from mpq.errors import MpqError
from mpq.quant.formats import weight_format
from mpq.quant.formats.compressed_tensors import pack_codes, unpack_codes
from mpq.verify.apply import dequantized_weight
from mpq.verify.measure import packed_for, packed_logits
from tests.test_llm_metrics import _lm, _tokens

transformers = pytest.importorskip("transformers")
helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
QUANTIZER = mpq.Quantizer(act_observer="minmax", weight_clip="minmax", bias_correction=False, group_size=32)


def _dataset(tokens: dict) -> mpq.Dataset:
    return mpq.Dataset(x=torch.stack(list(tokens.values()), 1), input_names=tuple(tokens))


@pytest.mark.parametrize("bits", range(2, 9))
def test_codes_are_packed_as_compressed_tensors_packs_them(bits):
    for n in (32, 64, 70, 576):
        codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (3, n), dtype=torch.int8)
        packed = pack_codes(codes, bits)
        assert torch.equal(packed, helpers.pack_to_int32(codes, bits))
        assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_bytes_scales_and_fused_layers():
    fmt = weight_format("compressed-tensors", 32)
    weight = torch.randn(8, 64)
    q = fmt.quantize(weight, [4] * 8)
    stored = fmt.packed_tensors(q)
    assert stored["weight_scale"].dtype == torch.bfloat16 and stored["weight_scale"].shape == (8, 2)
    assert fmt.weight_bytes(64, 8, 4) == sum(t.numel() * t.element_size() for t in stored.values()) == 8 * 32 + 32
    assert torch.equal(fmt.unpacked_weight(stored, [8, 64], 4), q.dequantize())
    assert torch.equal(q.scale, stored["weight_scale"].float())  # the scales the file holds
    names = [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj")]
    assert fmt.fused_groups(names + ["model.layers.0.mlp.gate_proj", "lm_head"]) == [
        names[:3],
        ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.gate_proj"],
    ]
    assert weight_format("compressed-tensors-fp16").stored_scale(torch.ones(2)).dtype == torch.float16
    with pytest.raises(MpqError, match="multiple of --group-size 128"):
        weight_format("compressed-tensors", 128).check_rows("x", 576)


@pytest.fixture(scope="module")
def searched():
    model, data, held = _lm("llama"), _tokens(16, 0), _tokens(8, 1)
    result = mpq.search(
        model,
        data,
        "175KB",
        quantizer=QUANTIZER,
        target="compressed-tensors",
        eval_data=held,
        probes=mpq.ProbeSettings(max_probes=2, min_probes=2),
        cache_dir=False,
        progress=False,
    )
    return model, data, held, result


def test_the_exported_folder_is_the_plan_and_loads_in_transformers(searched, tmp_path):
    model, data, held, result = searched
    plan, report = result.plan, result.report
    widths = {name: lp.weight_bits for name, lp in plan.layers.items()}
    for block in (0, 1):
        attn, mlp = f"model.layers.{block}.self_attn.", f"model.layers.{block}.mlp."
        assert widths[attn + "q_proj"] == widths[attn + "k_proj"] == widths[attn + "v_proj"]
        assert widths[mlp + "gate_proj"] == widths[mlp + "up_proj"]
    assert plan.layers["lm_head"].format == f"int{widths['lm_head']}-g32-sym"
    written = mpq.export_plan(model, plan, data, tmp_path, format="compressed-tensors", cache_dir=False)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size == written.file_bytes == plan.predicted.size_bytes == report.plan.size_bytes <= 175_000
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    schemes = {g["weights"]["num_bits"]: g for g in config["config_groups"].values()}
    assert set(schemes) == set(widths.values()) and config["format"] == "pack-quantized"
    assert {"strategy": "group", "group_size": 32, "symmetric": True}.items() <= schemes[widths["lm_head"]][
        "weights"
    ].items()

    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    prepared, packed = packed_for(model, plan, _dataset(data), 25, False, None)
    evaluator = packed_logits(prepared, packed, _dataset(held), 25)
    with torch.no_grad():
        logits = loaded(**held).logits.transpose(1, 2)  # the first forward decompresses the weights
    assert float((logits - evaluator).abs().max()) < 1e-5 * float(evaluator.abs().max())
    for name in plan.layers:
        assert torch.equal(loaded.get_submodule(name).weight, dequantized_weight(packed, name))


def test_refusals(searched, tmp_path):
    model, data, _, result = searched
    with pytest.raises(MpqError, match="--format compressed-tensors"):
        mpq.export_plan(model, result.plan, data, tmp_path / "m.onnx", format="onnx", cache_dir=False)
    with pytest.raises(MpqError, match="multiple of --group-size 128"):
        mpq.search(model, data, "175KB", quantizer=mpq.Quantizer(group_size=128), target="compressed-tensors")
    gpt2 = _lm("gpt2")
    with pytest.raises(MpqError, match="nn.Linear layers"):
        mpq.search(gpt2, data, "175KB", target="compressed-tensors", cache_dir=False, progress=False)
