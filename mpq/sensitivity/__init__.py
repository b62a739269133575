"""Sensitivity: Omega_l(b) of every layer at every width (and per channel) under one metric.

The analysis itself (`analyze_prepared`: one context, the metric's estimate, the error tables) is in
mpq.sensitivity.analysis, the metrics in mpq.sensitivity.registry; this package gives its names lazily (PEP 562), so
that importing a light
module of it (mpq.sensitivity.settings, mpq.sensitivity.registry: what the `mpq` parser needs) does
not import torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_NAMES = {
    "analyze_prepared": "mpq.sensitivity.analysis",
    "CACHE_KINDS": "mpq.sensitivity.analysis",
    "REFERENCE_BATCH": "mpq.sensitivity.analysis",
    "Sensitivity": "mpq.sensitivity.result",
    "LayerSensitivity": "mpq.sensitivity.result",
    "ProbeSettings": "mpq.sensitivity.settings",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name.startswith("__") or (Path(__file__).parent / f"{name}.py").exists():
        raise AttributeError(
            f"module 'mpq.sensitivity' has no attribute {name!r}"
        )  # a submodule: the import system loads it
    module = importlib.import_module(_NAMES.get(name, "mpq.sensitivity.analysis"))
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'mpq.sensitivity' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
