"""Atomic file writes: a temporary file in the same folder, then a rename. A crash leaves no half file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mpq.errors import MpqError


def write_bytes_atomic(path: "str | Path", data: bytes) -> None:
    """Write `data` to `path` through a temporary file; MpqError (one line) when the folder cannot take it."""
    path = Path(path)
    try:
        _write(path, data)
    except OSError as exc:
        raise MpqError(f"cannot write {path} ({exc.strerror or type(exc).__name__}): free some space or choose another folder") from None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        raise MpqError(f"cannot write {what} {folder}: {existing} does not take new files ({exc.strerror or type(exc).__name__}); {how}") from None


def write_text_atomic(path: "str | Path", text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: "str | Path", data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
