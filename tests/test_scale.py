"""Issue 23: memory bounded by the model and cost linear in it for the default metric. Layer changes made when
needed give the numbers of a table of them; a language model's batches are cut by their logits' size; the FP32
reference logits are cached as binary .npy; no bias-shift pass without biases; kl_anchored measures a few layers
per role of a causal LM and interpolates the rest; two torchrun ranks give one process's Omega."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.prepare import as_dataset, as_prepared
from mpq.inputs.specs import load_data_spec, load_model_spec
from mpq.quant.calibration import bias_shifts, weight_clip_ratios
from mpq.quant.reference import fp32_reference
from mpq.sensitivity.anchor import anchored_layers, role_and_depth, spread_ratios
from mpq.sensitivity.kl_quadratic import LayerDeltas, _chunks, kl_quadratic_omegas, parameter_deltas
from tests.helpers import USER_MODELS, mlp_data

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


class TokenLM(nn.Module):
    """embedding -> linear -> tanh -> linear to the vocabulary, logits as [batch, vocab, positions]."""

    def __init__(self, vocab: int = 11, dim: int = 6, bias: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim, bias=bias)
        self.head = nn.Linear(dim, vocab, bias=bias)

    def forward(self, ids):
        return self.head(torch.tanh(self.hidden(self.embed(ids)))).transpose(1, 2)


def test_layer_changes_made_when_asked_give_the_numbers_of_a_table_of_them():
    torch.manual_seed(0)
    model, x = TokenLM().eval(), torch.randint(0, 11, (10, 5))
    names, bits = ["hidden", "head"], (3, 6)
    table = {n: parameter_deltas(model.get_submodule(n), bits, None, None) for n in names}
    made = []

    def of(name, widths):
        made.append(name)
        return {b: table[name][b] for b in widths}

    whole = kl_quadratic_omegas(model, x, table, batch_size=4, draws=3, seed=2)
    lazily = kl_quadratic_omegas(model, x, LayerDeltas(names, bits, of, keep_bytes=0), batch_size=4, draws=3, seed=2)
    assert made == names * 3  # kept nothing: made again for each of the 3 batches, one layer at a time
    for n in names:
        for b in bits:
            assert lazily.omega[n][b] == pytest.approx(whole.omega[n][b], rel=1e-12)
            np.testing.assert_allclose(lazily.channel_omega[n][b], whole.channel_omega[n][b], rtol=1e-12)


def test_a_batch_whose_logits_pass_the_limit_is_cut():
    assert _chunks(10, 4, 1000) == [(0, 4), (4, 8), (8, 10)]  # small logits: the batches asked for
    assert _chunks(5, 4, 50_000 * 128) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # a vocabulary × positions


def test_reference_logits_are_cached_as_binary_npy_and_read_back_the_same(tmp_path):
    torch.manual_seed(0)
    data = as_dataset(torch.randint(0, 11, (6, 5)))
    prepared = as_prepared(TokenLM().eval(), data)
    cache = Cache(tmp_path)
    first = fp32_reference(prepared, data, 4, cache)
    arrays = list(tmp_path.glob("fp32-logits-*.npy"))
    assert len(arrays) == 1 and arrays[0].stat().st_size < first.logits.numel() * 4 + 200
    (entry,) = tmp_path.glob("fp32-*.json")
    assert "logits" not in json.loads(entry.read_text())
    again = fp32_reference(prepared, data, 4, cache)
    assert torch.equal(again.logits, first.logits) and again.input_ranges == first.input_ranges
    assert {f.kind for f in cache.files()} == {"fp32", "fp32-logits"}  # the cap counts the binary entry


def test_no_bias_shift_pass_when_no_layer_has_a_bias():
    model = TokenLM(bias=False).eval()
    prepared = as_prepared(model, as_dataset(torch.randint(0, 11, (2, 5))))
    ratios = weight_clip_ratios(prepared, "mse")
    unusable = Dataset(x=torch.zeros(3, 2, 2, 2), y=None, description="images the model cannot read")
    assert bias_shifts(prepared, unusable, ratios, "mse", 4) == {}  # a pass over these would raise


def test_a_few_layers_per_role_are_anchored_and_the_rest_interpolated_in_depth():
    names = [f"model.layers.{i}.mlp.{k}" for i in range(10) for k in ("up_proj", "down_proj")] + ["lm_head"]
    assert role_and_depth("model.layers.12.self_attn.q_proj") == ("model.layers.#.self_attn.q_proj", 12)
    chosen = anchored_layers(names)
    assert chosen == [f"model.layers.{i}.mlp.{k}" for i in (0, 4, 9) for k in ("up_proj", "down_proj")] + ["lm_head"]
    measured = {n: 1.0 for n in chosen} | {"model.layers.4.mlp.up_proj": 4.0, "model.layers.9.mlp.up_proj": 16.0}
    ratios = spread_ratios(names, measured)
    assert ratios["model.layers.2.mlp.up_proj"] == pytest.approx(2.0)  # halfway from 1 to 4, in log
    assert ratios["model.layers.7.mlp.up_proj"] == pytest.approx(4.0 * 4.0 ** (3 / 5))
    assert ratios["model.layers.5.mlp.down_proj"] == pytest.approx(1.0) and ratios["lm_head"] == 1.0


def tiny_llama(blocks: int):
    """A seeded LLaMA of `blocks` blocks, 32 wide, vocabulary 64 (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=blocks, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=64, max_position_embeddings=16,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_kl_anchored_on_a_causal_lm_measures_three_layers_per_role():
    data = {"input_ids": torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))}
    s = mpq.analyze(tiny_llama(5), data, metric="kl_anchored", cache_dir=False, progress=False)
    anchored = [n for n, layer in s.layers.items() if "anchor_kl" in layer.details]
    assert len(s.layers) == 36 and len(anchored) == 7 * 3 + 1  # 7 roles in 3 of the 5 blocks, and the head
    assert all(layer.details["anchor_ratio"] > 0 for layer in s.layers.values())


