"""`mpq solve --table` writes byte-identical plan.json for the same input: no wall time or other
run-dependent field in it (the solver's seconds go to the terminal only)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
TABLE = """layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s,group
a,4,8,1.0,500,1000,0.001,g
a,8,8,0.1,1000,2000,0.002,g
b,4,8,2.0,500,1000,0.001,g
b,8,8,0.9,1000,2000,0.002,g
c,4,,3.0,500,1000,0.0015,
c,8,,0.3,1000,2000,0.003,
d,4,8,0.7,400,900,0.001,
d,6,8,0.2,600,1300,0.0015,
d,8,8,0.05,800,1800,0.002,
"""
ARGS = ["--budget", "3000B", "--budget", "7000BOPs", "--keep", "d=6", "--time-limit", "600"]


def keys(value) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


def solve_in_subprocess(table: Path, out: Path, solver: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "mpq.cli",
        "solve",
        "--table",
        str(table),
        "--out",
        str(out),
        "--solver",
        solver,
        *ARGS,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_two_runs_write_byte_identical_plans(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    first, second = (solve_in_subprocess(table, tmp_path / name, "highs") for name in ("one", "two"))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    one, two = (tmp_path / "one" / "plan.json").read_bytes(), (tmp_path / "two" / "plan.json").read_bytes()
    assert one == two
    plan = json.loads(one)
    assert {n: e["weight_bits"] for n, e in plan["layers"].items()} == {
        "a": 4,
        "b": 4,
        "c": 8,
        "d": 6,
    }  # Omega 1 + 2 + 0.3 + 0.2
    assert plan["solver"] == {
        "name": "highs",
        "status": "optimal",
        "proven_optimal": True,
        "gap": 0.0,
        "time_limit_s": 600.0,
    }
    assert plan["settings"]["solver"] == {"name": "highs", "time_limit_s": 600.0}
    # the seconds are on the terminal, not in the plan
    assert re.search(r"^solver: highs, proven optimal, relative gap 0, \d+\.\d\d s$", first.stdout, flags=re.MULTILINE)
    timed = {k for k in keys(plan) if re.search(r"seconds|wall|elapsed|timing", k)}
    assert timed == {"max_seconds"}  # the probe setting (unused by a table), not a measured time


def test_cbc_plans_are_byte_identical_and_record_cbc(tmp_path, capsys):
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    plans = []
    for name in ("one", "two"):
        status, out, err = run_cli(
            capsys, "solve", "--table", table, "--out", tmp_path / name, "--solver", "cbc", *ARGS
        )
        assert (status, err) == (0, "")
        assert re.search(r"^solver: cbc, proven optimal, relative gap 0, \d+\.\d\d s$", out, flags=re.MULTILINE)
        plans.append((tmp_path / name / "plan.json").read_bytes())
    assert plans[0] == plans[1]
    plan = json.loads(plans[0])
    assert plan["solver"]["name"] == "cbc" and plan["settings"]["solver"] == {"name": "cbc", "time_limit_s": 600.0}
    assert {n: e["weight_bits"] for n, e in plan["layers"].items()} == {"a": 4, "b": 4, "c": 8, "d": 6}
