"""The Hessian engine: fwd-rev = rev-rev, chunked = whole batch, 2 ranks (torchrun, gloo) = 1 process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.nn import functional as F

import mpq
from mpq.graph import prepare_model
from mpq.sensitivity.hessian import ProbeSettings, hutchinson_traces
from mpq.specs import load_data_spec, load_model_spec
from tests.helpers import USER_MODELS, mlp_data

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def traces(model, x, y, loss_fn=F.cross_entropy, **settings):
    prepared = prepare_model(model, x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    fixed = ProbeSettings(min_probes=5, max_probes=5, batch_size=10, seed=4, **settings)  # 10, 10, 4 samples
    return hutchinson_traces(prepared.folded, names, x, y, fixed, progress=False, loss_fn=loss_fn)


def assert_same_numbers(a, b, rtol=1e-5):
    np.testing.assert_allclose(a.trace, b.trace, rtol=rtol)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=rtol)
    for ca, cb in zip(a.channel_trace, b.channel_trace):
        np.testing.assert_allclose(ca, cb, rtol=rtol, atol=1e-7 * np.abs(cb).max())


def test_forward_over_reverse_gives_the_numbers_of_reverse_over_reverse(tiny_model, tiny_data):
    x, y = tiny_data
    rev, fwd = traces(tiny_model, x, y, hvp="rev-rev"), traces(tiny_model, x, y, hvp="fwd-rev")
    assert np.all(rev.trace != 0) and rev.probes == 5
    assert_same_numbers(fwd, rev)


@pytest.mark.parametrize("hvp", ["fwd-rev", "rev-rev"])
def test_chunked_probes_give_the_numbers_of_whole_batches(tiny_model, tiny_data, hvp):
    x, y = tiny_data
    whole = traces(tiny_model, x, y, hvp=hvp)
    chunked = traces(tiny_model, x, y, hvp=hvp, chunk_size=3)  # chunks of 3, 3, 3, 1 samples: weighted by size
    assert_same_numbers(chunked, whole)


def test_a_loss_that_torch_func_cannot_trace_falls_back_to_reverse_over_reverse(tiny_model, tiny_data):
    def logged_loss(output, target):
        loss = F.cross_entropy(output, target)
        logged.append(float(output.detach().numpy().max()))  # torch.func tensors have no numpy data
        return loss

    logged = []
    x, y = tiny_data
    fallback = traces(tiny_model, x, y, loss_fn=logged_loss, hvp="fwd-rev")
    assert_same_numbers(fallback, traces(tiny_model, x, y, hvp="rev-rev"), rtol=1e-12)


def test_two_ranks_under_torchrun_give_the_numbers_of_one_process(tmp_path):
    data = mlp_data(tmp_path / "d.npz", n=40)
    command = [TORCHRUN, "--nproc-per-node", "2", "-m", "mpq.cli", "sensitivity", "--model", f"{USER_MODELS}:mlp", "--data", str(data),
               "--max-probes", "7", "--tol", "1e-6",
               "--json", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # one JSON document: only rank 0 printed
    assert result["probes"] == 7 and result["stop_reason"] == "max_probes"
    assert len(list((tmp_path / "cache").glob("sensitivity-*.json"))) == 1

    one = mpq.analyze(load_model_spec(f"{USER_MODELS}:mlp"), load_data_spec(str(data)), max_probes=7, tol=1e-6, cache_dir=False, progress=False)
    for name, layer in one.layers.items():
        assert result["layers"][name]["hessian_trace"] == pytest.approx(layer.hessian_trace, rel=1e-9)
        assert result["layers"][name]["hessian_trace_stderr"] == pytest.approx(layer.hessian_trace_stderr, rel=1e-9)


def test_other_commands_refuse_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    from tests.helpers import run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    status, _, err = run_cli(capsys, "search", "--budget", "1MB", "--no-cache")
    assert status == 2
    assert "only `mpq sensitivity` runs under torchrun" in err
