"""Losses: exact traces for MSE, defaults with and without labels, custom callables, names recorded."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mpq
from mpq.errors import MpqError
from mpq.sensitivity.hessian import hutchinson_traces
from mpq.sensitivity.losses import resolve_loss
from mpq.sensitivity.settings import ProbeSettings
from tests.helpers import USER_MODELS, mlp_data, run_cli
from tests.user_models import mlp, output_norm_loss


def test_mse_hessian_of_a_linear_layer_is_exact():
    """For f(x) = Wx and mean squared error over N samples x out outputs, H = 2/(N out) I ⊗ XᵀX, so
    Tr(H) = 2/N Σ ||x_i||²; with orthogonal columns of X, H is diagonal and every Rademacher probe
    gives the trace exactly (stderr 0)."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=False)
    q, _ = torch.linalg.qr(torch.randn(10, 5, dtype=torch.float64))
    x, target = (q * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)).float(), torch.randn(10, 3)
    settings = ProbeSettings(max_probes=4, min_probes=2, batch_size=10)
    traces = hutchinson_traces(nn.Sequential(layer), ["0"], x, target, settings, progress=False, loss_fn=F.mse_loss)
    expected = 2 / 10 * float(x.pow(2).sum())
    assert traces.trace[0] == pytest.approx(expected, rel=1e-6)
    assert traces.stderr[0] == pytest.approx(0.0, abs=1e-5)
    assert traces.channel_trace[0] == pytest.approx(np.full(3, expected / 3), rel=1e-6)


def test_default_losses_follow_the_labels():
    assert resolve_loss(None, has_labels=True).name == "labels"
    assert resolve_loss(None, has_labels=False).name == "fp32"
    with pytest.raises(MpqError, match="needs integer labels"):
        resolve_loss("labels", has_labels=False)
    with pytest.raises(MpqError, match="unknown loss 'hinge'"):
        resolve_loss("hinge", has_labels=True)


def test_fp32_loss_equals_labels_loss_when_labels_are_the_fp32_predictions():
    model = mlp()
    x = torch.randn(24, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    options = dict(max_probes=5, min_probes=2, cache_dir=False, progress=False)
    unlabelled = mpq.analyze(model, x, loss="fp32", **options)
    labelled = mpq.analyze(model, (x, predicted), loss="labels", **options)
    assert unlabelled.loss == "fp32" and labelled.loss == "labels"
    for name in labelled.layers:
        assert unlabelled.layers[name].hessian_trace == labelled.layers[name].hessian_trace


def test_custom_loss_from_spec_equals_the_same_function_and_mse_scaled():
    """output_norm_loss = 0.5 * out * mse, so its Hessian traces are out/2 = 2 times those of mse."""
    model = mlp()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    options = dict(max_probes=4, min_probes=2, cache_dir=False, progress=False, metric="hessian")
    by_spec = mpq.analyze(model, x, loss=f"{USER_MODELS}:output_norm_loss", **options)
    by_function = mpq.analyze(model, x, loss=output_norm_loss, **options)
    mse = mpq.analyze(model, x, loss="mse", **options)
    assert by_spec.loss.endswith("user_models.py:output_norm_loss")
    for name in mse.layers:
        assert by_spec.layers[name].hessian_trace == pytest.approx(by_function.layers[name].hessian_trace, rel=1e-12)
        assert by_spec.layers[name].hessian_trace == pytest.approx(2 * mse.layers[name].hessian_trace, rel=1e-5)


def test_loss_is_recorded_in_sensitivity_json_and_report(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz", labels=False)
    status, out, err = run_cli(
        capsys,
        "sensitivity",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--loss",
        "kl",
        "--json",
        "--max-probes",
        "3",
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    assert json.loads(out)["loss"] == "kl"
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "2KB",
        "--out",
        tmp_path / "o",
        "--metric",
        "hessian",
        "--max-probes",
        "3",
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    assert "sensitivity loss: fp32" in json.loads((tmp_path / "o" / "report.json").read_text())["notes"]
    assert "Sensitivity loss: fp32" in (tmp_path / "o" / "report.md").read_text()
