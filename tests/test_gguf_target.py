"""`mpq search --target gguf` and `mpq export --format gguf` (issue 22) on a tiny LLaMA (rows of 64 weights, which
llama.cpp stores in 32-blocks, and a down projection of 256, a K-quant row) and a tiny GPT-2 (Conv1D layers, a
tied head), built from configs (tests/hf_models.py): the exported file's size is the plan's prediction to the
byte and within the budget, gguf-py reads every tensor back as the evaluator's weight (Q and K rows in llama.cpp's
rotary order), and transformers' GGUF loader reproduces the evaluator's logits."""

import json

import numpy as np
import pytest
import torch

import mpq
from mpq.inputs.specs import load_data_spec, load_model_spec
from mpq.verify.apply import dequantized_weight
from mpq.verify.measure import packed_for, packed_logits
from tests import hf_models
from tests.helpers import run_cli

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
PROBES = mpq.ProbeSettings(max_probes=3, min_probes=2)
BYTE_BUDGET = 200_000


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-target")
    text = hf_models.corpus()
    tokenizer = hf_models.train_tokenizer(text)
    windows = hf_models.token_windows(tokenizer, text)
    (root / "train.txt").write_text(text[:12000])
    (root / "held_out.txt").write_text(text[-6000:])
    folders = {
        "llama": hf_models.save(
            hf_models.causal_lm("llama", tokenizer, windows, steps=60, intermediate_size=256), tokenizer, root / "llama"
        ),
        "gpt2": hf_models.save(hf_models.causal_lm("gpt2", tokenizer, windows, steps=60), tokenizer, root / "gpt2"),
    }
    return root, folders


def _text(root, model, name="train.txt", samples=24):
    data = load_data_spec(str(root / name), model=model, seq_len=hf_models.SEQ)
    return mpq.Dataset(x=data.x[:samples], input_names=data.input_names)


def _rope_order_undone(name: str, rows: np.ndarray, config) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LLaMA Q/K permutation (rows back in transformers' half-split order)."""
    if ".attn_q." not in name and ".attn_k." not in name:
        return rows
    heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _check_file(model, plan, data, path, kind):
    """The file against the evaluator: sizes, every quantized tensor through gguf-py, logits through transformers."""
    assert path.stat().st_size == plan.predicted["size_bytes"]
    prepared, packed = packed_for(model, plan, data, 25, False, None)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    config = model.inner.config
    names = {"lm_head": "output.weight" if kind == "llama" else "token_embd.weight"}
    from mpq.export.gguf_model import gguf_name

    for name, lp in plan.layers.items():
        stored = names.get(name) or gguf_name("llama" if kind == "llama" else "gpt2", f"{name}.weight", False)
        tensor = tensors[stored]
        assert tensor.tensor_type.name == lp.format
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        expected = dequantized_weight(packed, name).numpy()
        assert np.array_equal(_rope_order_undone(stored, values, config), expected), name
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    extra = {"n_positions": config.n_positions} if kind == "gpt2" else {}  # its gpt2 mapping drops n_positions
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **extra
    ).eval()
    evaluator = packed_logits(prepared, packed, data, 25)
    with torch.no_grad():
        logits = loaded(input_ids=data.x[:, 0]).logits.transpose(1, 2)
    assert float((logits - evaluator).abs().max()) < 1e-4 * float(evaluator.abs().max())


