"""Atomic file writes: a unique temporary file in the same folder, then a rename. A crash leaves no half
file, two writers of one path never share a temporary file, and the file ends with the mode a plain
`open(path, "w")` would give it: 0o666 less the user's umask (mkstemp's own 0o600 does not survive)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpq.errors import MpqError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (/proc), else by setting
    and restoring it at once (to 0o077, so that a file another thread makes meanwhile is private, not open)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def default_mode() -> int:
    """The mode of a newly created file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"))


def _special_kind(path: "str | Path", cannot: str, then: str) -> str | None:
    """What `path` is when it exists and is not a regular file (a link to one counts), else None; an error reading it
    is one MpqError: `cannot` (the cause): `then`."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MpqError(f"{cannot} ({exc.strerror or type(exc).__name__}): {then}") from None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def check_replaceable(path: "str | Path") -> None:
    """MpqError unless `path` is missing or a regular file: the rename that ends an atomic write would otherwise
    replace a device such as /dev/null, a FIFO or a socket with a plain file."""
    kind = _special_kind(path, f"cannot write {path}", "choose another path")
    if kind:
        raise MpqError(f"{path} is {kind}, not a regular file, and mpq never replaces one: give the path of a file")


def check_readable_file(path: "str | Path", what: str) -> None:
    """MpqError when `path` exists but is not a regular file: reading a FIFO or a device waits forever
    or never ends (a missing path is left to the reader, which says so in its own words)."""
    kind = _special_kind(path, f"cannot read {what} {path}", "check the path")
    if kind:
        raise MpqError(f"{what} {path} is {kind}, not a regular file: give the path of a file")


@contextmanager
def atomic_path(path: "str | Path") -> Iterator[Path]:
    """A unique temporary path next to `path`, ending in `path`'s suffix (so that writers which pick the
    format by the extension, such as matplotlib, pick the right one). When the block ends normally the
    file gets `default_mode()` and is renamed onto `path`; when it raises the file is removed. A `path`
    that is neither missing nor a regular file is refused first (check_replaceable)."""
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a quota: one line, and no half file left
            raise _cannot_write(path, exc) from None
        raise


def _cannot_write(path: Path, exc: OSError) -> MpqError:
    return MpqError(
        f"cannot write {path} ({exc.strerror or type(exc).__name__}): free some space or choose another folder"
    )


def write_bytes_atomic(path: "str | Path", data: bytes) -> None:
    """Write `data` to `path` through a temporary file; MpqError (one line) when the folder cannot take it."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable_folder(folder: Path, what: str, how: str) -> None:
    """MpqError unless a file can be created in `folder`, or in its nearest existing parent when it does not
    exist yet (nothing is left behind; the folder itself is not created)."""
    if folder.exists() and not folder.is_dir():
        raise MpqError(f"{what} {folder} is a file, not a folder: {how}")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise MpqError(
            f"cannot write {what} {folder}: {existing} does not take new files "
            f"({exc.strerror or type(exc).__name__}); {how}"
        ) from None


def write_text_atomic(path: "str | Path", text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: "str | Path", data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
