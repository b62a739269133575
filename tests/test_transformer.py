"""A small BERT-like encoder end to end: Linear layers found, label-free traces, mixed widths, fidelity."""

import numpy as np
import torch
from torch.func import functional_call
from torch.nn import functional as F

import mpq
from mpq.cost.layer_cost import Choice, model_costs
from mpq.inputs.graph import prepare_model
from mpq.sensitivity.hessian import hutchinson_traces
from mpq.sensitivity.settings import ProbeSettings
from tests.user_models import tiny_encoder, torch_encoder

TOKENS = torch.randint(0, 50, (32, 8), generator=torch.Generator().manual_seed(0))


def test_encoder_search_with_label_free_loss_mixes_widths_and_keeps_embeddings_close():
    model = tiny_encoder()
    prepared = prepare_model(model, TOKENS[:2])
    layers = prepared.graph.layers
    assert len(layers) == 12 and {l.kind for l in layers} == {"linear"}
    assert prepared.graph.layer("blocks.0.attn.q").input_shape == (8, 16)  # per token: [seq, dim]
    uniform = lambda bits: model_costs(layers, {l.name: Choice(bits, 8) for l in layers}, prepared.graph.float_bytes)[
        "size_bytes"
    ]
    budget = f"{int((uniform(4) + uniform(8)) / 2)}B"
    result = mpq.search(
        model, TOKENS, budget=budget, bits=(4, 8), loss="mse", max_probes=12, cache_dir=False, progress=False
    )
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


def test_embedding_trace_matches_the_exact_hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    ids = torch.randint(0, 10, (16, 3), generator=torch.Generator().manual_seed(1))
    target = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    weight = model[0].weight.detach()

    def loss(w):
        return F.mse_loss(functional_call(model, {"0.weight": w}, (ids,)), target)

    exact = torch.autograd.functional.hessian(loss, weight).reshape(40, 40)
    settings = ProbeSettings(tol=0.01, max_probes=300, batch_size=16, seed=0)
    traces = hutchinson_traces(model, ["0"], ids, target, settings, progress=False, loss_fn=F.mse_loss)
    assert abs(traces.trace[0] - float(torch.trace(exact))) <= 3 * traces.stderr[0]
    rows = torch.diagonal(exact).reshape(10, 4).sum(dim=1).numpy()
    assert np.all(np.abs(traces.channel_trace[0] - rows) <= 3 * traces.channel_stderr[0] + 1e-9)


def test_quantized_embeddings_are_packed_per_row_and_measured_as_predicted():
    model = tiny_encoder()
    result = mpq.search(
        model,
        TOKENS,
        budget="7KB",
        bits=(2, 4, 8),
        loss="mse",
        quantize_embeddings=True,
        max_probes=8,
        cache_dir=False,
        progress=False,
    )
    tokens = result.plan.layers["tokens"]
    assert tokens.act_bits is None and tokens.weight_bits in (2, 4, 8)
    assert result.sensitivity.layers["tokens"].layer.kind == "embedding"
    assert result.report.plan.size_bytes == result.plan.predicted["size_bytes"] <= 7000
    assert result.report.plan.cosine_to_fp32 > 0.99
    report = mpq.verify(model, result.plan, TOKENS, cache_dir=False)  # a saved plan knows its embeddings
    assert report.plan.size_bytes == result.report.plan.size_bytes


def test_user_model_is_left_as_it_was():
    model = tiny_encoder().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mpq.search(
        model,
        TOKENS,
        budget="7KB",
        bits=(2, 4, 8),
        loss="mse",
        quantize_embeddings=True,
        max_probes=3,
        cache_dir=False,
        progress=False,
    )
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
