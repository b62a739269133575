"""Issue 25, item 3: a poisoned cache entry (valid JSON of another shape, 100,000-deep JSON, a folder, a
symlink loop, a FIFO) is a miss, never a crash or a hang; `mpq cache clear` that may not delete says so in
one line."""

import json
import os
import shutil
import subprocess

import pytest

from mpq.cache import Cache
from tests.helpers import USER_MODELS, mlp_data, run_cli

POISONS = ("list", "string", "deep", "other dict", "folder", "loop", "fifo", "truncated")


def poison(path, how):
    real = path.read_bytes()
    path.unlink()
    if how == "folder":
        path.mkdir()
    elif how == "loop":
        os.symlink(path.name, path)  # a link to itself: ELOOP
    elif how == "fifo":
        os.mkfifo(path)
    else:
        text = {
            "list": "[1, 2, 3]",
            "string": '"hello"',
            "deep": "[" * 100_000 + "]" * 100_000,
            "other dict": json.dumps({"sha256": "0" * 64, "value": {"logits": "no"}}),
            "truncated": real[: len(real) // 2].decode(errors="replace"),
        }[how]
        path.write_text(text)


def test_poisoned_entries_are_misses_and_the_plan_is_the_same(tmp_path, capsys):
    data = mlp_data(tmp_path / "d.npz")
    cache = tmp_path / "cache"
    args = ["search", "--model", f"{USER_MODELS}:mlp", "--data", data, "--budget", "1KB", "--max-probes", "2"]
    status, _, err = run_cli(capsys, *args, "--cache-dir", cache, "--out", tmp_path / "a", "--quiet")
    assert status == 0, err
    entries = sorted(cache.iterdir())
    assert len(entries) >= 3
    for i, path in enumerate(entries):
        poison(path, POISONS[i % len(POISONS)])
    status, _, err = run_cli(capsys, *args, "--cache-dir", cache, "--out", tmp_path / "b", "--quiet")
    assert status == 0, err
    plan = [json.loads((tmp_path / run / "plan.json").read_text())["layers"] for run in "ab"]
    assert plan[0] == plan[1]
    status, out, err = run_cli(capsys, "cache", "info", "--cache-dir", cache, "--json")
    assert status == 0 and json.loads(out)["entries"] >= 1, err


@pytest.mark.parametrize("how", POISONS)
def test_each_poison_is_a_miss_and_a_save_leaves_what_it_cannot_replace(tmp_path, how):
    cache = Cache(tmp_path, max_bytes=0)
    cache.save("fp32", {"i": 0}, {"logits": [0.5]})
    path = cache._path("fp32", {"i": 0})
    poison(path, how)
    assert cache.load("fp32", {"i": 0}) is None
    cache.save("fp32", {"i": 0}, {"logits": [0.5]})
    replaced = how not in ("folder", "loop", "fifo")
    assert (cache.load("fp32", {"i": 0}) == {"logits": [0.5]}) is replaced
    assert cache.clear() == [] or replaced


def test_cache_clear_that_may_not_delete_is_one_line(tmp_path, capsys):
    cache = Cache(tmp_path / "cache", max_bytes=0)
    cache.save("fp32", {"i": 0}, {"logits": [0.5]})
    entry = cache._path("fp32", {"i": 0})
    if os.geteuid() == 0:  # root deletes whatever the modes say: make the entry immutable instead
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", entry]).returncode != 0:
            pytest.skip("root, and no chattr +i here")
        undo = ["chattr", "-i", entry]
    else:
        os.chmod(cache.folder, 0o555)
        undo = ["chmod", "755", cache.folder]
    try:
        status, _, err = run_cli(capsys, "cache", "clear", "--cache-dir", cache.folder)
    finally:
        subprocess.run(undo, check=True)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "cannot delete" in err, err
    assert entry.exists()
