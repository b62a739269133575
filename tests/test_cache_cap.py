"""The cache's size cap (least recently used entries go first, never the one just written) and
`mpq cache info` / `mpq cache clear` on a real cache folder."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
from helpers import run_cli

from mpq.cache import DEFAULT_MAX_BYTES, Cache, open_cache
from mpq.errors import MpqError

T0 = 1_700_000_000  # mtimes set by the tests, one minute apart


def fill(cache: Cache, n: int) -> list:
    """n entries of kind 'fp32', entry i last used at T0 + 60 i; their paths."""
    paths = []
    for i in range(n):
        cache.save("fp32", {"i": i}, {"logits": [0.5] * 50})
        path = cache._path("fp32", {"i": i})
        os.utime(path, (T0 + 60 * i, T0 + 60 * i))
        paths.append(path)
    return paths


def names(cache: Cache) -> list[str]:
    return [f.path.name for f in cache.files()]


def test_the_cap_evicts_the_least_recently_used_first(tmp_path):
    cache = Cache(tmp_path, max_bytes=0)  # no cap while filling
    paths = fill(cache, 5)
    size = paths[0].stat().st_size
    assert all(p.stat().st_size == size for p in paths) and size > 200
    (tmp_path / "notes.json").write_text("x" * 10 * size)  # not mpq's: neither counted nor deleted
    capped = Cache(tmp_path, max_bytes=3 * size)
    capped.save("fp32", {"i": "new"}, {"logits": [0.5] * 50})
    new = capped._path("fp32", {"i": "new"})
    assert new.stat().st_size == size
    # six entries, room for three: the three oldest (0, 1, 2) go, the two newest and the new one stay
    assert sorted(names(capped)) == sorted(p.name for p in [paths[3], paths[4], new])
    assert sum(f.size for f in capped.files()) == 3 * size
    assert (tmp_path / "notes.json").exists()


def test_a_load_hit_makes_an_entry_recent(tmp_path):
    paths = fill(Cache(tmp_path, max_bytes=0), 3)
    size = paths[0].stat().st_size
    cache = Cache(tmp_path, max_bytes=3 * size)
    assert cache.load("fp32", {"i": 0}) == {"logits": [0.5] * 50}  # the oldest, used now
    assert paths[0].stat().st_mtime > T0 + 120
    cache.save("fp32", {"i": 3}, {"logits": [0.5] * 50})
    assert not paths[1].exists()  # now the least recently used
    assert paths[0].exists() and paths[2].exists() and cache._path("fp32", {"i": 3}).exists()


def test_the_entry_just_written_is_never_evicted(tmp_path):
    paths = fill(Cache(tmp_path, max_bytes=0), 2)
    size = paths[0].stat().st_size
    cache = Cache(tmp_path, max_bytes=2 * size)
    cache.save("measurement", {"k": 1}, {"top1": 0.75, "pad": "x" * (size // 2)})
    written = cache._path("measurement", {"k": 1})
    assert size // 2 < written.stat().st_size <= size and written.exists() and not paths[0].exists()
    assert cache.load("measurement", {"k": 1})["top1"] == 0.75


def test_an_entry_over_half_the_cap_is_not_written_and_evicts_nothing(tmp_path):
    """A language model's FP32 logits over its calibration text would otherwise push out the sensitivity."""
    paths = fill(Cache(tmp_path, max_bytes=0), 3)
    cache = Cache(tmp_path, max_bytes=4 * paths[0].stat().st_size)
    cache.save("measurement", {"k": 1}, {"logits": [0.25] * 1000})
    assert cache.load("measurement", {"k": 1}) is None and all(p.exists() for p in paths)
    import numpy as np

    assert cache.save_array("fp32-logits", {"k": 2}, np.zeros(10_000, np.float32)) == ""
    assert all(p.exists() for p in paths) and len(cache.files()) == 3