def test_llama_through_the_cli_with_a_byte_budget(saved, capsys, tmp_path):
    root, folders = saved
    common = ("--model", f"hf:{folders['llama']}", "--data", root / "train.txt", "--seq-len", hf_models.SEQ)
    status, _, err = run_cli(
        capsys,
        "search",
        *common,
        "--eval-data",
        root / "held_out.txt",
        "--target",
        "gguf",
        "--budget",
        f"{BYTE_BUDGET}B",
        "--max-probes",
        3,
        "--out",
        tmp_path,
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    plan_json = json.loads((tmp_path / "plan.json").read_text())
    formats = {entry["format"] for entry in plan_json["layers"].values()}
    assert formats <= {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "Q5_1"}
    assert {e["format"] for n, e in plan_json["layers"].items() if "down_proj" in n} & {"Q2_K", "Q3_K", "Q4_K", "Q8_0"}
    assert all(e["act_bits"] is None for e in plan_json["layers"].values())
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["measured"]["size_bytes"] == plan_json["predicted"]["size_bytes"] <= BYTE_BUDGET
    out = tmp_path / "model.gguf"
    status, _, err = run_cli(capsys, "export", tmp_path / "plan.json", *common, "--format", "gguf", "--out", out)
    assert status == 0, err
    model = load_model_spec(f"hf:{folders['llama']}")
    _check_file(model, mpq.Plan.load(tmp_path / "plan.json"), _text(root, model), out, "llama")

    # the tokenizer metadata copied from a reference GGUF (here the file itself): the same bytes
    again = tmp_path / "again.gguf"
    status, _, err = run_cli(
        capsys, "export", tmp_path / "plan.json", *common, "--format", "gguf", "--out", again, "--gguf-metadata", out
    )
    assert status == 0, err
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_bits_per_weight_budget_through_the_api(saved, kind, tmp_path):
    root, folders = saved
    model = load_model_spec(f"hf:{folders[kind]}")
    data = _text(root, model)
    result = mpq.search(model, data, "4.5bpw", target="gguf", probes=PROBES, cache_dir=False, progress=False)
    plan = result.plan
    assert plan.quantizer.weight_format == "gguf" and plan.predicted["bits_per_weight"] <= 4.5
    assert plan.settings.space.bits == (2, 3, 4, 5, 6, 8)
    exported = mpq.export_plan(model, plan, data, tmp_path / "m.gguf", format="gguf", cache_dir=False)
    assert exported.file_bytes == exported.counted_bytes == plan.predicted["size_bytes"]
    assert result.report.plan.size_bytes == plan.predicted["size_bytes"]
    verified = mpq.verify(model, plan, data, cache_dir=False, progress=False)  # `mpq verify` counts the file too
    assert verified.plan.size_bytes == plan.predicted["size_bytes"]
    _check_file(model, plan, data, tmp_path / "m.gguf", kind)
    assert mpq.Plan.from_json(plan.to_json()).layers == plan.layers  # "format" round-trips


def _smollm2_like(tmp_path):
    """A GGUF file whose tokenizer has another vocabulary size than the tiny models'."""
    from gguf.gguf_writer import GGUFValue

    from mpq.export.gguf_file import GGUFTensor, write_gguf
    from mpq.quant.gguf import GGMLType

    path = tmp_path / "other.gguf"
    tokens = GGUFValue(["a", "b"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    write_gguf(
        path, "llama", [GGUFTensor("x", GGMLType.F32, (8,), np.zeros(32, np.uint8))], {"tokenizer.ggml.tokens": tokens}
    )
    return path


def test_what_the_gguf_target_refuses(saved, tmp_path):
    root, folders = saved
    model = load_model_spec(f"hf:{folders['gpt2']}")
    data = _text(root, model, samples=8)
    with pytest.raises(mpq.MpqError, match="leave out --group-size"):
        mpq.search(model, data, "4.5bpw", target="gguf", quantizer=mpq.Quantizer(group_size=32))
    with pytest.raises(mpq.MpqError, match="no 7-bit type"):
        mpq.search(model, data, "4.5bpw", target="gguf", space=mpq.SearchSpace(bits=(4, 7)))
    with pytest.raises(mpq.MpqError, match="unknown target"):
        mpq.search(model, data, "4.5bpw", target="onnx")
    with pytest.raises(mpq.MpqError, match="tokens and the model"):  # before the sensitivity work
        mpq.search(model, data, "4.5bpw", target="gguf", gguf_metadata=_smollm2_like(tmp_path))
    from tests.user_models import group_net

    with pytest.raises(mpq.MpqError, match="writes LLaMA-family and GPT-2 causal LMs"):
        mpq.search(group_net(), torch.randn(8, 3, 8, 8), "4.5bpw", target="gguf", cache_dir=False)
    settings = mpq.PlanSettings(quantizer=mpq.Quantizer(weight_format="gguf"))
    plan = mpq.Plan(layers={"lm_head": mpq.LayerPlan(8, None)}, settings=settings)
    with pytest.raises(mpq.MpqError, match="export it with --format gguf"):
        mpq.export_plan(model, plan, data, tmp_path / "m.onnx", format="onnx", cache_dir=False)
    with pytest.raises(mpq.MpqError, match="search with --target gguf"):
        mpq.export_plan(
            model,
            mpq.Plan(layers={"lm_head": mpq.LayerPlan(8, None)}),
            data,
            tmp_path / "m.gguf",
            format="gguf",
            cache_dir=False,
        )
