"""The versions a result was made with: mpq itself and the packages its numbers depend on.

The one place that reads them (plan.json and report.json keep them under "versions"; `mpq --version`).
Read from the installed packages' metadata, never by importing them (torch takes seconds to import).
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "pulp", "highspy")  # what plans and measurements depend on (highspy: the solver)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@functools.lru_cache(maxsize=None)
def mpq_version() -> str:
    """mpq's version: the installed package's metadata, or pyproject.toml's in a source checkout that is not
    installed."""
    try:
        return metadata.version("mpq")
    except metadata.PackageNotFoundError:
        return pyproject_version()


def pyproject_version(path: Path = PYPROJECT) -> str:
    """The `version` of pyproject.toml's [project] table ("unknown" when there is none to read)."""
    try:
        text = path.read_text()
    except OSError:
        return "unknown"
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), flags=re.M) if project else None
    return found.group(1) if found else "unknown"


def versions() -> dict[str, str | None]:
    """{"mpq": ..., "torch": ..., "numpy": ..., "pulp": ..., "highspy": ...}; None for a package not installed
    (a new dict each call)."""
    return dict(_installed())


@functools.lru_cache(maxsize=None)
def _installed() -> dict[str, str | None]:
    found: dict[str, str | None] = {"mpq": mpq_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
