"""The file-system checks of the `mpq` command: an output folder is checked before any work and created
only when something is written into it (a run that fails leaves no folder behind)."""

from __future__ import annotations

import os
from pathlib import Path

from mpq.errors import MpqError


def writable_folder(path: str) -> Path:
    """The output folder, checked before any work but created only when something is written into it
    (a run that fails leaves no folder behind)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise MpqError(f"output folder {out} is a file; choose another with --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or not _takes_files(existing):
        raise MpqError(
            f"cannot create output folder {out}: {existing} is not a writable folder; choose another with --out"
        )
    return out


def _takes_files(folder: Path) -> bool:
    """Whether a file can be created in `folder` (root passes os.access on read-only mounts and /proc)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def created(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpqError(f"cannot create output folder {out} ({exc.strerror}); choose another with --out") from None
    return out
