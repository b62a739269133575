"""Language models verified as LLM users verify them (issue 22, item 4): KL to FP32 per token (mean, 99th and
99.9th percentile), the same top token share and perplexity, for the plan and every baseline; report.md shows
them; uniform baselines slightly over the budget are measured and marked as not fitting. Tiny LLaMA and GPT-2
models built from configs (untrained, with wide initial weights so that their predictions are not uniform)."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mpq
from mpq.cost.layer_cost import model_costs
from mpq.inputs.prepare import as_prepared
from mpq.quant.reference import perplexity
from mpq.solver.problem import Choice
from mpq.verify.measure import packed_for, packed_logits, uniform_plan
from mpq.report.markdown import write_outputs

transformers = pytest.importorskip("transformers")
VOCAB, SEQ = 384, 24


def _lm(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=SEQ, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2
        )
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        initializer_range=0.2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _tokens(samples: int, seed: int, padded: int = 0) -> dict:
    """Random token windows; the last `padded` windows end in padding (attention mask 0)."""
    ids = torch.randint(0, VOCAB, (samples, SEQ), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for i in range(padded):
        mask[samples - 1 - i, SEQ - 5 - i :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_kl_is_the_mean_per_token_with_its_percentiles(kind, tmp_path):
    model = _lm(kind)
    fit, held = _tokens(12, 0), _tokens(10, 1, padded=3)
    fit_data = mpq.Dataset(x=torch.stack(list(fit.values()), 1), input_names=tuple(fit))
    held_data = mpq.Dataset(x=torch.stack(list(held.values()), 1), input_names=tuple(held))
    prepared = as_prepared(mpq.ModelAdapter(model), fit_data)
    plan = uniform_plan(prepared, 4, None)
    report = mpq.verify(
        model, plan, fit, eval_data=held, baseline_bits=(), quantizer="minmax", cache_dir=tmp_path, progress=False
    )

    prepared, packed = packed_for(model, plan, fit_data, 25, tmp_path, "minmax", eval_split=0)
    q = packed_logits(prepared, packed, held_data, 25).double()  # [samples, vocabulary, positions]
    with torch.no_grad():
        p = as_prepared(model, held_data).folded(held_data.x).double()
    keep = held["attention_mask"].bool()
    per_token = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction="none").sum(1)[keep]
    assert keep.sum() == report.plan.n_tokens == 10 * SEQ - (5 + 6 + 7)
    measured = report.plan
    assert measured.kl_to_fp32 == pytest.approx(float(per_token.mean()), rel=1e-5)
    assert measured.kl_to_fp32 < 0.5 * float(per_token.sum() / 10)  # not summed over each window's positions
    assert measured.kl_to_fp32_p99 == pytest.approx(float(np.percentile(per_token.numpy(), 99)), rel=1e-4)
    assert measured.kl_to_fp32_p999 == pytest.approx(float(np.percentile(per_token.numpy(), 99.9)), rel=1e-4)
    assert measured.kl_to_fp32 < measured.kl_to_fp32_p99 < measured.kl_to_fp32_p999 <= float(per_token.max())
    same = (q.argmax(1) == p.argmax(1))[keep].double().mean()
    assert measured.fp32_agreement == pytest.approx(float(same)) and measured.same_top_pct == pytest.approx(100 * same)
    assert measured.perplexity == pytest.approx(perplexity(q, held_data), rel=1e-6)
    metrics = report.to_json()["metrics"]
    assert metrics["kl_to_fp32_p999"] == measured.kl_to_fp32_p999 and metrics["same_top_pct"] == measured.same_top_pct
    w8 = report.to_json()["baselines"][0]
    assert w8["name"] == "uniform W8" and {"kl_to_fp32_p99", "kl_to_fp32_p999", "same_top_pct", "perplexity"} <= set(w8)


def test_report_md_shows_per_token_kl_and_a_larger_uniform_baseline(tmp_path):
    model = _lm("llama")
    data = _tokens(16, 0)
    prepared = as_prepared(model, mpq.Dataset(x=torch.stack(list(data.values()), 1), input_names=tuple(data)))
    layers = prepared.graph.layers
    w4 = model_costs(layers, {lay.name: Choice(4, None) for lay in layers}, prepared.graph.float_bytes)["size_bytes"]
    budget = int(w4 / 1.03)  # uniform W4 misses it by 3%: measured, marked as not fitting
    space = mpq.SearchSpace(bits=(2, 3, 4, 6), act_bits=(None,))
    probes = mpq.ProbeSettings(max_probes=2, min_probes=2)
    result = mpq.search(
        model,
        data,
        f"{budget}B",
        space=space,
        probes=probes,
        quantizer="minmax",
        eval_data=_tokens(8, 1),
        cache_dir=False,
        progress=False,
    )
    baselines = {b.name: b for b in result.report.baselines}
    assert not baselines["uniform W4"].fits_budget and baselines["uniform W4"].size_bytes <= 1.05 * budget
    assert baselines["uniform W3"].fits_budget and "uniform W6" not in baselines
    write_outputs(tmp_path, result.sensitivity, result.plan, result.report)
    text = (tmp_path / "report.md").read_text()
    assert "| same top token | KL mean | KL p99 | KL p99.9 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| uniform W4 |"))
    m = baselines["uniform W4"]
    assert "| no |" in row and f"| {m.kl_to_fp32_p999:.4f} |" in row and f"| {m.perplexity:.3f} |" in row
    assert f"- Slightly over the budget (up to 5%, does not fit): uniform W4" in text
    assert (
        f"Weight format: int weights, scales per output channel; measured size {result.report.plan.size_bytes:,}"
        in text
    )
    assert f"{SEQ * 8:,} tokens" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert [b["fits_budget"] for b in report["baselines"] if b["name"] == "uniform W4"] == [False]
