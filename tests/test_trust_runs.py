"""Issue 25, item 3: inputs that ran into a traceback or a refusal where one line or a result is promised: a .pt2
exported with a fixed batch, per-sample labels for a model that predicts per position, data whose squares overflow
float32 (or float16), and a time cap that stops the probing at one probe (a result with a warning, not exit 2)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.errors import MpqError
from tests.helpers import USER_MODELS, mlp_data, run_cli


def one_line(status, err, words):
    assert status == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_a_pt2_with_a_fixed_batch_is_one_line(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(6, 4))
    torch.export.save(torch.export.export(model, (torch.randn(32, 6),)), tmp_path / "static.pt2")
    data = mlp_data(tmp_path / "d.npz", n=32)
    args = ["--model", tmp_path / "static.pt2", "--data", data, "--budget", "1KB", "--out", tmp_path / "out"]
    status, _, err = run_cli(capsys, "search", *args, "--no-cache")
    one_line(status, err, "was exported with a fixed batch of 32 (input input)")
    assert "dynamic_shapes" in err and not (tmp_path / "out").exists()


class PerPosition(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def test_per_sample_labels_for_a_per_position_model_are_one_line():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    with pytest.raises(MpqError, match=r"outputs are shaped \[2, 4, 8, 8\] per batch .* drop y") as caught:
        mpq.search(PerPosition(), (x, y), "1KB", cache_dir=False)
    assert "\n" not in str(caught.value)
    with pytest.raises(MpqError, match=r"labels y have shape \(16, 8, 8\)"):
        mpq.search(PerPosition(), (x, torch.randint(0, 4, (16, 8, 8))), "1KB", cache_dir=False)


@pytest.mark.parametrize(
    "values, words",
    [
        (np.full((8, 6), 1e30, dtype=np.float32), "values up to 1e+30, and their squares overflow float32"),
        (np.full((8, 6), -1e300), "values up to 1e+300, and their squares overflow float32"),  # not Inf after a cast
        (np.full((8, 6), 1000, dtype=np.float16), "squares overflow torch.float16 (above 256)"),
    ],
)
def test_data_whose_squares_overflow_is_one_line(tmp_path, capsys, values, words):
    np.savez(tmp_path / "huge.npz", x=values)
    args = [
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        tmp_path / "huge.npz",
        "--budget",
        "1KB",
        "--out",
        tmp_path / "o",
    ]
    status, _, err = run_cli(capsys, "search", *args, "--no-cache")
    one_line(status, err, words)
    with pytest.raises(MpqError, match="scale the data"):
        mpq.Dataset(torch.from_numpy(values))
    mpq.Dataset(torch.full((8, 6), 1e18)), mpq.Dataset(torch.full((8, 6), 200.0, dtype=torch.float16))  # taken


def test_a_time_cap_at_one_probe_gives_a_result_with_a_warning(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz", n=32)
    args = ["--model", f"{USER_MODELS}:mlp", "--data", data, "--budget", "400B", "--out", tmp_path / "out"]
    args += ["--metric", "hessian", "--max-seconds", "0.0001", "--max-probes", "100000", "--no-cache"]
    status, out, err = run_cli(capsys, "search", *args)
    assert status == 0, err
    assert "warning: the probing stopped after 0.0001 s with one probe of 3 layer(s)" in out
    assert (tmp_path / "out" / "plan.json").exists()
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    probes = mpq.ProbeSettings(max_seconds=1e-4, max_probes=10**5)
    sens = mpq.analyze(mpq_mlp(), (x, y), probes=probes, metric="hessian", cache_dir=False)
    traces = [s.trace for s in sens.layers.values()]
    assert [t.probes for t in traces] == [1, 1, 1] and all(math.isfinite(t.value) and t.stderr == 0 for t in traces)
    assert any("a standard error needs two" in n for n in sens.notes)
    assert mpq.solve(sens, "400B").predicted.omega >= 0


def mpq_mlp():
    from tests.user_models import mlp

    return mlp()
