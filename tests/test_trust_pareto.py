"""Issue 25: `mpq pareto` gives the same plans in identical runs (separate processes, other hash seeds, no cache),
two runs with one --out do not race on a temporary file and leave none, and an --out that cannot be written is one
line before the work, leaving nothing behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import USER_MODELS, mlp_data

ROOT = Path(__file__).resolve().parents[1]
TIMED = ("solve_seconds", "timings_s", "seconds", "versions")


def pareto(tmp_path, out, seed: str, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPQ_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": seed}
    data = tmp_path / "d.npz"
    if not data.exists():
        mlp_data(data, n=64)
    args = ["pareto", "--model", f"{USER_MODELS}:mlp", "--data", data, "--budget", "260B:600B:8", "--out", out]
    args += ["--no-cache", "--quiet", "--max-probes", "4", *extra]
    command = [sys.executable, "-m", "mpq.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def untimed(value):
    """pareto.json less what the clock decides (solve and stage seconds) and the package versions."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMED}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_two_runs_with_one_out_give_the_same_plans_and_leave_no_temporary_file(tmp_path):
    runs = [pareto(tmp_path, tmp_path / "out", seed) for seed in ("1", "2")]
    assert [run.wait(timeout=600) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.csv", "pareto.json", "pareto.png"]
    first = json.loads((tmp_path / "out" / "pareto.json").read_text())
    again = pareto(tmp_path, tmp_path / "again", "3")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    second = json.loads((tmp_path / "again" / "pareto.json").read_text())
    assert untimed(first) == untimed(second)
    assert [p["plan"] and p["plan"]["layers"] for p in first["points"]] == [
        p["plan"] and p["plan"]["layers"] for p in second["points"]
    ]


@pytest.mark.parametrize("out", ["/proc/mpq-out", "/proc/self", "file"])
def test_an_out_that_cannot_be_written_is_refused_before_the_work(tmp_path, out):
    if out == "file":
        out = tmp_path / "taken"
        out.write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    run = pareto(tmp_path, out, "0", "--verbose")
    assert run.wait(timeout=600) == 2
    err = run.stderr.read()
    assert err.startswith("mpq: error: ") and len(err.strip().splitlines()) == 1, err  # no sensitivity progress
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "d.npz"})


def test_a_failed_run_leaves_no_out_folder_and_no_temporary_file(tmp_path):
    run = pareto(tmp_path, tmp_path / "out", "0", "--verify-points", "x")
    assert run.wait(timeout=600) == 2 and not (tmp_path / "out").exists()
    unreachable = pareto(tmp_path, tmp_path / "out", "0", "--budget", "10B:20B:3")
    assert unreachable.wait(timeout=600) == 3, unreachable.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]
