"""On-disk cache of expensive results, keyed by everything they depend on.

Entries are JSON files named `KIND-HASH.json` (large arrays: numpy's binary `KIND-HASH.npy`, whose sha256 a JSON
entry keeps), HASH the first 32 hex digits of the sha256 of their key; a key holds the model and data fingerprints
and every setting, so a stale entry is never read. Default folder:
$MPQ_CACHE_DIR, else $XDG_CACHE_HOME/mpq, else ~/.cache/mpq.

The folder is capped ($MPQ_CACHE_MAX_BYTES, default 2 GB, 0 = no cap): after each save, while mpq's entries
there total more than the cap, the least recently used (oldest mtime; a load that hits touches its entry)
is deleted, never the entry just written. Only regular files named like entries are counted or deleted.

An entry is `{"sha256": DIGEST, "value": VALUE}` with DIGEST the sha256 of VALUE's JSON text as written:
an entry that is not a regular file (a folder, a link, a FIFO), is not that, or whose digest does not match
(edited, truncated, or another shape of JSON written there) is a miss, as is JSON too deep to read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from mpq.errors import MpqError
from mpq.files import check_writable_folder, write_bytes_atomic

CACHE_VERSION = 2  # 2: entries carry the sha256 of their value
DEFAULT_MAX_BYTES = 2_000_000_000  # 2 GB
MAX_BYTES_ENV = "MPQ_CACHE_MAX_BYTES"
ENTRY_NAME = re.compile(r"^(?P<kind>[a-z0-9][a-z0-9_.-]*)-[0-9a-f]{32}\.(json|npy)$")
_HEAD, _TAIL = b'{"sha256": "', b"}"
_VALUE_AT = len(_HEAD) + 64 + len(b'", "value": ')


def entry_bytes(value) -> bytes:
    """What an entry's file holds: the value's JSON text after its sha256 (see the module docstring)."""
    text = json.dumps(value).encode()
    return _HEAD + hashlib.sha256(text).hexdigest().encode() + b'", "value": ' + text + _TAIL


def entry_value(data: bytes):
    """The value of an entry's bytes; ValueError unless they are an entry whose digest matches."""
    text = data[_VALUE_AT : -len(_TAIL)]
    if not (data.startswith(_HEAD) and data.endswith(_TAIL) and data[_VALUE_AT - 12 : _VALUE_AT] == b'", "value": '):
        raise ValueError("not an mpq cache entry")
    if hashlib.sha256(text).hexdigest().encode() != data[len(_HEAD) : len(_HEAD) + 64]:
        raise ValueError("the value does not match its digest")
    return json.loads(text)