def test_two_ranks_under_torchrun_give_the_default_metrics_omega_of_one_process(tmp_path):
    data = mlp_data(tmp_path / "d.npz", n=40)
    args = ["--model", f"{USER_MODELS}:mlp", "--data", str(data), "--batch-size", "6", "--anchor-samples", "16"]
    command = [TORCHRUN, "--nproc-per-node", "2", "-m", "mpq.cli.main", "sensitivity", *args, "--json", "--quiet"]
    command += ["--cache-dir", str(tmp_path / "cache")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # one JSON document: only rank 0 printed
    one = mpq.analyze(
        load_model_spec(f"{USER_MODELS}:mlp"),
        load_data_spec(str(data)),
        probes=mpq.ProbeSettings(batch_size=6, anchor_samples=16),
        cache_dir=False,
        progress=False,
    )
    assert result["metric"] == one.metric == "kl_anchored"
    for name, layer in one.layers.items():
        for b, value in layer.omega_table.items():
            # float32 logits of other batch compositions: a relative 1e-6 in the anchors' KL
            assert result["layers"][name]["omega"][str(b)] == pytest.approx(value, rel=1e-5)


def test_report_gives_the_peak_memory_of_each_phase(tmp_path):
    data = load_data_spec(str(mlp_data(tmp_path / "d.npz", n=40)))
    model = load_model_spec(f"{USER_MODELS}:mlp")
    report = mpq.search(model, data, budget="1KB", cache_dir=False, progress=False).report
    peaks = report.to_json()["peak_memory_bytes"]
    assert set(peaks["phases"]) == {"prepare", "sensitivity", "solve", "verify"}
    assert all(0 < phase["ram"] <= peaks["ram"] for phase in peaks["phases"].values())


def test_the_mse_form_is_the_mean_squared_output_change_of_a_linear_network():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5)).eval(), torch.randn(16, 6)
    table = {n: parameter_deltas(model.get_submodule(n), (3,), None, None) for n in ("0", "1")}
    found = kl_quadratic_omegas(model, x, table, batch_size=8, draws=600, seed=1, form="mse")
    for name, deltas in table.items():
        changed = {f"{name}.{k}": getattr(model.get_submodule(name), k) + v for k, v in deltas[3].items()}
        with torch.no_grad():
            exact = (torch.func.functional_call(model, changed, (x,)) - model(x)).pow(2).mean()
        assert found.omega[name][3] == pytest.approx(float(exact), rel=0.1)


