"""Bit widths as users write them: whole numbers from 1 to 16 (a plan may name any of these; the
quantizer itself supports 2 to 8, see mpq.quant.affine)."""

from __future__ import annotations

from mpq.errors import MpqError

MAX_PLAN_BITS = 16


def parse_width(text: str, where: str) -> int:
    """`text` as a width; `where` opens the message (e.g. "line 7: weight_bits", "--keep fc=x:")."""
    try:
        bits = int(text)
    except ValueError:
        raise MpqError(f"{where} {text!r} is not a whole number of bits, e.g. 8") from None
    if not 1 <= bits <= MAX_PLAN_BITS:
        raise MpqError(f"{where} {bits} bits is not a width from 1 to {MAX_PLAN_BITS}")
    return bits
