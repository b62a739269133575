"""On-disk cache of expensive results, keyed by everything they depend on.

Entries are JSON files named by the sha256 of their key; a key holds the model and data
fingerprints and every setting, so a stale entry is never read. Default folder:
$MPQ_CACHE_DIR, else $XDG_CACHE_HOME/mpq, else ~/.cache/mpq.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mpq.files import write_json_atomic
from mpq.files import check_writable_folder

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("MPQ_CACHE_DIR"):
        return Path(os.environ["MPQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpq"


class Cache:
    """JSON entries under one folder; `Cache(None)` is a cache that never hits and stores nothing."""

    def __init__(self, folder: "str | Path | None") -> None:
        self.folder = Path(folder) if folder is not None else None

    def _path(self, kind: str, key: dict) -> Path:
        blob = json.dumps({"version": CACHE_VERSION, "kind": kind, **key}, sort_keys=True).encode()
        return self.folder / f"{kind}-{hashlib.sha256(blob).hexdigest()[:32]}.json"

    def load(self, kind: str, key: dict):
        if self.folder is None:
            return None
        path = self._path(kind, key)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, kind: str, key: dict, value) -> None:
        if self.folder is not None:
            write_json_atomic(self._path(kind, key), value)

    def delete(self, kind: str, key: dict) -> None:
        if self.folder is not None:
            self._path(kind, key).unlink(missing_ok=True)

    def entry(self, kind: str, key: dict) -> "CacheEntry | None":
        """One entry as an object with load/save/clear (None for a cache that stores nothing)."""
        return None if self.folder is None else CacheEntry(self, kind, key)


class CacheEntry:
    """One keyed entry: used for checkpoints that are rewritten (atomically) as work goes on."""

    def __init__(self, cache: Cache, kind: str, key: dict) -> None:
        self.cache, self.kind, self.key = cache, kind, key

    def load(self):
        return self.cache.load(self.kind, self.key)

    def save(self, value) -> None:
        self.cache.save(self.kind, self.key, value)

    def clear(self) -> None:
        self.cache.delete(self.kind, self.key)


def open_cache(cache_dir) -> Cache:
    """The cache in `cache_dir` (None: the default folder; False: none), checked writable before any work."""
    if cache_dir is False:
        return Cache(None)
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    check_writable_folder(folder, "the cache folder", "choose another with --cache-dir (cache_dir=), or run without a cache (--no-cache, cache_dir=False)")
    return Cache(folder)
