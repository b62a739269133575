"""The real default model end to end through the `mpq` command (fewer probes than the default)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

MPQ = str(Path(sys.executable).parent / "mpq")


def run_mpq(*args, cache_dir: Path):
    return subprocess.run([MPQ, *args, "--cache-dir", str(cache_dir), "--quiet"], capture_output=True, text=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def first_run(workdir, default_model_cache):
    result = run_mpq(
        "search", "--budget", "4MB", "--max-probes", "8", "--out", str(workdir / "out4"), cache_dir=default_model_cache
    )
    assert result.returncode == 0, result.stderr
    return json.loads((workdir / "out4" / "report.json").read_text()), json.loads(
        (workdir / "out4" / "plan.json").read_text()
    )


def test_search_4mb_writes_a_verified_plan_that_beats_uniform(first_run, workdir):
    report, plan = first_run
    assert (workdir / "out4" / "report.md").stat().st_size > 0
    assert plan["schema"] == "mpq.plan/1" and report["schema"] == "mpq.report/1"
    assert len(plan["layers"]) == 50
    assert report["measured"]["size_bytes"] <= 4_000_000
    assert report["measured"]["size_bytes"] == plan["predicted"]["size_bytes"]
    # measured on the 50 views of the 5 photos held out (seed 0); sensitivity and calibration used the other 150
    assert report["metrics"]["n_eval"] == 50 and any("5 of 20 groups held out" in n for n in report["notes"])
    assert report["fp32"]["top1"] == pytest.approx(0.70)
    fitting = [b for b in report["baselines"] if b["size_bytes"] <= 4_000_000]
    assert {b["name"] for b in fitting} == {"uniform W6A8", "uniform W5A8", "uniform W4A8"}
    assert report["metrics"]["kl_to_fp32"] <= 0.5 * min(b["kl_to_fp32"] for b in fitting)


def test_the_4mb_plan_carries_typed_settings_that_load_back_equal(first_run, workdir):
    import mpq

    _, stored = first_run
    plan = mpq.Plan.load(workdir / "out4" / "plan.json")
    assert plan.settings.space == mpq.SearchSpace() and plan.settings.solver == mpq.SolverSettings()
    assert plan.settings.probes == mpq.ProbeSettings(max_probes=8) and plan.settings.quantizer == mpq.Quantizer()
    assert plan.settings.metric == "kl_anchored" and plan.settings.container_reserve_bytes > 0
    assert plan.to_json() == stored


def test_second_budget_reuses_the_cached_sensitivity(first_run, workdir, default_model_cache):
    result = run_mpq(
        "search",
        "--budget",
        "3.5MB",
        "--max-probes",
        "8",
        "--out",
        str(workdir / "out35"),
        cache_dir=default_model_cache,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "out35" / "report.json").read_text())
    assert report["measured"]["size_bytes"] <= 3_500_000
    assert "from cache" in " ".join(report["notes"])
    assert report["timings_s"]["sensitivity"] < 0.1 * first_run[0]["timings_s"]["sensitivity"]


def test_unknown_budget_unit_exits_2_with_one_line(workdir):
    result = run_mpq("search", "--budget", "4XB", "--out", str(workdir / "bad"), cache_dir=workdir / "cache")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mpq: error: unknown budget unit")
    assert not (workdir / "bad" / "plan.json").exists()


def test_unreachable_budget_exits_3_naming_the_smallest_size(workdir):
    result = run_mpq("search", "--budget", "100KB", "--out", str(workdir / "tiny"), cache_dir=workdir / "cache")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "smallest that can be met is 2,480,960 B" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "tiny" / "plan.json").exists()