def _read_regular(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file (not a link, FIFO or device); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def default_cache_dir() -> Path:
    if os.environ.get("MPQ_CACHE_DIR"):
        return Path(os.environ["MPQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpq"


def max_bytes_from_environment() -> int:
    """The cap $MPQ_CACHE_MAX_BYTES sets (a whole number of bytes, 0 = no cap), else 2 GB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise MpqError(
            f"{MAX_BYTES_ENV}={text!r} is not a whole number of bytes; set it to e.g. 500000000, or 0 for no cap"
        )
    return value


@dataclass(frozen=True)
class CacheFile:
    """One entry on disk: its path, kind, size in bytes and last use (mtime, seconds since the epoch)."""

    path: Path
    kind: str
    size: int
    mtime: float


class Cache:
    """JSON entries under one folder; `Cache(None)` is a cache that never hits and stores nothing.
    `max_bytes`: the folder's cap (None: $MPQ_CACHE_MAX_BYTES or 2 GB; 0: no cap)."""

    def __init__(self, folder: "str | Path | None", max_bytes: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        if max_bytes is None and self.folder is not None:
            max_bytes = max_bytes_from_environment()
        self.max_bytes = max_bytes or 0

    def _path(self, kind: str, key: dict, suffix: str = ".json") -> Path:
        blob = json.dumps({"version": CACHE_VERSION, "kind": kind, **key}, sort_keys=True).encode()
        return self.folder / f"{kind}-{hashlib.sha256(blob).hexdigest()[:32]}{suffix}"

    def load_array(self, kind: str, key: dict, sha256: str):
        """The numpy array save_array wrote, if its bytes have the digest `sha256` (kept in a JSON entry, which
        carries its own), read without pickle; else None."""
        if self.folder is None:
            return None
        import io

        import numpy as np

        path = self._path(kind, key, ".npy")
        try:
            data = _read_regular(path)
            if hashlib.sha256(data).hexdigest() != sha256:
                return None  # another array, or a poisoned one: computed again
            value = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError):
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return value

    def save_array(self, kind: str, key: dict, array) -> str:
        """A numpy array as a binary .npy entry, written atomically (a float takes its 4 or 8 bytes, not JSON's
        ~24); the sha256 of its bytes, which load_array asks for ("" when nothing is stored)."""
        if self.folder is None:
            return ""
        import io

        import numpy as np

        path = self._path(kind, key, ".npy")
        if os.path.lexists(path) and not path.is_file():
            return ""
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        if self._too_large(len(buffer.getvalue())):
            return ""
        write_bytes_atomic(path, buffer.getvalue())
        self.evict(keep=path)
        return hashlib.sha256(buffer.getvalue()).hexdigest()

    def _too_large(self, size: int) -> bool:
        """An entry over half the cap is not written: it would evict the other entries (a sensitivity that took
        minutes) to make room for itself, e.g. a language model's FP32 logits over its calibration text."""
        return bool(self.max_bytes) and size > self.max_bytes // 2

    def load(self, kind: str, key: dict):
        if self.folder is None:
            return None
        path = self._path(kind, key)
        try:
            value = entry_value(_read_regular(path))
        except (OSError, ValueError, RecursionError):
            return None  # missing, unreadable or poisoned: computed again
        try:
            os.utime(path)  # used now: the last to be evicted
        except OSError:
            pass  # a read-only cache still serves hits
        return value

    def save(self, kind: str, key: dict, value) -> None:
        if self.folder is not None:
            path = self._path(kind, key)
            if os.path.lexists(path) and not path.is_file():
                return  # something else sits at the entry's name (a folder, a link loop): never replaced
            data = entry_bytes(value)
            if self._too_large(len(data)):
                return
            write_bytes_atomic(path, data)
            self.evict(keep=path)

    def delete(self, kind: str, key: dict) -> None:
        if self.folder is not None:
            self._path(kind, key).unlink(missing_ok=True)

    def entry(self, kind: str, key: dict) -> "CacheEntry | None":
        """One entry as an object with load/save/clear (None for a cache that stores nothing)."""
        return None if self.folder is None else CacheEntry(self, kind, key)

    def files(self) -> list[CacheFile]:
        """mpq's entries in the folder (files named like entries only), least recently used first."""
        if self.folder is None:
            return []
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise MpqError(
                f"cache folder {self.folder} is a file; give a folder with --cache-dir or $MPQ_CACHE_DIR"
            ) from None
        except OSError as exc:
            raise MpqError(
                f"cannot list the cache folder {self.folder} ({exc.strerror}): check its permissions, or give "
                "another with --cache-dir or $MPQ_CACHE_DIR"
            ) from None
        found = []
        for name in names:
            match = ENTRY_NAME.match(name)
            if match is None:
                continue
            try:
                st = os.lstat(self.folder / name)
            except OSError:
                continue  # deleted meanwhile by another run
            if not stat.S_ISREG(st.st_mode):
                continue  # a folder or link named like an entry is not mpq's to count or delete
            found.append(CacheFile(self.folder / name, match["kind"], st.st_size, st.st_mtime))
        return sorted(found, key=lambda f: (f.mtime, f.path.name))

    def evict(self, keep: "Path | None" = None) -> list[CacheFile]:
        """Delete the least recently used entries until the folder's entries total at most the cap (never
        `keep`); the entries deleted. Nothing with no cap."""
        if not self.max_bytes:
            return []
        files = self.files()
        total = sum(f.size for f in files)
        deleted = []
        for f in files:
            if total <= self.max_bytes:
                break
            if keep is not None and f.path == keep:
                continue
            try:
                f.path.unlink()
            except FileNotFoundError:
                pass  # another run evicted it first
            except OSError:
                continue  # not this user's to delete: left, and still counted
            total -= f.size
            deleted.append(f)
        return deleted

    def clear(self) -> list[CacheFile]:
        """Delete every entry of mpq's in the folder (nothing else); the entries deleted."""
        deleted = []
        for f in self.files():
            try:
                f.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise MpqError(
                    f"cannot delete {f.path} ({exc.strerror}) after deleting {len(deleted)} entries: "
                    "clear the cache as a user who may write its folder"
                ) from None
            deleted.append(f)
        return deleted


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
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise MpqError(
            f"cache_dir must be a folder (a str or Path), None for the default or False for none, not {cache_dir!r}"
        )
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    check_writable_folder(
        folder,
        "the cache folder",
        "choose another with --cache-dir (cache_dir=), or run without a cache (--no-cache, cache_dir=False)",
    )
    return Cache(folder)
