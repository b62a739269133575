"""Transformers models end to end, built from configs and trained briefly (tests/hf_models.py): a GPT-2-style
causal LM (Conv1D layers, an LM head tied to the token embedding), a LLaMA-style one and a BERT-style encoder
with its default (SDPA) attention; search, verify and every export; the faults a new user meets."""

import copy
import json

import numpy as np
import pytest
import torch

import mpq
from mpq.errors import MpqError
from mpq.export.onnx_qdq import run_onnx
from mpq.inputs.specs import load_data_spec, load_model_spec
from mpq.verify.measure import packed_for, packed_logits
from tests import hf_models
from tests.helpers import run_cli

transformers = pytest.importorskip("transformers")
PROBES = mpq.ProbeSettings(max_probes=4, min_probes=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folders written by save_pretrained (model and tokenizer), and the text they were trained on."""
    root = tmp_path_factory.mktemp("hf")
    text = hf_models.corpus()
    tokenizer = hf_models.train_tokenizer(text)
    windows = hf_models.token_windows(tokenizer, text)
    (root / "train.txt").write_text(text[:40000])
    (root / "held_out.txt").write_text(text[-20000:])
    folders = {
        kind: hf_models.save(hf_models.causal_lm(kind, tokenizer, windows), tokenizer, root / kind)
        for kind in ("gpt2", "llama")
    }
    folders["bert"] = hf_models.save(hf_models.bert_encoder(tokenizer, windows), tokenizer, root / "bert")
    return root, folders


def _text(root, model, name="train.txt", samples=48):
    data = load_data_spec(str(root / name), model=model, seq_len=hf_models.SEQ)
    return mpq.Dataset(x=data.x[:samples], input_names=data.input_names)


def test_gpt2_from_its_folder_through_search_with_text_data(saved, capsys, tmp_path):
    root, folders = saved
    status, out, err = run_cli(
        capsys,
        "search",
        "--model",
        f"hf:{folders['gpt2']}",
        "--data",
        root / "train.txt",
        "--eval-data",
        root / "held_out.txt",
        "--seq-len",
        hf_models.SEQ,
        "--budget",
        "150KB",
        "--max-probes",
        4,
        "--out",
        tmp_path,
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    plan, report = (json.loads((tmp_path / name).read_text()) for name in ("plan.json", "report.json"))
    layers = plan["layers"]
    assert "transformer.h.0.attn.c_attn" in layers and "lm_head" in layers  # Conv1D found, as the Linear it computes
    assert "transformer.wte" not in layers  # the embedding tied to lm_head is that one tensor: one width
    assert report["measured"]["size_bytes"] == plan["predicted"]["size_bytes"] <= 150_000
    assert report["outputs"]["causal_lm"] and report["fp32"]["perplexity"] > 1
    fitting = [b for b in report["baselines"] if b["fits_budget"]]
    assert fitting and all(b["perplexity"] > 1 for b in fitting)
    assert abs(report["metrics"]["perplexity"] - report["fp32"]["perplexity"]) < 0.05 * report["fp32"]["perplexity"]
    assert "perplexity" in (tmp_path / "report.md").read_text()


def test_tied_weights_are_counted_once(saved):
    root, folders = saved
    model = load_model_spec(f"hf:{folders['gpt2']}")
    data = _text(root, model, samples=8)
    prepared = mpq.inputs.prepare.as_prepared(model, data)
    inner = model.inner
    embedding = inner.transformer.wte.weight
    assert inner.lm_head.weight is embedding
    every_tensor_once = sum(p.numel() * 4 for p in inner.parameters())  # parameters() yields a tied tensor once
    quantized = sum(l.params * 4 + l.bias_params * 4 for l in prepared.graph.layers)  # lm_head's weight is the table
    assert prepared.graph.float_bytes == every_tensor_once - quantized
    assert "transformer.wte.weight" not in prepared.graph.float_params


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_every_export_reproduces_the_evaluator(saved, kind, tmp_path):
    root, folders = saved
    model = load_model_spec(f"hf:{folders[kind]}")
    data = _text(root, model)
    budget = {"gpt2": "150KB", "llama": "250KB", "bert": "250KB"}[kind]
    result = mpq.search(model, data, budget, probes=PROBES, cache_dir=False, progress=False)
    prepared, packed = packed_for(model, result.plan, data, 25, False, None)
    evaluator = packed_logits(prepared, packed, data, 25)

    mpq.export_plan(model, result.plan, data, tmp_path / "m.mpqpack", cache_dir=False)
    with torch.no_grad():
        assert torch.equal(
            mpq.load_packed(tmp_path / "m.mpqpack", model.inner)(data.x), evaluator
        )  # token ids, named inputs restored

    exported = mpq.export_plan(model, result.plan, data, tmp_path / "m.onnx", format="onnx", cache_dir=False)
    assert exported.file_bytes == (tmp_path / "m.onnx").stat().st_size
    onnx_logits = run_onnx(tmp_path / "m.onnx", data.x)
    assert (onnx_logits.argmax(1) == evaluator.argmax(1)).float().mean() >= 0.99
    assert float((onnx_logits - evaluator).abs().max()) < 0.05 * float(evaluator.abs().max())

    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_torchao_config

    mpq.export_plan(model, result.plan, data, tmp_path / "m.json", format="torchao", cache_dir=False)
    folded = copy.deepcopy(prepared.folded)
    quantize_(folded, load_torchao_config(tmp_path / "m.json"), filter_fn=None)
    with torch.no_grad():
        torchao_logits = folded(data.x)
    assert torch.equal(torchao_logits, evaluator)  # a tied embedding reads the quantized table too (the file's "tied")


def test_bert_with_default_attention_is_an_encoder_measured_by_cosine(saved):
    root, folders = saved
    model = transformers.BertModel.from_pretrained(folders["bert"])  # SDPA attention: no double backward on CPU
    assert model.config._attn_implementation == "sdpa"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["bert"])
    texts = hf_models.corpus().split("\n\n")[:40]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=hf_models.SEQ, return_tensors="pt")
    labels = torch.arange(40) % 3
    result = mpq.search(model, (encoded, labels), "250KB", probes=PROBES, cache_dir=False, progress=False)
    assert (
        result.sensitivity.loss == "mse"
    )  # hidden states: an output-fidelity loss, never cross-entropy against the labels
    assert result.report.outputs.embeddings and result.report.plan.cosine_to_fp32 > 0.99
    fp32_top1, plan_top1 = result.report.fp32.top1, result.report.plan.top1  # the labels' nearest-class-centroid top-1
    assert fp32_top1 > 1 / 3 and abs(plan_top1 - fp32_top1) <= 0.1
    assert model.config._attn_implementation == "sdpa"  # the user's model is left as it was
    with pytest.raises(MpqError, match="embeddings"):
        mpq.analyze(model, encoded, loss="labels", cache_dir=False, progress=False)
    pooled = mpq.search(
        mpq.ModelAdapter(model, pooling="mean"), encoded, "250KB", probes=PROBES, cache_dir=False, progress=False
    )
    assert pooled.report.fp32.size_bytes == result.report.fp32.size_bytes
    assert set(pooled.plan.layers) == set(result.plan.layers)


def test_named_inputs_from_npz_and_jsonl_records(saved, tmp_path):
    root, folders = saved
    model = load_model_spec(f"hf:{folders['bert']}")
    records = [{"text": t, "label": i % 2} for i, t in enumerate(hf_models.corpus().split("\n\n")[:12])]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    data = load_data_spec(str(tmp_path / "r.jsonl"), model=model, seq_len=16)
    assert data.input_names == ("input_ids", "attention_mask") and data.x.shape == (
        12,
        2,
        16,
    )  # what this tokenizer gives
    assert data.y.tolist() == [i % 2 for i in range(12)]
    np.savez(tmp_path / "ids.npz", input_ids=data.x[:, 0].numpy(), attention_mask=data.x[:, 1].numpy())
    from_npz = load_data_spec(str(tmp_path / "ids.npz"))
    assert from_npz.input_names == ("input_ids", "attention_mask") and torch.equal(from_npz.x, data.x[:, :2])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_weights", "no weights"),
        ("no_tokenizer", "no tokenizer"),
        ("too_long", "longer than the model's maximum of 64"),
        ("not_hf_text", "tokenized with the model's own tokenizer"),
        ("cuda", "cuda"),
    ],
)
def test_hf_faults_exit_2_with_one_line(saved, capsys, tmp_path, case, expected):
    root, folders = saved
    folder = folders["llama"]
    if case == "no_weights":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "config.json").write_text((folders["llama"] / "config.json").read_text())
    if case == "no_tokenizer":
        folder = tmp_path / "bare"
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            (folder / name).write_bytes((folders["llama"] / name).read_bytes())
    model = f"{root / 'user.py'}:net" if case == "not_hf_text" else f"hf:{folder}"
    (root / "user.py").write_text("import torch\nnet = torch.nn.Linear(4, 2)\n")
    seq = {"too_long": ["--seq-len", 65]}.get(case, ["--seq-len", 16])
    device = ["--device", "cuda"] if case == "cuda" else []
    status, out, err = run_cli(
        capsys,
        "search",
        "--model",
        model,
        "--data",
        root / "train.txt",
        *seq,
        *device,
        "--budget",
        "1MB",
        "--out",
        tmp_path / "o",
        "--no-cache",
    )
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("budget", ["4.25bpw", "155KB"])
def test_llama_weight_only_group_wise_plan_beats_every_fitting_uniform_on_held_out_text(
    saved, capsys, tmp_path, budget
):
    """Issue 14's first done-when: a causal LM given only as hf:DIR and text, through a bits-per-weight and a byte budget."""
    root, folders = saved
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"hf:{folders['llama']}",
        "--data",
        root / "train.txt",
        "--eval-data",
        root / "held_out.txt",
        "--seq-len",
        hf_models.SEQ,
        "--budget",
        budget,
        "--group-size",
        32,
        "--act-bits",
        "none",
        "--bits",
        "2,3,4,5,6,8",
        "--max-probes",
        6,
        "--out",
        tmp_path,
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    fitting = [b for b in report["baselines"] if b["fits_budget"]]
    assert fitting and all(b["name"].endswith("g32") for b in fitting)
    assert all(report["metrics"]["perplexity"] <= b["perplexity"] for b in fitting), (report["metrics"], fitting)

    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_intx_config

    model = load_model_spec(f"hf:{folders['llama']}")
    data = _text(root, model, "held_out.txt", samples=16)
    plan = mpq.Plan.load(tmp_path / "plan.json")
    mpq.export_plan(model, plan, _text(root, model), tmp_path / "plan.torchao.json", format="torchao", cache_dir=False)
    expected = mpq.quantize_(model, plan, _text(root, model), cache_dir=False)
    prepared, _ = packed_for(model, plan, _text(root, model), 25, False, None)
    folded = copy.deepcopy(prepared.folded)
    quantize_(folded, load_intx_config(tmp_path / "plan.torchao.json"), filter_fn=None)
    with torch.no_grad():
        assert torch.equal(
            folded(data.x), expected(data.x)
        )  # IntxWeightOnlyConfig(group_size=32) carrying mpq's scales: bit for bit


def test_probing_the_output_leaves_a_training_mode_model_as_it_was():
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)

        def forward(self, x):
            return {"logits": self.bn(self.fc(x))}

    model = DictNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = mpq.inputs.prepare.as_prepared(model, mpq.Dataset(x=torch.randn(8, 4) * 5 + 3))
    assert prepared.outputs.field == "logits" and model.training and model.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BatchNorm statistics updated
