"""How the report files write a number."""

from __future__ import annotations


def pct(value: float | None) -> str:
    """A share (0-1) as a percentage with one decimal; "-" when unknown."""
    return "-" if value is None else f"{100 * value:.1f}%"
