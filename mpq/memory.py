"""Peak memory per phase of a run (report.json's peak_memory_bytes["phases"]).

The process's peak resident memory is a high-water mark that only grows; on Linux writing 5 to
/proc/self/clear_refs resets it to the current resident size (VmHWM in /proc/self/status), so each phase's
own peak can be read at its end. Elsewhere a phase reports the process's peak so far. With CUDA, the GPU's
peak allocation is reset per phase the same way (torch.cuda.reset_peak_memory_stats).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _high_water_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water() -> bool:
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hands the C allocator's free pages back to the system (glibc: malloc_trim). Tensors of a few MB (a batch's
    activations) are freed into the allocator's heap, not to the system, so without it resident memory keeps the
    high-water mark of every earlier batch and phase; called between batches, layers and phases."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _cuda_used() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class PhasePeaks:
    """{phase: {"ram": bytes[, "gpu": bytes]}} of a run's phases, each closed by `close(name)` at its end (the next
    one starts there), and the whole run's peak."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, int]] = {}
        self.overall = {"ram": _max_rss_bytes()}  # the reset lowers the process's own mark: kept here
        self._reset = self._start()

    def _start(self) -> bool:
        if _cuda_used():
            torch.cuda.reset_peak_memory_stats()
        return _reset_high_water()

    def close(self, name: str) -> None:
        """The phase since the last close (or since the start) is `name`: its peaks recorded, the next one begun."""
        release_free_memory()
        ram = (_high_water_bytes() if self._reset else None) or _max_rss_bytes()
        peaks = {"ram": ram}
        if _cuda_used():
            peaks["gpu"] = int(torch.cuda.max_memory_allocated())
            self.overall["gpu"] = max(self.overall.get("gpu", 0), peaks["gpu"])
        self.phases[name] = peaks
        self.overall["ram"] = max(self.overall["ram"], ram, _max_rss_bytes())
        self._reset = self._start()

    def to_json(self) -> dict:
        """The whole run's peaks (the keys of process_peak_memory) and "phases"."""
        return {**self.overall, "phases": dict(self.phases)}
