"""Progress of the long phases (probing, per-layer measurements, plans measured) on stderr, by tqdm.

The rule: quiet when stderr is not a terminal (a pipe, a log file, a test's capture) unless asked.
Every `progress` parameter is True (always show), False (never) or None (the default: only when
sys.stderr is a terminal). Library modules never print: they show a `bar` or write a `note`; only
the command line (mpq.cli) writes results to stdout.

    with bar(total=len(layers), desc="eigenvalue", progress=progress, unit="layer") as b:
        for layer in layers:
            ...
            b.update(1)
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm


def enabled(progress: bool | None) -> bool:
    """True or False as given; None: only when stderr is a terminal."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty is not None and isatty())
    return bool(progress)


class _Quiet:
    """What `bar` gives when progress is off: the same calls, doing nothing."""

    def __init__(self, initial: int = 0) -> None:
        self.n = initial

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass


@contextmanager
def bar(
    total: float | None, desc: str, progress: bool | None = None, unit: str = "it", initial: float = 0
) -> Iterator["tqdm | _Quiet"]:
    """A tqdm bar on stderr (count, rate, ETA) when `enabled(progress)`, else an object that does nothing.
    Both have `update(n)`, `set_postfix_str(text)` and `n` (the count so far)."""
    if not enabled(progress):
        yield _Quiet(initial)
        return
    with tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=True) as shown:
        yield shown


def note(text: str, progress: bool | None = None) -> None:
    """One line on stderr when `enabled(progress)` (above a bar that is showing, if any)."""
    if enabled(progress):
        tqdm.write(text, file=sys.stderr)
