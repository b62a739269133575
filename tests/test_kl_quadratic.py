"""The kl_quadratic metric against exact computations: the directional derivative of the logits by
torch.func.jvp, the quadratic form ½ δᵀ(diag p − p pᵀ)δ written out, and the measured KL for small errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

import mpq
from mpq.inputs.graph import prepare_model
from mpq.sensitivity.kl_quadratic import kl_quadratic_omegas, parameter_deltas, rademacher_cotangent
from tests.helpers import USER_MODELS, mlp_data, run_cli

BITS = (3, 6)


def min_max_deltas(model, names, bits):
    """Each layer's min-max weight change at each width, no bias correction."""
    return {n: parameter_deltas(model.get_submodule(n), bits, None, None) for n in names}


def exact_omegas(
    model: nn.Module, name: str, x: torch.Tensor, delta: dict[str, torch.Tensor]
) -> tuple[float, np.ndarray]:
    """½ mean_x δᵀMδ for the layer's whole change, and per output channel c for the change of channel c only."""
    module = model.get_submodule(name)
    keys = [f"{name}.{k}" for k in delta]
    primals = tuple(getattr(module, k).detach() for k in delta)

    def logits(*values):
        return functional_call(model, dict(zip(keys, values)), (x,))

    def form(tangents) -> float:
        out, d = jvp(logits, primals, tangents)
        out, d = out.detach(), d.detach()
        p = torch.softmax(out.double(), 1)
        d = d.double()
        return float(0.5 * ((p * d * d).sum(1) - (p * d).sum(1) ** 2).sum() / len(x))

    whole = form(tuple(delta.values()))
    channels = []
    for c in range(module.weight.shape[0]):
        only_c = []
        for k, v in delta.items():
            mask = torch.zeros_like(v)
            mask[c] = 1
            only_c.append(v * mask)
        channels.append(form(tuple(only_c)))
    return whole, np.array(channels)


class DepthwiseNet(nn.Module):
    """conv -> relu -> depthwise conv -> relu -> pool -> linear, with and without biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


class TokenNet(nn.Module):
    """embedding -> linear on [batch, tokens, dim] -> mean over tokens: an embedding table and a 3-d linear output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 6)
        self.proj = nn.Linear(6, 5)

    def forward(self, ids):
        return self.proj(torch.tanh(self.embed(ids))).mean(1)


def test_rademacher_cotangent_has_the_softmax_curvature_as_covariance():
    p = torch.softmax(torch.tensor([[1.0, -0.5, 2.0, 0.3]], dtype=torch.float64), 1)
    g = torch.Generator().manual_seed(0)
    u = torch.cat([rademacher_cotangent(p, g) for _ in range(20000)])
    covariance = u.T @ u / len(u)
    assert torch.allclose(covariance, torch.diag(p[0]) - p.T @ p, atol=0.01)


@pytest.mark.parametrize("case", ["conv", "tokens"])
def test_estimates_agree_with_the_exact_quadratic_form(case):
    torch.manual_seed(0)
    if case == "conv":
        model, x = DepthwiseNet().eval(), torch.randn(6, 2, 5, 5)
    else:
        model, x = TokenNet().eval(), torch.randint(0, 7, (6, 4))
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    result = kl_quadratic_omegas(model, x, min_max_deltas(model, names, BITS), batch_size=4, draws=400, seed=3)
    assert result.samples == 6 and result.draws == 400
    for name in names:
        deltas = parameter_deltas(model.get_submodule(name), BITS, None, None)
        for b in BITS:
            whole, channels = exact_omegas(model, name, x, deltas[b])
            assert whole > 0
            assert abs(result.omega[name][b] - whole) <= 3 * result.stderr[name][b], (
                name,
                b,
                result.omega[name][b],
                whole,
                result.stderr[name][b],
            )
            assert result.stderr[name][b] < 0.15 * whole
            # per channel: each channel's own form; 3-sigma in total, and each channel within 30%
            assert result.channel_omega[name][b].shape == channels.shape
            assert np.allclose(result.channel_omega[name][b], channels, rtol=0.3, atol=1e-3 * channels.max())


def test_bias_correction_enters_through_the_bias_change():
    torch.manual_seed(1)
    model, x = DepthwiseNet().eval(), torch.randn(6, 2, 5, 5)
    shift = {3: torch.full((4,), 0.05, dtype=torch.float64)}
    delta = parameter_deltas(model.conv, (3,), None, shift)[3]
    assert torch.allclose(delta["bias"], torch.full((4,), -0.05))  # corrected bias = bias − shift
    plain = kl_quadratic_omegas(model, x, min_max_deltas(model, ["conv"], (3,)), draws=400, seed=0)
    shifted = kl_quadratic_omegas(
        model, x, {"conv": parameter_deltas(model.conv, (3,), None, shift)}, draws=400, seed=0
    )
    exact_plain, _ = exact_omegas(model, "conv", x, parameter_deltas(model.conv, (3,), None, None)[3])
    exact_shifted, _ = exact_omegas(model, "conv", x, delta)
    assert exact_plain != pytest.approx(exact_shifted, rel=0.05)
    assert abs(plain.omega["conv"][3] - exact_plain) <= 3 * plain.stderr["conv"][3]
    assert abs(shifted.omega["conv"][3] - exact_shifted) <= 3 * shifted.stderr["conv"][3]


