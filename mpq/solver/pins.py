"""Widths the user pins: `--keep NAME=BITS`, `--keep-first BITS`, `--keep-last BITS`.

A pinned layer keeps that weight width whatever the budget; the solver still chooses its
activation width. First and last mean the first and last quantizable layers in execution order.
"""

from __future__ import annotations

import difflib

from mpq.errors import MpqError
from mpq.quant.widths import parse_width


def parse_keep(text: str) -> tuple[str, int]:
    """'layer4.1.conv2=8' -> ('layer4.1.conv2', 8)."""
    name, sep, bits = text.rpartition("=")
    if not sep or not name.strip():
        raise MpqError(f"--keep {text!r} must read NAME=BITS, e.g. --keep fc=8")
    return name.strip(), parse_width(bits.strip(), f"--keep {text}:")


def _known(name: str, layers: list[str]) -> str:
    if name not in layers:
        close = difflib.get_close_matches(name, layers, n=1)
        hint = (
            f"; did you mean {close[0]}?"
            if close
            else f"; the layers are {', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''}"
        )
        raise MpqError(f"cannot keep {name}: no quantizable layer has that name{hint}")
    return name


def resolve_keep(
    layers: list[str],
    keep: "dict[str, int] | None" = None,
    keep_first: int | None = None,
    keep_last: int | None = None,
) -> dict[str, int]:
    """Layer -> pinned weight width; `layers` in execution order. A layer pinned twice to two widths is an error."""
    pins: dict[str, int] = {}
    wanted = list((keep or {}).items())
    if layers and keep_first is not None:
        wanted.append((layers[0], keep_first))
    if layers and keep_last is not None:
        wanted.append((layers[-1], keep_last))
    for name, bits in wanted:
        name = _known(name, layers)
        bits = parse_width(str(bits), f"keep {name}:")
        if pins.get(name, bits) != bits:
            raise MpqError(f"layer {name} is kept at both {pins[name]} and {bits} bits; keep it at one width")
        pins[name] = bits
    return pins
