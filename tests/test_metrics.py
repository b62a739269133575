"""Sensitivity metrics and activation sensitivity against exact computations on tiny models:
Hessians from torch.autograd.functional.hessian, per-sample gradients, eigvalsh, direct measurements,
and PyHessian's whole-model trace."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import mpq
from mpq.cache import Cache
from mpq.inputs.graph import LayerInfo, prepare_model
from mpq.quant.affine import MinMaxObserver, fake_quantize_weight
from mpq.quant.calibration import calibrate
from mpq.quant.quantizer import Quantizer
from mpq.quant.reference import fp32_reference
from mpq.sensitivity import LayerSensitivity, Sensitivity
from mpq.sensitivity.activation import ActivationSensitivity, input_groups, perturbed_inputs
from mpq.sensitivity.estimates import LayerEstimate, Trace
from mpq.sensitivity.hessian import hutchinson_traces
from mpq.sensitivity.settings import ProbeSettings
from tests.helpers import USER_MODELS, mlp_data, run_cli
from tests.test_act_ties import ResBlockNet
from tests.user_models import mlp


def exact_hessian(
    model: nn.Module, param: str, x: torch.Tensor, target: torch.Tensor, loss_fn=F.cross_entropy
) -> torch.Tensor:
    """The Hessian of loss_fn(model(x), target) w.r.t. one named parameter, flattened to [n, n]."""
    value = model.get_parameter(param).detach()

    def loss(p):
        return loss_fn(functional_call(model, {param: p}, (x,)), target)

    return torch.autograd.functional.hessian(loss, value, vectorize=True).reshape(value.numel(), value.numel())


@pytest.fixture
def mlp_xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)


def test_input_traces_match_exact_hessian_of_the_input_perturbation(tiny_model, tiny_data):
    x, y = tiny_data[0][:8], tiny_data[1][:8]
    prepared = prepare_model(tiny_model, x[:2])
    groups = input_groups(prepared.graph.layers, prepared.graph.act_tie_groups)
    shapes = [prepared.graph.by_name[g[0]].input_shape for g in groups]
    assert groups == [["conv1"], ["conv2"], ["fc"]] and shapes == [(2, 6, 6), (3, 6, 6), (8,)]
    settings = ProbeSettings(tol=0.01, min_probes=8, max_probes=600, batch_size=len(x), seed=1)
    with perturbed_inputs(prepared.folded, groups, shapes) as wrapper:
        traces = hutchinson_traces(wrapper, wrapper.names, x, y, settings, progress=False)
        exact = [float(torch.trace(exact_hessian(wrapper, f"{name}.weight", x, y))) for name in wrapper.names]
    for g, name in enumerate(wrapper.names):
        assert abs(traces.trace[g] - exact[g]) <= 3 * traces.stderr[g], (
            name,
            traces.trace[g],
            exact[g],
            traces.stderr[g],
        )
    # the perturbation shared by the batch has the trace of the Hessian w.r.t. the batched input itself:
    # Tr ∇²_δ L = (1/B) Σ_i Tr ∇²_{x_i} loss_i = Tr ∇²_x L
    model_input = torch.autograd.functional.hessian(
        lambda inp: F.cross_entropy(prepared.folded(inp), y), x, vectorize=True
    )
    assert exact[0] == pytest.approx(float(torch.trace(model_input.reshape(x.numel(), x.numel()))), rel=1e-5)
    assert not prepared.folded._forward_pre_hooks and not prepared.folded.conv2._forward_pre_hooks  # hooks removed


def test_layers_reading_one_tensor_share_one_input_trace_and_split_its_omega():
    torch.manual_seed(0)
    model = ResBlockNet().eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 4, 4, generator=g), torch.randint(0, 5, (6,), generator=g)
    sens = mpq.analyze(
        model, (x, y), activations=True, tol=0.02, max_probes=200, batch_size=len(x), cache_dir=False, progress=False
    )
    conv1, down = sens.layers["conv1"].activation, sens.layers["downsample.0"].activation
    assert conv1.group == ["conv1", "downsample.0"] and conv1.trace == down.trace
    folded = prepare_model(model, x[:2]).folded

    def loss(d):  # ResBlockNet's forward on the folded copy, d added to the tensor conv1 and downsample read
        h = torch.relu(folded.stem(x)) + d
        out = folded.conv2(torch.relu(folded.conv1(h)))
        return F.cross_entropy(folded.fc(torch.relu(out + folded.downsample(h)).mean(dim=(2, 3))), y)

    exact = float(
        torch.trace(torch.autograd.functional.hessian(loss, torch.zeros(8, 4, 4), vectorize=True).reshape(128, 128))
    )
    assert abs(conv1.trace - exact) <= 3 * conv1.trace_stderr, (conv1.trace, exact, conv1.trace_stderr)
    whole = conv1.trace / conv1.elements * conv1.quant_error[4]
    assert sens.layers["conv1"].act_omega(4) + sens.layers["downsample.0"].act_omega(4) == pytest.approx(whole)


@pytest.mark.parametrize("probing", ["per-layer", "all-layers"])
def test_channel_traces_of_a_linear_network_match_exact_blocks(mlp_xy, probing):
    x, y = mlp_xy
    prepared = prepare_model(mlp(), x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    # at least 64 probes: the tolerance is on layer traces, and a channel's standard error estimated from
    # a handful of probes is itself too uncertain for a 3-standard-error check. 14 channels are checked at
    # 3 standard errors each; with seed 2 one channel of per-layer probing lies at 3.3 (seeds 0-4 give the
    # head's trace within 1.9 standard errors), so the seed is 0.
    settings = ProbeSettings(tol=0.01, min_probes=64, max_probes=400, batch_size=len(x), seed=0, probing=probing)
    traces = hutchinson_traces(prepared.folded, names, x, y, settings, progress=False)
    for i, name in enumerate(names):
        block = exact_hessian(prepared.folded, f"{name}.weight", x, y)
        per_channel = torch.diagonal(block).reshape(prepared.graph.layers[i].out_channels, -1).sum(dim=1).numpy()
        assert np.all(np.abs(traces.channel_trace[i] - per_channel) <= 3 * traces.channel_stderr[i] + 1e-9), (
            name,
            traces.channel_trace[i],
            per_channel,
        )


def test_default_tolerance_leaves_every_standard_error_under_ten_percent(mlp_xy):
    sens = mpq.analyze(
        mlp(), mlp_xy, loss="mse", metric="hessian", max_probes=1000, cache_dir=False, progress=False
    )  # tol 0.05, batches of 8
    assert sens.stop_reason == "tolerance"
    for s in sens.layers.values():
        assert 0 < s.hessian_trace_stderr < 0.1 * s.hessian_trace


def test_sum_over_layers_agrees_with_pyhessian_whole_model_trace(tiny_model, tiny_data):
    pyhessian = pytest.importorskip("pyhessian")
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    settings = ProbeSettings(tol=0.01, min_probes=8, max_probes=400, batch_size=len(x), seed=4)
    traces = hutchinson_traces(prepared.folded, names, x, y, settings, progress=False)
    only_weights = copy.deepcopy(prepared.folded)  # PyHessian differentiates every parameter that requires grad
    for name, p in only_weights.named_parameters():
        p.requires_grad_(name in {f"{n}.weight" for n in names})
    torch.manual_seed(5)  # PyHessian's probes come from torch's global generator
    probes = np.array(
        pyhessian.hessian(only_weights, nn.CrossEntropyLoss(), data=(x, y), cuda=False).trace(maxIter=400, tol=0.0)
    )
    assert len(probes) == 400
    theirs, their_stderr = probes.mean(), probes.std(ddof=1) / np.sqrt(len(probes))
    ours, our_stderr = traces.trace.sum(), traces.stderr.sum()  # the sum's stderr is at most the sum of stderrs
    assert abs(ours - theirs) <= 3 * np.hypot(our_stderr, their_stderr), (ours, our_stderr, theirs, their_stderr)


def test_fisher_is_the_mean_of_squared_per_sample_gradients(tiny_model, tiny_data):
    x, y = tiny_data
    sens = mpq.analyze(
        tiny_model, (x, y), metric="fisher", activations=True, batch_size=5, cache_dir=False, progress=False
    )
    folded = prepare_model(tiny_model, x[:2]).folded
    names = ["conv1", "conv2", "fc"]
    weights = [folded.get_submodule(n).weight for n in names]
    squares = {n: [] for n in names + ["input"]}
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        grads = torch.autograd.grad(F.cross_entropy(folded(xi), y[i : i + 1]), weights + [xi])
        for n, g in zip(names + ["input"], grads):
            squares[n].append(g.pow(2).reshape(g.shape[0] if n != "input" else 2, -1).sum(dim=1).double().numpy())
    for n in names:
        per_channel = np.mean(squares[n], axis=0)
        assert sens.layers[n].channel_trace == pytest.approx(per_channel, rel=1e-5)
        totals = np.sum(squares[n], axis=1)
        assert sens.layers[n].hessian_trace == pytest.approx(totals.mean(), rel=1e-5)
        assert sens.layers[n].hessian_trace_stderr == pytest.approx(totals.std(ddof=1) / np.sqrt(len(x)), rel=1e-5)
    # conv1 reads the model's input: its input Fisher is the mean of ||∇_x loss_i||²
    assert sens.layers["conv1"].activation.trace == pytest.approx(np.sum(squares["input"], axis=1).mean(), rel=1e-5)
    assert sens.stop_reason == "exact" and sens.to_json()["metric"] == "fisher"


def test_eigenvalue_is_the_top_eigenvalue_of_the_exact_block(tiny_model, tiny_data):
    x, y = tiny_data
    sens = mpq.analyze(
        tiny_model,
        (x, y),
        metric="eigenvalue",
        activations=True,
        batch_size=len(x),
        max_probes=500,
        cache_dir=False,
        progress=False,
    )
    prepared = prepare_model(tiny_model, x[:2])
    for name, s in sens.layers.items():
        top = float(torch.linalg.eigvalsh(exact_hessian(prepared.folded, f"{name}.weight", x, y).double())[-1])
        assert s.details["top_eigenvalue"] == pytest.approx(top, rel=1e-2), name
        assert s.omega(4) == pytest.approx(top * s.quant_error[4], rel=1e-2)  # Ω = λ_max ||Q_b(W) − W||²
    groups = input_groups(prepared.graph.layers, [])
    with perturbed_inputs(
        prepared.folded, groups, [prepared.graph.by_name[g[0]].input_shape for g in groups]
    ) as wrapper:
        for g, name in zip(groups, wrapper.names):
            top = float(torch.linalg.eigvalsh(exact_hessian(wrapper, f"{name}.weight", x, y).double())[-1])
            assert sens.layers[g[0]].activation.details["top_eigenvalue"] == pytest.approx(top, rel=1e-2), g


def test_output_mse_is_the_measured_output_error_of_quantizing_one_layer(tiny_model, tiny_data):
    x, y = tiny_data
    sens = mpq.analyze(tiny_model, (x, y), metric="output_mse", activations=True, cache_dir=False, progress=False)
    folded = prepare_model(tiny_model, x[:2]).folded
    with torch.no_grad():
        reference = folded(x).double()
        quantized = copy.deepcopy(folded)
        quantized.conv2.weight.copy_(fake_quantize_weight(folded.conv2.weight, 3))
        output = quantized(x).double()
    layer = sens.layers["conv2"]
    assert layer.omega(3) == pytest.approx(float(F.mse_loss(output, reference)), rel=1e-6)
    expected_db = 10 * np.log10(float(reference.pow(2).sum()) / float((output - reference).pow(2).sum()))
    assert layer.details["output_sqnr_db"]["3"] == pytest.approx(expected_db, rel=1e-6)
    # the input of fc through the verifier's min-max quantizer at 4 bits, everything else FP32
    observer = MinMaxObserver()
    with torch.no_grad():
        handle = folded.fc.register_forward_pre_hook(lambda m, a: observer.observe(a[0]))
        folded(x)
        handle.remove()
        handle = folded.fc.register_forward_pre_hook(lambda m, a: (observer.params(4).fake_quantize(a[0]),))
        output = folded(x).double()
        handle.remove()
    assert layer.act_omega(None) == 0.0
    assert sens.layers["fc"].act_omega(4) == pytest.approx(float(F.mse_loss(output, reference)), rel=1e-6)
    written = sens.to_json()["layers"]["fc"]
    assert "hessian_trace" not in written  # the record says what it holds: a measured Omega, no trace
    assert written["omega"]["3"] == pytest.approx(float(sens.layers["fc"].omega(3)))


@pytest.mark.parametrize("metric", ["output_mse", "output_kl"])
def test_measured_metrics_run_one_pass_per_layer_and_width(tiny_model, tiny_data, metric):
    """layers × 7 widths passes over the data, plus the reference (and, for output_kl, the bias-correction pass)."""
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    calls = []
    handle = prepared.folded.register_forward_pre_hook(lambda m, a: calls.append(len(a[0])))
    try:
        mpq.analyze(prepared, (x, y), metric=metric, cache_dir=False, progress=False)
    finally:
        handle.remove()
    passes = sum(calls) / len(x)
    assert passes == len(prepared.graph.layers) * 7 + (1 if metric == "output_mse" else 2)


def test_output_kl_is_the_measured_kl_of_quantizing_one_layer_with_the_plans_quantizer(tiny_model, tiny_data):
    """output_kl: KL(FP32 ‖ q) with only conv2 quantized by the quantizer's clipped weights and corrected bias."""
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    quantizer = Quantizer(act_observer="minmax", weight_clip="mse", bias_correction=True)
    sens = mpq.analyze(prepared, (x, y), metric="output_kl", cache_dir=False, progress=False, quantizer=quantizer)
    calibration = calibrate(
        prepared,
        mpq.Dataset(x, y),
        fp32_reference(prepared, mpq.Dataset(x, y), 25, Cache(None)).input_ranges,
        quantizer,
    )
    folded = prepared.folded
    widths = [3] * folded.conv2.weight.shape[0]
    with torch.no_grad():
        quantized = copy.deepcopy(folded)
        quantized.conv2.weight.copy_(
            calibration.weight("conv2", folded.conv2.weight, widths).dequantize().reshape(folded.conv2.weight.shape)
        )
        quantized.conv2.bias.copy_(calibration.bias("conv2", folded.conv2.bias, widths))
        assert not torch.equal(quantized.conv2.bias, folded.conv2.bias)  # bias correction moved it
        kl = float(
            F.kl_div(
                F.log_softmax(quantized(x), 1), F.log_softmax(folded(x), 1), log_target=True, reduction="batchmean"
            )
        )
    layer = sens.layers["conv2"]
    assert layer.omega(3) == pytest.approx(kl, rel=1e-3) and layer.details["output_kl"]["3"] == layer.omega(3)
    assert layer.omega(3) > layer.omega(8) > 0


