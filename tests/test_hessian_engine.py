"""The Hessian engine: fwd-rev = rev-rev, chunked = whole batch, 2 ranks (torchrun, gloo) = 1 process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mpq
from mpq.inputs.graph import prepare_model
from mpq.inputs.specs import load_data_spec, load_model_spec
from mpq.sensitivity.hessian import _rademacher, hutchinson_traces, probe_generator
from mpq.sensitivity.settings import ProbeSettings
from tests.helpers import USER_MODELS, mlp_data

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


@pytest.fixture
def mlp_xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)


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
    command = [
        TORCHRUN,
        "--nproc-per-node",
        "2",
        "-m",
        "mpq.cli.main",
        "sensitivity",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        str(data),
        "--metric",
        "hessian",
        "--max-probes",
        "30",
        "--tol",
        "0.1",
        "--json",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr  # no rank's atexit destroys the process group twice
    result = json.loads(run.stdout)  # one JSON document: only rank 0 printed
    assert result["probes"] <= 30
    assert len(list((tmp_path / "cache").glob("sensitivity-*.json"))) == 1

    one = mpq.analyze(
        load_model_spec(f"{USER_MODELS}:mlp"),
        load_data_spec(str(data)),
        metric="hessian",
        max_probes=30,
        tol=0.1,
        cache_dir=False,
        progress=False,
    )
    assert len({layer.probes for layer in one.layers.values()}) > 1  # per-layer probing: layers stopped apart
    assert result["stop_reason"] == one.stop_reason
    for name, layer in one.layers.items():
        assert result["layers"][name]["probes"] == layer.probes
        assert result["layers"][name]["hessian_trace"] == pytest.approx(layer.hessian_trace, rel=1e-9)
        assert result["layers"][name]["hessian_trace_stderr"] == pytest.approx(layer.hessian_trace_stderr, rel=1e-9)


def test_per_layer_probes_are_the_quadratic_forms_of_the_exact_diagonal_blocks(mlp_xy):
    from tests.test_metrics import exact_hessian, mlp

    x, y = mlp_xy
    prepared = prepare_model(mlp(), x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    settings = ProbeSettings(
        min_probes=6, max_probes=6, batch_size=len(x), seed=3, probing="per-layer"
    )  # one batch: all of x
    found = hutchinson_traces(prepared.folded, names, x, y, settings, progress=False)
    blocks = [exact_hessian(prepared.folded, f"{n}.weight", x, y).double() for n in names]
    weights = [prepared.folded.get_submodule(n).weight for n in names]
    values = np.zeros((6, len(names)))
    for i in range(6):  # probe i's vector, drawn as the engine draws it
        generator = probe_generator(3, i)
        vs = [_rademacher(w.shape, generator, w.device).reshape(-1).double() for w in weights]
        values[i] = [float(v @ block @ v) for v, block in zip(vs, blocks)]
    np.testing.assert_allclose(found.trace, values.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(found.stderr, values.std(axis=0, ddof=1) / np.sqrt(6), rtol=1e-4)


def test_each_layer_is_probed_until_its_own_standard_error_is_under_tol(mlp_xy):
    from tests.test_metrics import mlp

    x, y = mlp_xy
    prepared = prepare_model(mlp(), x[:2])
    names = [layer.name for layer in prepared.graph.layers]
    settings = ProbeSettings(tol=0.1, min_probes=4, max_probes=500, batch_size=32, seed=0, probing="per-layer")
    found = hutchinson_traces(prepared.folded, names, x, y, settings, progress=False)
    assert found.stop_reason == "tolerance"
    assert np.all(found.stderr <= 0.1 * found.trace)
    assert len(set(found.layer_probes.tolist())) > 1 and found.probes == found.layer_probes.max()
    # the same probes, fewer each: one probe short of its count, each layer was still above the tolerance
    for i, n in enumerate(found.layer_probes):
        fewer = hutchinson_traces(
            prepared.folded,
            names,
            x,
            y,
            ProbeSettings(tol=1e-9, min_probes=n - 1, max_probes=n - 1, batch_size=32, seed=0),
            progress=False,
        )
        assert fewer.stderr[i] > 0.1 * fewer.trace[i]


def test_other_commands_refuse_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    from tests.helpers import run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    status, _, err = run_cli(capsys, "search", "--budget", "1MB", "--no-cache")
    assert status == 2
    assert "only `mpq sensitivity` runs under torchrun" in err