def test_the_cap_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MPQ_CACHE_MAX_BYTES", raising=False)
    assert open_cache(tmp_path).max_bytes == DEFAULT_MAX_BYTES == 2_000_000_000
    monkeypatch.setenv("MPQ_CACHE_MAX_BYTES", "0")
    paths = fill(open_cache(tmp_path), 4)
    assert all(p.exists() for p in paths)  # 0: no cap
    monkeypatch.setenv("MPQ_CACHE_MAX_BYTES", str(2 * paths[0].stat().st_size))
    open_cache(tmp_path).save("fp32", {"i": 9}, {"logits": [0.5] * 50})
    assert [p.exists() for p in paths] == [False, False, False, True]
    monkeypatch.setenv("MPQ_CACHE_MAX_BYTES", "2GB")
    with pytest.raises(MpqError, match="MPQ_CACHE_MAX_BYTES='2GB' is not a whole number of bytes"):
        open_cache(tmp_path)
    assert open_cache(False).max_bytes == 0  # --no-cache reads no setting


def iso(mtime: float) -> str:
    return datetime.fromtimestamp(mtime).astimezone().isoformat(timespec="seconds")


def test_cache_info_and_clear_report_real_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MPQ_CACHE_MAX_BYTES", raising=False)
    folder = tmp_path / "cache"
    cache = Cache(folder, max_bytes=0)
    paths = fill(cache, 3)
    cache.save("sensitivity", {"model": "m"}, {"traces": list(range(100))})
    sens = cache._path("sensitivity", {"model": "m"})
    os.utime(sens, (T0 + 600, T0 + 600))
    (folder / "README.txt").write_text("mine")
    (folder / "notes.json").write_text("{}")
    total = sum(p.stat().st_size for p in [*paths, sens])

    status, out, err = run_cli(capsys, "cache", "info", "--cache-dir", folder, "--json")
    assert status == 0 and err == ""
    assert json.loads(out) == {
        "folder": str(folder),
        "entries": 4,
        "bytes": total,
        "max_bytes": DEFAULT_MAX_BYTES,
        "oldest": iso(T0),
        "newest": iso(T0 + 600),
        "kinds": {"fp32": 3, "sensitivity": 1},
    }
    status, out, _ = run_cli(capsys, "cache", "info", "--cache-dir", folder)
    assert status == 0
    assert "entries: 4 (fp32 3, sensitivity 1)" in out and f"size:    {total:,} bytes" in out and iso(T0) in out

    status, out, _ = run_cli(capsys, "cache", "clear", "--cache-dir", folder, "--json")
    assert status == 0
    assert json.loads(out) == {"folder": str(folder), "deleted_entries": 4, "freed_bytes": total}
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "notes.json"]  # only mpq's files went

    status, out, _ = run_cli(capsys, "cache", "clear", "--cache-dir", folder)
    assert (status, out) == (0, f"deleted 0 cache entries from {folder}, freed 0 bytes\n")


def test_cache_commands_default_to_mpq_cache_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MPQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MPQ_CACHE_MAX_BYTES", "0")
    fill(Cache(tmp_path), 2)
    status, out, _ = run_cli(capsys, "cache", "info", "--json")
    info = json.loads(out)
    assert status == 0 and (info["folder"], info["entries"], info["max_bytes"]) == (str(tmp_path), 2, 0)
    status, out, _ = run_cli(capsys, "cache", "info")
    assert "no cap" in out


def test_cache_commands_refuse_a_file_as_the_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    status, out, err = run_cli(capsys, "cache", "info", "--cache-dir", tmp_path / "f")
    assert status == 2 and out == ""
    assert (
        err
        == f"mpq: error: cache folder {tmp_path / 'f'} is a file; give a folder with --cache-dir or $MPQ_CACHE_DIR\n"
    )
    status, _, err = run_cli(capsys, "cache", "purge")
    assert status == 2 and "invalid choice: 'purge'" in err
