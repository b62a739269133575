"""Bad inputs and faults a new user meets (issue 15's battery): each ends in exit status 2 and one line
that says what to do (an MpqError in the API), before the expensive work where it can be."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mpq
from mpq.errors import MpqError
from tests.helpers import USER_MODELS, mlp_data, run_cli
from tests.user_models import mlp

MLP = f"{USER_MODELS}:mlp"


@pytest.fixture
def files(tmp_path) -> Path:
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)).numpy()
    np.savez(tmp_path / "labels_7.npz", x=x, y=np.full(32, 7))
    np.savez(tmp_path / "labels_negative.npz", x=x, y=np.full(32, -1))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 6), np.float32))
    np.savez(tmp_path / "strings.npz", x=np.array([["a"] * 6] * 4))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (tmp_path / "losses.py").write_text(
        "def nan(o, t):\n    return o.sum() * float('nan')\n"
        "def raises(o, t):\n    raise ValueError('boom')\n"
        "def vector(o, t):\n    return o.pow(2).mean(dim=1)\n"
    )
    (tmp_path / "datafn.py").write_text("def raises():\n    raise RuntimeError('no data here')\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    mlp_data(tmp_path / "ok.npz")
    return tmp_path


def search(files: Path, *args) -> list[str]:
    return [
        "search",
        "--model",
        MLP,
        "--data",
        files / "ok.npz",
        "--budget",
        "1KB",
        "--out",
        files / "out",
        "--cache-dir",
        files / "cache",
        *args,
    ]


CASES = {
    "labels out of range": (
        lambda f: [*search(f), "--data", f / "labels_7.npz"],
        "labels y reach 7 but the model has 4 outputs",
    ),
    "negative labels": (lambda f: [*search(f), "--data", f / "labels_negative.npz"], "labels y hold -1"),
    "empty dataset": (lambda f: [*search(f), "--data", f / "empty.npz"], "the data holds no samples"),
    "string array": (lambda f: [*search(f), "--data", f / "strings.npz"], "holds <U1 values: save numbers"),
    "corrupt image": (lambda f: ["sensitivity", "--data", f / "images", "--no-plot"], "cannot read image .*broken.jpg"),
    "loss gives NaN": (lambda f: [*search(f), "--loss", f"{f}/losses.py:nan", "--no-cache"], "losses.py:nan is nan"),
    "loss raises": (
        lambda f: [*search(f), "--loss", f"{f}/losses.py:raises", "--no-cache"],
        "raised ValueError on the data \\(boom\\)",
    ),
    "loss not a scalar": (
        lambda f: [*search(f), "--loss", f"{f}/losses.py:vector", "--no-cache"],
        "returned \\(8,\\), not one number",
    ),
    "data function raises": (
        lambda f: [*search(f), "--data", f"{f}/datafn.py:raises"],
        "raised RuntimeError while giving the data: no data here",
    ),
    "model file exits": (lambda f: [*search(f), "--model", f"{f}/exits.py:model"], "called sys.exit\\(0\\)"),
    "eval batch of 0": (lambda f: [*search(f), "--eval-batch-size", "0"], "--eval-batch-size: 0 must be 1 or more"),
    "latency batch of 0": (
        lambda f: [*search(f), "--budget", "1ms", "--device", "arm-cortex-a76", "--latency-batch", "0"],
        "--latency-batch: 0 must be 1 or more",
    ),
    "seed below 0": (lambda f: [*search(f), "--seed", "-1"], "seed=-1 must be a whole number"),
    "seed beyond 64 bits": (
        lambda f: [*search(f), "--seed", str(2**70)],
        "must be a whole number from 0 to 2\\*\\*63 - 1",
    ),
    "trace margin nan": (lambda f: [*search(f), "--trace-margin", "nan"], "trace_margin=nan must be a finite number"),
    "out in /proc": (lambda f: [*search(f), "--out", "/proc/mpq-out"], "cannot create output folder /proc/mpq-out"),
    "cache in /proc": (
        lambda f: [*search(f), "--cache-dir", "/proc/mpq-cache"],
        "cannot write the cache folder /proc/mpq-cache",
    ),
    "cache is a file": (lambda f: [*search(f), "--cache-dir", f / "ok.npz"], "the cache folder .* is a file"),
    "cuda without a GPU": (lambda f: [*search(f), "--device", "cuda"], "--device cuda: no CUDA device is visible here"),
    "cuda:1 without a GPU": (lambda f: [*search(f), "--device", "cuda:1"], "--device cuda:1: no CUDA device"),
    "a device that is none": (
        lambda f: ["sensitivity", "--model", MLP, "--data", f / "ok.npz", "--device", "tpu", "--no-plot"],
        "--device tpu is not a device to run on",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_cli_faults_exit_2_with_one_line(files, capsys, case):
    args, message = CASES[case]
    status, out, err = run_cli(capsys, *args(files))
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpq: error: "), err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (files / "out").exists()  # nothing written


@pytest.fixture
def saved_plan(tmp_path):
    torch.manual_seed(0)
    data = (torch.randn(32, 6), torch.randint(0, 4, (32,)))
    model = mlp()
    sens = mpq.analyze(model, data, probes=mpq.ProbeSettings(max_probes=2), cache_dir=False, progress=False)
    mpq.solve(sens, "1KB").save(tmp_path / "plan.json")
    return model, data, json.loads((tmp_path / "plan.json").read_text())


def damaged(tmp_path, stored: dict, change) -> Path:
    copy = json.loads(json.dumps(stored))
    change(copy)
    (tmp_path / "damaged.json").write_text(json.dumps(copy))
    return tmp_path / "damaged.json"


def _one_bit(p):
    p["layers"][next(iter(p["layers"]))]["weight_bits"] = 1


PLAN_FAULTS = {
    "NaN budget": (lambda p: p["budgets"][0].update(limit=float("nan")), "not a positive finite number"),
    "unknown budget kind": (lambda p: p["budgets"][0].update(kind="furlongs"), "budget kind 'furlongs' is not one of"),
    "fingerprint deleted": (lambda p: p["model"].pop("fingerprint"), "names no model fingerprint"),
    "settings not an object": (lambda p: p.update(settings=[1]), "settings \\[1\\] are not an object"),
    "model not an object": (lambda p: p.update(model=3), "model must be an object"),
}


@pytest.mark.parametrize("case", PLAN_FAULTS)
def test_damaged_plan_files_are_refused(saved_plan, tmp_path, case):
    change, message = PLAN_FAULTS[case]
    with pytest.raises(MpqError, match=message):
        mpq.Plan.load(damaged(tmp_path, saved_plan[2], change))


def test_deeply_nested_plan_is_refused(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MpqError, match="nested too deeply"):
        mpq.Plan.load(tmp_path / "deep.json")


def test_one_bit_plans_are_refused_by_verify_and_export(saved_plan, tmp_path):
    model, data, stored = saved_plan
    plan = mpq.Plan.load(damaged(tmp_path, stored, _one_bit))
    for action in (
        lambda: mpq.verify(model, plan, data),
        lambda: mpq.export_plan(model, plan, data, tmp_path / "m.bin"),
    ):
        with pytest.raises(MpqError, match="supports only 2 to 8"):
            action()
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("budget", [4, 4.0, None, [], [4]])
def test_api_budgets_of_the_wrong_type_are_one_sentence(saved_plan, budget):
    model, data, _ = saved_plan
    sens = mpq.analyze(model, data, probes=mpq.ProbeSettings(max_probes=2), cache_dir=False, progress=False)
    with pytest.raises(MpqError, match="budget must be a string with a unit"):
        mpq.solve(sens, budget=budget)


def test_api_batch_sizes_below_one_are_refused_before_any_work(saved_plan):
    model, data, _ = saved_plan
    with pytest.raises(MpqError, match="eval_batch_size=0"):
        mpq.search(model, data, "1KB", eval_batch_size=0, cache_dir=False, progress=False)
    with pytest.raises(MpqError, match="batch_size=0"):
        mpq.export_plan(model, mpq.Plan(layers={}), data, "x.bin", batch_size=0)