def _layer(name: str) -> LayerInfo:
    return LayerInfo(
        name=name,
        kind="linear",
        weight_shape=(16, 16),
        input_shape=(16,),
        output_shape=(16,),
        params=256,
        bias_params=0,
        macs=256,
    )


def _constructed_sensitivity(input_traces: dict[str, float]) -> Sensitivity:
    """Equal layers (same weights, costs and weight traces) whose inputs differ only in their trace."""
    layers = {}
    for name, trace in input_traces.items():
        error = {b: 4.0**-b for b in range(2, 9)}
        estimate = LayerEstimate(trace=Trace(1.0, 0.0, 8, np.full(16, 1 / 16), np.zeros(16)))
        activation = ActivationSensitivity(
            group=[name], trace=trace, trace_stderr=0.0, probes=8, elements=16, quant_error=dict(error)
        )
        channel_errors = {b: np.full(16, e / 16) for b, e in error.items()}
        layers[name] = LayerSensitivity.of(_layer(name), "hessian", estimate, channel_errors, activation)
    return Sensitivity(
        "fp", "data", "labels", layers, float_bytes=0, settings=ProbeSettings(), seconds=0.0, stop_reason="tolerance"
    )


def test_solver_gives_narrow_activations_to_the_least_sensitive_inputs():
    sens = _constructed_sensitivity({"a": 5.0, "b": 0.01, "c": 1.0, "d": 0.1})
    # W8 everywhere; BOPs for two inputs at 8 bits and two at 4: 256·8·(8+8+4+4) = 49,152
    plan = mpq.solve(sens, "49152BOPs", bits=(8,), act_bits=(4, 8), trace_margin=0)
    assert {n: lp.act_bits for n, lp in plan.layers.items()} == {"a": 8, "b": 4, "c": 8, "d": 4}
    assert plan.settings.act_sensitivity is True and "by sensitivity" in plan.settings.act_choice_note
    expected = sum(s.omega(8) for s in sens.layers.values()) + sum(
        sens.layers[n].act_omega(a) for n, a in zip("abcd", (8, 4, 8, 4))
    )
    assert plan.predicted["omega"] == pytest.approx(expected)
    by_cost = mpq.solve(sens, "49152BOPs", bits=(8,), act_bits=(4, 8), trace_margin=0, act_sensitivity=False)
    assert by_cost.settings.act_sensitivity is False and "cost only" in by_cost.settings.act_choice_note
    assert by_cost.predicted["omega"] == pytest.approx(sum(s.omega(8) for s in sens.layers.values()))


