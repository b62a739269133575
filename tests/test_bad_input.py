"""Every bad input gets exit status 2 and one line `mpq: error: ...` that says what to do."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mpq
from tests.helpers import USER_MODELS, mlp_data, run_cli
from tests.user_models import mlp

MLP = f"{USER_MODELS}:mlp"
FAST = ("--max-probes", "3", "--quiet")


@pytest.fixture
def data(tmp_path) -> Path:
    return mlp_data(tmp_path / "d.npz")


def one_line_error(capsys, *args) -> str:
    status, _, err = run_cli(capsys, *args)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpq: error: "), err
    return lines[0]


def search(tmp_path, data, *extra):
    return ("search", "--model", MLP, "--data", data, "--out", tmp_path / "out", "--no-cache", *FAST, *extra)


@pytest.mark.parametrize(
    "budget, message",
    [
        ("4XB", "unknown budget unit 'XB'"),
        ("0MB", "must be a positive number"),
        ("-2MB", "must be a positive number"),
        ("MB", "write a number and a unit"),
    ],
)
def test_budgets(tmp_path, data, capsys, budget, message):
    assert message in one_line_error(capsys, *search(tmp_path, data, f"--budget={budget}"))


@pytest.mark.parametrize(
    "bits, message",
    [
        ("0", "outside 1-16 bits"),
        ("17", "outside 1-16 bits"),
        ("12", "valid plan width (1-16) but mpq's quantizer supports only 2 to 8"),
        ("4,x", "comma-separated"),
    ],
)
def test_widths(tmp_path, data, capsys, bits, message):
    assert message in one_line_error(capsys, *search(tmp_path, data, "--budget", "4MB", "--bits", bits))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_pkg.nets:model", "cannot import 'no_such_pkg.nets'"),
        (f"{USER_MODELS}:NOT_A_MODULE", "not a torch.nn.Module"),
        (f"{USER_MODELS}:missing", "has no attribute 'missing'"),
        ("nowhere.py:net", "does not exist"),
    ],
)
def test_model_specs(tmp_path, data, capsys, spec, message):
    line = one_line_error(
        capsys, "search", "--model", spec, "--data", data, "--budget", "4MB", "--out", tmp_path / "o", *FAST
    )
    assert message in line


def test_data_of_wrong_shape_or_dtype(tmp_path, capsys):
    np.savez(tmp_path / "narrow.npz", x=np.zeros((8, 5), np.float32))
    line = one_line_error(capsys, *search(tmp_path, tmp_path / "narrow.npz", "--budget", "4MB"))
    assert "cannot run on the data (inputs of shape (5,), dtype torch.float32)" in line and "give data shaped" in line
    np.savez(tmp_path / "ints.npz", x=np.zeros((8, 6), np.int64))
    assert "dtype torch.int64" in one_line_error(capsys, *search(tmp_path, tmp_path / "ints.npz", "--budget", "4MB"))
    line = one_line_error(
        capsys, "sensitivity", "--model", f"{USER_MODELS}:tiny_encoder", "--data", tmp_path / "narrow.npz", *FAST
    )
    assert "cannot run on the data" in line


def test_nan_or_inf_in_data_or_weights(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    x[3, 2] = np.inf
    np.savez(tmp_path / "inf.npz", x=x)
    assert "NaN or Inf" in one_line_error(capsys, *search(tmp_path, tmp_path / "inf.npz", "--budget", "4MB"))
    broken = mlp()
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    torch.save(broken.state_dict(), tmp_path / "nan.pth")
    line = one_line_error(
        capsys, *search(tmp_path, mlp_data(tmp_path / "d.npz"), "--budget", "4MB", "--weights", tmp_path / "nan.pth")
    )
    assert "model tensor head.weight contains NaN or Inf" in line


@pytest.mark.parametrize("metric", ["output_mse", "output_kl"])
def test_whole_layer_metrics_refuse_per_channel_widths_before_any_work(tmp_path, data, capsys, metric):
    line = one_line_error(
        capsys, *search(tmp_path, data, "--budget", "1KB", "--metric", metric, "--granularity", "channel")
    )
    assert f"the {metric} metric measures whole layers" in line and "--metric kl_quadratic" in line
    assert not (tmp_path / "out").exists()


def test_unwritable_out(tmp_path, data, capsys):
    (tmp_path / "a_file").write_text("")
    line = one_line_error(
        capsys, "search", "--model", MLP, "--data", data, "--budget", "4MB", "--out", tmp_path / "a_file" / "out", *FAST
    )
    assert "cannot create output folder" in line and "--out" in line


def test_plans_for_another_model_or_malformed(tmp_path, data, capsys):
    status, _, err = run_cli(capsys, *search(tmp_path, data, "--budget", "2KB"))
    assert status == 0, err
    plan = tmp_path / "out" / "plan.json"
    status, _, err = run_cli(
        capsys, "verify", plan, "--model", MLP, "--data", data, "--out", tmp_path / "v", "--no-cache"
    )
    assert status == 0, err
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert (
        report["measured"]["size_bytes"]
        == json.loads((tmp_path / "out" / "report.json").read_text())["measured"]["size_bytes"]
    )
    line = one_line_error(
        capsys, "verify", plan, "--model", MLP, "--model-arg", "width=9", "--data", data, "--out", tmp_path / "v"
    )
    assert "made for another model" in line
    text = plan.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    assert "not valid JSON (truncated?)" in one_line_error(
        capsys, "verify", tmp_path / "cut.json", "--model", MLP, "--data", data
    )
    bad = json.loads(text)
    bad["layers"]["head"]["weight_bits"] = 40
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert "not a width from 1 to 16" in one_line_error(
        capsys, "verify", tmp_path / "bad.json", "--model", MLP, "--data", data
    )
    bad["layers"]["head"]["weight_bits"] = 12
    (tmp_path / "wide.json").write_text(json.dumps(bad))
    assert "supports only 2 to 8" in one_line_error(
        capsys, "verify", tmp_path / "wide.json", "--model", MLP, "--data", data
    )
    (tmp_path / "other.json").write_text('{"schema": "something/1"}')
    assert "is not an mpq plan" in one_line_error(
        capsys, "verify", tmp_path / "other.json", "--model", MLP, "--data", data
    )


def test_api_raises_typed_errors():
    with pytest.raises(mpq.MpqError, match="unknown budget unit"):
        mpq.search(mlp(), torch.randn(8, 6), budget=["4MB", "3 parsecs"])
    with pytest.raises(mpq.MpqError, match="must be a torch.nn.Module"):
        mpq.analyze("resnet", torch.randn(8, 6))
    with pytest.raises(mpq.BudgetInfeasible, match="smallest"):
        mpq.search(
            mlp(), torch.randn(8, 6), budget=mpq.Budget("size_bytes", 10.0, "10B"), progress=False, cache_dir=False
        )


def test_console_script_exit_status_and_single_line(tmp_path, data):
    mpq_script = Path(sys.executable).parent / "mpq"
    result = subprocess.run(
        [str(mpq_script), "search", "--model", MLP, "--data", str(data), "--budget", "4 furlongs"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1 and result.stderr.startswith("mpq: error: ") and "Traceback" not in result.stderr
    )