def test_a_non_softmax_loss_defaults_to_mse_anchored_not_to_per_layer_probing():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 5)).eval(), torch.randn(40, 6)
    s = mpq.analyze(model, x, loss="mse", cache_dir=False, progress=False)
    assert s.metric == "mse_anchored"
    for layer in s.layers.values():  # a linear network: the measured MSE is the quadratic term itself
        assert 0.5 < layer.details["anchor_ratio"] < 2.0
        assert layer.omega_table[4] > layer.omega_table[8] > 0


def test_an_hf_model_mpq_loaded_is_prepared_in_place_and_searched(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from mpq.inputs.huggingface import load_pretrained

    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=16)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    data = {"input_ids": torch.randint(0, 64, (12, 8), generator=torch.Generator().manual_seed(1))}
    loaded = load_pretrained(tmp_path / "gpt2")
    prepared = as_prepared(loaded, as_dataset(data))
    assert prepared.folded.inner is loaded.inner  # one copy of the weights: GPT-2's Conv1D made nn.Linear in place
    assert isinstance(loaded.inner.transformer.h[0].attn.c_attn, nn.Linear)
    result = mpq.search(loaded, data, "6bpw", cache_dir=False, progress=False)
    assert result.sensitivity.metric == "kl_anchored" and result.report.plan.fits_budget


def test_a_slow_formats_quantized_tensors_are_kept_and_give_the_formats_own_changes():
    """GGUF's K-quant searches run once per layer and width, not once per batch: the context keeps each quantized
    tensor (compact block bytes) and its changes are those the format's fake_quantize gives."""
    from mpq.quant.formats import weight_format
    from mpq.quant.quantizer import Quantizer
    from mpq.sensitivity.analysis import analysis_context
    from mpq.sensitivity.losses import resolve_loss
    from mpq.sensitivity.registry import metric_of

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 32, bias=False), nn.ReLU(), nn.Linear(32, 4, bias=False)).eval()
    data = as_dataset(torch.randn(8, 256))
    prepared = as_prepared(model, data)
    quantizer = Quantizer(weight_format="gguf", weight_clip="minmax", bias_correction=False)
    args = (prepared, data, mpq.ProbeSettings(), Cache(None), False, resolve_loss("fp32", False))
    context = analysis_context(*args, metric_of("kl_anchored"), quantizer)
    first = context.deltas("0", (2, 4))
    assert set(context._quantized) == {("0", 2), ("0", 4)}
    kept = {key: q.data.nbytes for key, q in context._quantized.items()}
    assert kept == {("0", 2): 32 * 84, ("0", 4): 32 * 144}  # Q2_K and Q4_K blocks of one 256-weight row each
    again = context.deltas("0", (2, 4))
    fmt = weight_format("gguf")
    for b in (2, 4):
        assert torch.equal(first[b]["weight"], again[b]["weight"])
        expected = fmt.fake_quantize(model[0].weight, b) - model[0].weight
        assert torch.equal(first[b]["weight"], expected)


def test_verification_takes_a_language_models_logits_a_few_samples_at_a_time(monkeypatch):
    """Float64 copies of a whole batch of an LLM's logits took GBs: the next-token NLL and the comparison with FP32
    run on batches of at most MAX_LOGIT_ELEMENTS logits, with the same numbers."""
    import mpq.quant.reference as reference
    from mpq.verify.tokens import compare

    torch.manual_seed(0)
    model, ids = TokenLM(vocab=50).eval(), torch.randint(0, 50, (6, 9))
    data = as_dataset(ids)
    prepared = as_prepared(model, data)
    with torch.no_grad():
        fp32 = prepared.folded(ids).float()
        noisy = fp32 + 0.1 * torch.randn_like(fp32)
    whole_nll = reference.next_token_nll(noisy, ids, None)
    whole = compare(lambda x: prepared.folded(x) * 1.5, data, fp32, 25, prepared)
    monkeypatch.setattr(reference, "MAX_LOGIT_ELEMENTS", 50 * 9)  # one sample's logits per batch
    assert reference.logit_batch(25, 50 * 9) == 1 and reference.logit_batch(25, 10) == 25
    assert torch.equal(reference.next_token_nll(noisy, ids, None), whole_nll)
    one_by_one = compare(lambda x: prepared.folded(x) * 1.5, data, fp32, 25, prepared)
    assert (
        len(whole.kl) == 6 * 9 and whole.kl.min() > 0 and torch.allclose(one_by_one.kl, whole.kl, rtol=1e-5, atol=1e-9)
    )
    assert torch.equal(one_by_one.same_top, whole.same_top)