def test_omega_predicts_the_measured_kl_of_a_small_error():
    """KL(p‖q) = ½δᵀMδ + O(δ³): at 8 bits the estimate is the measured KL to within its standard error and 10%."""
    torch.manual_seed(2)
    model, x = (
        DepthwiseNet().double().eval(),
        torch.randn(32, 2, 5, 5, dtype=torch.float64),
    )  # float64: a KL of 1e-9 is below float32's rounding
    result = kl_quadratic_omegas(model, x, min_max_deltas(model, ["conv"], (8,)), draws=200, seed=0)
    delta = parameter_deltas(model.conv, (8,), None, None)[8]
    quantized = {f"conv.{k}": getattr(model.conv, k).detach() + v for k, v in delta.items()}
    with torch.no_grad():
        log_p, log_q = F.log_softmax(model(x), 1), F.log_softmax(functional_call(model, quantized, (x,)), 1)
    kl = float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))
    assert result.omega["conv"][8] == pytest.approx(kl, rel=0.1, abs=3 * result.stderr["conv"][8])


def test_analyze_and_solve_with_kl_quadratic(tiny_model, tiny_data):
    prepared = prepare_model(tiny_model, tiny_data[0][:2])
    data = mpq.Dataset(tiny_data[0], tiny_data[1])
    sens = mpq.analyze(prepared, data, metric="kl_quadratic", progress=False)
    assert sens.metric == "kl_quadratic" and sens.loss == "kl"
    for name, s in sens.layers.items():
        assert s.omega(4) == s.measured_omega[4] > s.omega(8) > 0
        assert s.omega(4, margin=2.0) == pytest.approx(s.measured_omega[4] + 2 * s.measured_stderr[4])
        assert s.channel_omega(4).shape == (s.layer.out_channels,)
    plan = mpq.solve(sens, f"{sum(s.layer.params for s in sens.layers.values()) // 2 + 200}B", bits=(4, 8))
    assert {lp.weight_bits for lp in plan.layers.values()} <= {4, 8}


def test_cli_sensitivity_json_with_kl_quadratic(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz")
    status, out, err = run_cli(
        capsys,
        "sensitivity",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--metric",
        "kl_quadratic",
        "--json",
        "--cache-dir",
        tmp_path / "c",
        "--plot",
        tmp_path / "s.png",
    )
    assert status == 0, err
    doc = json.loads(out)
    assert doc["metric"] == "kl_quadratic" and doc["loss"] == "kl"
    layer = next(iter(doc["layers"].values()))
    assert layer["kl_quadratic"]["4"] > layer["kl_quadratic"]["8"] > 0 and layer["samples"] == 32
    assert (tmp_path / "s.png").stat().st_size > 10_000  # the chart of Omega at W4 with error bars
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--metric",
        "kl_quadratic",
        "--act-bits",
        "4,8",
        "--budget",
        "1KB",
        "--cache-dir",
        tmp_path / "c",
        "--out",
        tmp_path / "o",
    )
    assert (
        status == 2
        and err.strip().startswith("mpq: error: the kl_quadratic metric covers weights only")
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "o").exists()


def test_kl_anchored_is_kl_quadratic_scaled_to_the_measured_one_layer_kl_at_4_bits(tiny_model):
    """At ANCHOR_BITS each layer's Ω is the KL measured with that layer alone quantized, on the 32 anchor samples
    (spread over all 40); at every other width it keeps kl_quadratic's ratio to that width."""
    from mpq.quant.affine import fake_quantize_weight
    from mpq.sensitivity.anchor import ANCHOR_BITS, anchor_indices

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(40, 2, 6, 6, generator=generator)
    prepared = prepare_model(tiny_model, x[:2])
    data = mpq.Dataset(x)
    plain = mpq.analyze(prepared, data, metric="kl_quadratic", quantizer="minmax", progress=False)
    anchored = mpq.analyze(
        prepared,
        data,
        metric="kl_anchored",
        quantizer="minmax",
        probes=mpq.ProbeSettings(anchor_samples=32),
        progress=False,
    )
    model = prepared.folded
    anchors = x[anchor_indices(len(x), 32)]
    assert len(anchors) == 32 and anchor_indices(len(x), 32)[-1] == 39
    log_p = F.log_softmax(model(anchors).detach().double(), 1)
    for name, s in anchored.layers.items():
        weight = model.get_submodule(name).weight
        log_q = F.log_softmax(
            functional_call(model, {f"{name}.weight": fake_quantize_weight(weight, ANCHOR_BITS)}, (anchors,))
            .detach()
            .double(),
            1,
        )
        kl = float((log_p.exp() * (log_p - log_q)).sum(1).mean())
        assert s.omega(ANCHOR_BITS) == pytest.approx(kl, rel=1e-6)
        ratio = s.details["anchor_ratio"]
        assert ratio == pytest.approx(kl / plain.layers[name].omega(ANCHOR_BITS), rel=1e-9)
        for b in (2, 6, 8):
            assert s.omega(b) == pytest.approx(ratio * plain.layers[name].omega(b), rel=1e-9)
        assert s.channel_omega(6) == pytest.approx(ratio * plain.layers[name].channel_omega(6), rel=1e-9)
