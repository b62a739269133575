"""Ctrl-C during the Hessian phase keeps the finished probes; the next run resumes to the same numbers.
The same seed gives a byte-identical plan.json."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from torch.nn import functional as F

import mpq
from mpq.inputs.specs import load_data_spec, load_model_spec
from tests.helpers import USER_MODELS, mlp_data, run_cli

MPQ = str(Path(sys.executable).parent / "mpq")
PROBES = 40


def sensitivity_command(data: Path, cache: Path) -> list[str]:
    return [
        MPQ,
        "sensitivity",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        str(data),
        "--json",
        "--cache-dir",
        str(cache),
        "--loss",
        f"{USER_MODELS}:slow_cross_entropy",
        "--max-probes",
        str(PROBES),
        "--tol",
        "1e-6",
        "--batch-size",
        "8",
    ]


def saved_probes(cache: Path) -> int:
    for path in cache.glob("hessian-checkpoint-*.json"):
        try:
            return json.loads(path.read_text())["value"]["probes"]  # an entry: {"sha256": ..., "value": ...}
        except (OSError, ValueError):
            pass  # being replaced this instant
    return 0


def test_interrupted_run_resumes_from_saved_probes_and_matches_an_uninterrupted_run(tmp_path):
    data, cache = mlp_data(tmp_path / "d.npz", n=40), tmp_path / "cache"
    # SIGINT at its default in the child: a test run started in the background (`cmd &` in a script) inherits
    # it ignored, and Python then never raises KeyboardInterrupt
    run = subprocess.Popen(
        sensitivity_command(data, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while saved_probes(cache) < 5 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    seen = saved_probes(cache)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, (seen, err)
    assert "interrupted" in err
    kept = saved_probes(cache)
    assert 5 <= kept < PROBES
    assert not list(cache.glob(".*tmp"))  # no half-written file left behind

    resumed = subprocess.run(
        [*sensitivity_command(data, cache), "--verbose"], capture_output=True, text=True, timeout=120
    )  # progress notes into a pipe
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {kept} probes" in resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["resumed_probes"] == kept and result["probes"] == PROBES
    assert not list(cache.glob("hessian-checkpoint-*.json"))  # finished: the checkpoint is gone

    fresh = mpq.analyze(
        load_model_spec(f"{USER_MODELS}:mlp"),
        load_data_spec(str(data)),
        loss=F.cross_entropy,
        max_probes=PROBES,
        tol=1e-6,
        batch_size=8,
        cache_dir=False,
        progress=False,
    )
    for name, layer in fresh.layers.items():
        assert result["layers"][name]["hessian_trace"] == layer.hessian_trace
        assert result["layers"][name]["hessian_trace_stderr"] == layer.hessian_trace_stderr


def test_same_seed_gives_byte_identical_plan(tmp_path, capsys):
    """One run in this process, one in a fresh process (another hash seed), each with its own cache."""
    data = mlp_data(tmp_path / "d.npz", n=48)
    args = [
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--model-arg",
        "width=12",
        "--data",
        str(data),
        "--budget",
        "350B",
        "--bits",
        "2,4,8",
        "--max-probes",
        "6",
        "--seed",
        "7",
        "--quiet",
    ]
    status, _, err = run_cli(capsys, *args, "--cache-dir", tmp_path / "cache-a", "--out", tmp_path / "a")
    assert status == 0, err
    other = subprocess.run(
        [MPQ, *args, "--cache-dir", str(tmp_path / "cache-b"), "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.returncode == 0, other.stderr
    plans = [(tmp_path / run / "plan.json").read_bytes() for run in ("a", "b")]
    assert plans[0] == plans[1]
    widths = {layer["weight_bits"] for layer in json.loads(plans[0])["layers"].values()}
    assert len(widths) > 1  # a real mixed plan, not a trivial one
