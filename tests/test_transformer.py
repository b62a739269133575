"""A small BERT-like encoder end to end: Linear layers found, label-free traces, mixed widths, fidelity."""

import torch

import mpq
from mpq.graph import prepare_model
from mpq.cost import Choice, model_costs
from tests.user_models import tiny_encoder, torch_encoder

TOKENS = torch.randint(0, 50, (32, 8), generator=torch.Generator().manual_seed(0))


def test_encoder_search_with_label_free_loss_mixes_widths_and_keeps_embeddings_close():
    model = tiny_encoder()
    prepared = prepare_model(model, TOKENS[:2])
    layers = prepared.graph.layers
    assert len(layers) == 12 and {l.kind for l in layers} == {"linear"}
    assert prepared.graph.layer("blocks.0.attn.q").input_shape == (8, 16)  # per token: [seq, dim]
    uniform = lambda bits: model_costs(layers, {l.name: Choice(bits, 8) for l in layers}, prepared.graph.float_bytes)["size_bytes"]
    budget = f"{int((uniform(4) + uniform(8)) / 2)}B"
    result = mpq.search(model, TOKENS, budget=budget, bits=(4, 8), loss="mse", max_probes=12, cache_dir=False, progress=False)
    assert result.sensitivity.loss == "mse"
    widths = [lp.weight_bits for lp in result.plan.layers.values()]
    assert set(widths) == {4, 8}
    assert result.report.plan.size_bytes <= uniform(4) + (uniform(8) - uniform(4)) / 2
    w4 = next(b for b in result.report.baselines if b.name == "uniform W4A8")
    assert result.report.plan.cosine_to_fp32 > 0.99
    assert result.report.plan.cosine_to_fp32 > w4.cosine_to_fp32
    assert TOKENS.dtype == torch.int64  # token ids went through unconverted


def test_multihead_attention_out_proj_is_reported_as_float():
    model = torch_encoder()
    labels = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))
    sensitivity = mpq.analyze(model, (TOKENS, labels), max_probes=3, min_probes=2, cache_dir=False, progress=False)
    assert list(sensitivity.layers) == ["encoder.linear1", "encoder.linear2", "head"]
    plan = mpq.solve(sensitivity, budget="1MB", bits=(8,))
    report = mpq.verify(model, plan, (TOKENS, labels))
    assert any("encoder.self_attn.out_proj" in note for note in report.notes)
    assert report.plan.fp32_agreement >= 0.9