def test_blocks_before_a_layer_are_replayed_not_computed_and_give_the_same_errors():
    from mpq.sensitivity.output_error import weight_output_errors

    ids = torch.randint(0, 64, (6, 8), generator=torch.Generator().manual_seed(1))
    data = as_dataset({"input_ids": ids})
    model, x = as_prepared(tiny_llama(4), data).folded, data.x
    names = ["model.layers.0.mlp.down_proj", "model.layers.2.self_attn.v_proj", "model.layers.3.mlp.up_proj", "lm_head"]
    calls = {i: 0 for i in range(4)}
    for i, block in enumerate(model.get_submodule("model.layers")):
        block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    whole = weight_output_errors(model, names, x, (3,), batch_size=4)
    before = dict(calls)
    replayed = weight_output_errors(model, names, x, (3,), batch_size=4, replay_blocks=True)
    for name in names:
        assert replayed[name][3].kl == pytest.approx(whole[name][3].kl, rel=1e-6) and whole[name][3].kl > 0
    # whole: 2 batches per layer and the reference; replayed: block 0 runs for the reference, layers.0, lm_head (in
    # no block) and the recordings for blocks 2 and 3 (passes stopped at blocks 1 and 2), not for layers.2 or layers.3
    assert before[0] == 2 * (len(names) + 1)
    assert calls[0] - before[0] == 2 + 2 + 2 + 2 * 2
    assert model.get_submodule("model.layers.0") is not None and all(
        type(b).__name__ == "LlamaDecoderLayer" for b in model.get_submodule("model.layers")
    )


def test_a_layer_taken_one_width_at_a_time_gives_the_omega_of_all_widths_at_once(monkeypatch):
    import mpq.sensitivity.kl_quadratic as kl

    torch.manual_seed(0)
    model, x = TokenLM(bias=False).eval(), torch.randint(0, 11, (10, 5))
    names, bits = ["hidden", "head"], (3, 6)
    table = {n: parameter_deltas(model.get_submodule(n), bits, None, None) for n in names}
    made = []

    def of(name, widths):
        made.append(widths)
        return {b: table[name][b] for b in widths}

    together = kl_quadratic_omegas(model, x, LayerDeltas(names, bits, of, keep_bytes=0), batch_size=4, seed=2)
    assert set(made) == {bits}
    monkeypatch.setattr(kl, "WIDTH_AT_A_TIME_BYTES", 0)
    made.clear()
    apart = kl_quadratic_omegas(model, x, LayerDeltas(names, bits, of, keep_bytes=0), batch_size=4, seed=2)
    assert set(made) == {(3,), (6,)}
    for n in names:
        for b in bits:
            assert apart.omega[n][b] == pytest.approx(together.omega[n][b], rel=1e-5) and together.omega[n][b] > 0


def test_a_batch_whose_captured_activations_pass_the_limit_is_cut(monkeypatch):
    import mpq.sensitivity.kl_quadratic as kl

    torch.manual_seed(0)
    model, x = TokenLM().eval(), torch.randint(0, 11, (10, 5))
    table = {n: parameter_deltas(model.get_submodule(n), (4,), None, None) for n in ("hidden", "head")}
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    kl_quadratic_omegas(model, x, table, batch_size=4, draws=1)
    assert sizes == [1, 4, 4, 2]  # one sample measured first
    sizes.clear()
    monkeypatch.setattr(kl, "CAPTURE_BYTES", 500)  # under one sample's 580 bytes (4 × 145 floats): one at a time
    kl_quadratic_omegas(model, x, table, batch_size=4, draws=1)
    assert sizes == [1] * 11