def test_one_activation_width_leaves_the_plan_as_before():
    sens = _constructed_sensitivity({"a": 5.0, "b": 0.01, "c": 1.0, "d": 0.1})
    plain = copy.deepcopy(sens)
    for s in plain.layers.values():
        s.activation = None
    with_inputs, without = (mpq.solve(s, "600B", bits=(2, 4, 8), act_bits=8) for s in (sens, plain))
    assert with_inputs.layers == without.layers and with_inputs.predicted == without.predicted
    assert with_inputs.settings.act_choice_note is None


def test_cli_sensitivity_metric_json_and_chart(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz")
    chart = tmp_path / "charts" / "s.png"
    status, out, err = run_cli(
        capsys,
        "sensitivity",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--metric",
        "fisher",
        "--activations",
        "--json",
        "--plot",
        chart,
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["schema"] == "mpq.sensitivity/1" and result["metric"] == "fisher" and result["stop_reason"] == "exact"
    layer = result["layers"]["head"]
    assert layer["hessian_trace"] > 0 and layer["probes"] == 32 and layer["activation"]["elements"] == 8
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {chart}" in err
    status, out, err = run_cli(
        capsys, "sensitivity", "--model", f"{USER_MODELS}:mlp", "--data", data, "--metric", "curvature", "--no-cache"
    )
    assert status == 2 and "invalid choice: 'curvature'" in err
