"""The Gauss-Newton residual (issue 13): --metric gauss_newton gives Tr(H_l) = Tr(G_l) + Tr(R_l), R_l measured
per layer and estimated where the network is curved after the layer; checked against exact blocks."""

import json

import numpy as np
import pytest
import torch

import mpq
from mpq.sensitivity.residual import GAUSS_NEWTON, SKIPPED, WITH_RESIDUAL, ZERO_RTOL
from tests.helpers import mlp_data, run_cli
from tests.residual_models import CURVED_LAYERS, FLAT_AFTER, curved_block, exact_blocks, relu_conv, relu_mlp

MODELS = "tests/residual_models.py"
pytestmark = pytest.mark.filterwarnings(
    "ignore:There is a performance drop:UserWarning"
)  # vmap over CPU flash attention


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Networks this small gain nothing from a second thread and lose much on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def analyzed(model, x, y, **options):
    return mpq.analyze(model, (x, y), metric="gauss_newton", cache_dir=False, progress=False, **options)


def assert_within_3_stderr(sens, exact: dict):
    """Every layer's trace within 3 of its standard errors of the exact block's, and 4 in 5 channels' (a
    channel's standard error comes from two draws per sample, so it is itself noisy, and too small where a
    few samples' rare classes carry the channel; tests/test_gauss_newton.py checks the traces over seeds)."""
    within = []
    for name, s in sens.layers.items():
        block = exact[name].hessian
        assert abs(s.hessian_trace - float(block.trace())) <= 3 * s.hessian_trace_stderr, name
        channels = exact[name].channel_traces(block, s.layer.out_channels)
        within.extend(np.abs(s.channel_trace - channels) <= 3 * s.channel_trace_stderr + 1e-9)
    assert np.mean(within) >= 0.8, within


@pytest.mark.parametrize("make", [relu_conv, relu_mlp])
def test_a_relu_network_needs_no_residual_and_its_gauss_newton_traces_are_the_hessian_blocks(make):
    model, x, y = make()
    sens = analyzed(model, x, y)
    exact = {name: exact_blocks(model, name, x, y) for name in sens.layers}
    assert_within_3_stderr(sens, exact)
    for name, s in sens.layers.items():
        assert s.estimator == GAUSS_NEWTON and s.details["residual_test_ratio"] == 0.0  # R v is exactly zero
        assert torch.allclose(exact[name].residual, torch.zeros(()), atol=1e-6)
        assert (
            s.hessian_trace_stderr < 0.1 * s.hessian_trace
        )  # a channel's spread over samples is wider (docs/sensitivity.md)
    assert sens.stop_reason == "exact" and sens.stopped_short() is None


@pytest.fixture(scope="module")
def curved():
    model, x, y = curved_block()
    return model, x, y, analyzed(model, x, y), {name: exact_blocks(model, name, x, y) for name in CURVED_LAYERS}


def test_the_residual_is_found_exactly_where_the_network_is_curved_after_the_layer(curved):
    _, _, _, sens, exact = curved
    for name, blocks in exact.items():
        residual, hessian = (
            float(blocks.residual.trace()),
            float(blocks.hessian.trace()),
        )  # exact Tr(H) − Tr(G), G = Jᵀ∇²ℓJ
        assert (abs(residual) > 1e-2 * hessian) == (name not in FLAT_AFTER)
        assert abs(residual) < 1e-5 * hessian or name not in FLAT_AFTER
    needing = {name for name, s in sens.layers.items() if s.estimator == WITH_RESIDUAL}
    assert needing == set(CURVED_LAYERS) - FLAT_AFTER
    assert all(sens.layers[name].details["residual_test_ratio"] > 1e3 * ZERO_RTOL for name in needing)


