"""The types of the `mpq` options: argparse converters that turn text into widths, counts and switches."""

from __future__ import annotations

import argparse

from mpq.errors import MpqError


def widths_type(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths such as 4,6,8") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one width, e.g. 4,8")
    from mpq.quant.widths import check_bits

    for v in values:
        try:
            check_bits(v)
        except MpqError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return values


def _whole_at_least(least: int):
    """An argparse type: a whole number of at least `least`."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} must be {least} or more")
        return value

    return whole


positive = _whole_at_least(1)  # batch sizes, repeats, threads
count = _whole_at_least(0)  # counts that may be 0 (warm-up calls, proxy plans: 0 is off)


def fraction(text: str) -> float:
    """A share from 0 up to (not including) 1, e.g. --eval-split 0.25."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a fraction such as 0.25") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 up to, not including, 1")
    return value


def act_bits_type(text: str) -> tuple[int | None, ...]:
    widths = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item.lower() in ("none", "float", "off"):
            widths.append(None)
            continue
        if item == "0":  # not a width: said once as float, it would hide a typo
            raise argparse.ArgumentTypeError("0 is not an activation width: write 'none' to keep activations in float")
        try:
            widths.append(int(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of widths such as 4,8, or 'none'"
            ) from None
    if not widths:
        raise argparse.ArgumentTypeError("give at least one activation width, e.g. 8 or 4,8, or 'none'")
    return tuple(widths)


def group_size_type(text: str) -> int | None:
    """--group-size: a power of two (mpq.quant.quantizer.check_group_size), or 'none' for one scale per
    output channel."""
    if text.strip().lower() in ("none", "channel", "off"):
        return None
    from mpq.quant.quantizer import check_group_size

    try:
        return check_group_size(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of weights such as 32, 64 or 128, or 'none'"
        ) from None
    except MpqError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def verify_points_type(text: str) -> "int | str":
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of points or 'all'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off")
