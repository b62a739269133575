"""Bit widths, their bounds stated once: a plan may name any whole width from PLAN_MIN_BITS to
PLAN_MAX_BITS (1-16); mpq's quantizer (mpq.quant.affine) supports MIN_BITS to MAX_BITS (2-8). And how many
weight scales a channel has at a group size (the quantizer's and the byte model's one count). No torch here."""

from __future__ import annotations

from mpq.errors import MpqError

MIN_BITS, MAX_BITS = 2, 8  # what mpq's quantizer supports
PLAN_MIN_BITS, PLAN_MAX_BITS = 1, 16  # what a plan file may hold
ALL_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))


def is_plan_width(value) -> bool:
    """Whether `value` is a whole number of bits a plan may hold."""
    return isinstance(value, int) and not isinstance(value, bool) and PLAN_MIN_BITS <= value <= PLAN_MAX_BITS


def check_bits(bits: int) -> int:
    """`bits` if mpq's quantizer supports it (2-8); otherwise an MpqError that says which widths to use."""
    if not is_plan_width(bits):
        raise MpqError(
            f"width {bits!r} is outside {PLAN_MIN_BITS}-{PLAN_MAX_BITS} bits; mpq's quantizer supports {MIN_BITS} "
            f"to {MAX_BITS}: choose widths from {MIN_BITS} to {MAX_BITS}"
        )
    if not MIN_BITS <= bits <= MAX_BITS:
        raise MpqError(
            f"width {bits} is a valid plan width ({PLAN_MIN_BITS}-{PLAN_MAX_BITS}) but mpq's quantizer supports "
            f"only {MIN_BITS} to {MAX_BITS}: choose widths from {MIN_BITS} to {MAX_BITS}"
        )
    return bits


def parse_width(text: str, where: str) -> int:
    """`text` as a plan width; `where` opens the message (e.g. "line 7: weight_bits", "--keep fc=x:")."""
    try:
        bits = int(text)
    except ValueError:
        raise MpqError(f"{where} {text!r} is not a whole number of bits, e.g. 8") from None
    if not is_plan_width(bits):
        raise MpqError(f"{where} {bits} bits is not a width from {PLAN_MIN_BITS} to {PLAN_MAX_BITS}")
    return bits


def groups_per_channel(per_channel: int, group_size: int | None) -> int:
    """ceil(n / g): the scales of one output channel of n weights (1 without a group size)."""
    return 1 if group_size is None else -(-per_channel // group_size)
