"""Issue 25, item 2: a quiet terminal. HiGHS's banner (printed from C, which pytest's capture never sees)
and torch's/torchao's import-time lines must not reach the terminal: `--json` prints exactly one JSON
object on stdout, and `--quiet` leaves stderr empty. Run as subprocesses, as a user runs mpq."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import USER_MODELS, mlp_data

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("HiGHS", "Copyright", "THIRD_PARTY", "Failed to load", "_pytree", "Warning", "warn(", "Traceback")


def mpq(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPQ_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "mpq.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def no_foreign_line(text: str) -> None:
    assert not [line for line in text.splitlines() if any(word in line for word in FOREIGN)], text


def test_json_prints_one_object_for_search_solve_and_pareto(tmp_path):
    data = mlp_data(tmp_path / "d.npz")
    model = ["--model", f"{USER_MODELS}:mlp", "--data", data, "--max-probes", "2"]
    table = tmp_path / "problem.csv"
    table.write_text(
        "layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s\n"
        "a,4,8,3.0,100,1,0\na,8,8,1.0,200,2,0\nb,4,8,2.0,100,1,0\nb,8,8,0.5,200,2,0\n"
    )
    runs = {
        "search": ["search", *model, "--budget", "1KB", "--out", tmp_path / "s", "--quiet", "--json"],
        "solve": ["solve", "--table", table, "--budget", "300B", "--out", tmp_path / "v", "--json"],
        "pareto": ["pareto", *model, "--budget", "1KB", "--budget", "600B", "--out", tmp_path / "p", "--quiet", "--json"],
    }  # fmt: skip
    for command, args in runs.items():
        run = mpq(tmp_path, *args)
        assert run.returncode == 0, run.stderr
        assert isinstance(json.loads(run.stdout), dict), run.stdout[:300]  # one object and nothing else
        assert run.stderr == "", (command, run.stderr)


def test_help_and_a_search_print_only_mpq_lines(tmp_path):
    run = mpq(tmp_path, "search", "--help")
    assert run.returncode == 0 and run.stderr == "" and run.stdout.startswith("usage: mpq search")
    no_foreign_line(run.stdout)
    data = mlp_data(tmp_path / "d.npz")
    run = mpq(tmp_path, "search", "--model", f"{USER_MODELS}:mlp", "--data", data, "--budget", "1KB",
              "--max-probes", "2", "--out", tmp_path / "s")  # fmt: skip
    assert run.returncode == 0, run.stderr
    no_foreign_line(run.stdout + run.stderr)


def test_an_hf_search_prints_only_mpq_lines(tmp_path):
    """transformers imports torchao, whose import logs lines about CUDA kernels and pytree enums."""
    transformers = pytest.importorskip("transformers")
    import numpy as np

    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    np.savez(tmp_path / "ids.npz", input_ids=np.random.default_rng(0).integers(0, 64, (8, 8)))
    args = ["search", "--model", f"hf:{tmp_path / 'gpt2'}", "--data", tmp_path / "ids.npz", "--budget", "1MB",
            "--max-probes", "2", "--out", tmp_path / "s"]  # fmt: skip
    run = mpq(tmp_path, *args, "--quiet", "--json")
    assert run.returncode == 0, run.stderr
    assert isinstance(json.loads(run.stdout), dict) and run.stderr == "", run.stderr


def test_the_known_torchao_lines_are_filtered_and_others_kept(tmp_path):
    import logging

    from mpq.quiet import quiet_known_warnings

    quiet_known_warnings()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addHandler(handler)
    try:
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logging.getLogger("torch.utils._pytree").warning("%s is an Enum subclass and is now natively supported", "E")
        logging.getLogger("torchao").warning("something else")
    finally:
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else"]