def test_gauss_newton_plus_residual_agrees_with_the_exact_hessian_blocks(curved):
    _, _, _, sens, exact = curved
    assert_within_3_stderr(sens, exact)
    for name, s in sens.layers.items():
        g = s.details["gauss_newton_trace"]
        assert abs(g - float(exact[name].gauss_newton.trace())) <= 3 * s.details["gauss_newton_trace_stderr"], name
        assert s.hessian_trace == pytest.approx(g + s.details["residual_trace"])
        assert s.hessian_trace_stderr == pytest.approx(
            np.hypot(s.details["gauss_newton_trace_stderr"], s.details["residual_trace_stderr"])
        )


def test_the_kl_loss_has_no_residual_at_the_fp32_weights(curved):
    model, x, _, _, _ = curved
    sens = mpq.analyze(model, x, metric="gauss_newton", loss="kl", cache_dir=False, progress=False)
    assert {s.estimator for s in sens.layers.values()} == {GAUSS_NEWTON}  # ∂ℓ/∂f = p − p_fp32 = 0


def test_without_double_backward_the_residual_is_skipped_with_one_note(tmp_path, capsys):
    model, x, y = curved_block(samples=8, sdpa=True)  # F.scaled_dot_product_attention: CPU flash attention
    sens = analyzed(model, x, y)
    assert {s.estimator for s in sens.layers.values()} == {SKIPPED}
    assert (
        len(sens.notes) == 1
        and 'attn_implementation="eager"' in sens.notes[0]
        and "derivative for aten::" in sens.notes[0]
    )
    with pytest.raises(
        mpq.MpqError, match='no second derivatives .*attn_implementation="eager".*--metric gauss_newton'
    ):
        mpq.analyze(
            model, (x, y), metric="hessian", cache_dir=False, progress=False
        )  # Hutchinson needs them: one sentence, exit 2
    data = tmp_path / "d.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    status, out, err = run_cli(
        capsys,
        "sensitivity",
        "--model",
        f"{MODELS}:sdpa_model",
        "--data",
        data,
        "--metric",
        "hessian",
        "--no-plot",
        "--quiet",
        "--no-cache",
    )
    assert status == 2 and err.count("\n") == 1 and err.startswith("mpq: error: this model has no second derivatives")


def test_a_cap_says_in_one_line_above_the_table_how_many_layers_it_stopped(tmp_path, capsys):
    model, x, y = curved_block()
    data = tmp_path / "d.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    args = (
        "sensitivity",
        "--model",
        f"{MODELS}:curved_model",
        "--data",
        data,
        "--metric",
        "gauss_newton",
        "--no-plot",
        "--quiet",
        "--no-cache",
    )
    status, out, _ = run_cli(capsys, *args, "--max-seconds", "0.001")
    assert status == 0
    lines = out.splitlines()
    line = "6 of 8 layers stopped above the 5% tolerance at the 0.001 s cap: raise --max-seconds or --max-probes"
    assert lines[1] == line and lines[3].startswith("| layer |") and "| estimator |" in lines[3]
    status, out, _ = run_cli(capsys, *args, "--max-probes", "2", "--json")
    assert (
        json.loads(out)["stopped_short"]
        == "6 of 8 layers stopped above the 5% tolerance at the 2-probe cap: raise --max-probes or --max-seconds"
    )


def test_the_line_is_in_the_search_output_and_report_md(tmp_path, capsys):
    from tests.helpers import USER_MODELS

    data = mlp_data(tmp_path / "d.npz")
    out = tmp_path / "out"
    args = (
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "300B",
        "--bits",
        "2,4,8",
        "--metric",
        "hessian",
        "--out",
        out,
        "--quiet",
        "--no-cache",
    )
    status, stdout, err = run_cli(capsys, *args, "--max-probes", "2", "--tol", "0.001")
    assert status == 0, err
    line = next(line for line in stdout.splitlines() if "stopped above" in line)
    assert line.endswith(
        "layers stopped above the 0.1% tolerance at the 2-probe cap: raise --max-probes or --max-seconds"
    )
    md = (out / "report.md").read_text().splitlines()
    at = md.index(line)
    assert md[at + 2].startswith("| layer |") and "| hutchinson |" in md[at + 4]
