"""Budgets in physical units: bytes, bit operations, seconds, bits per weight.

Grammar: a positive number followed by a unit.
    size:    B, KB, MB, GB (powers of 10), KiB, MiB, GiB (powers of 2)   e.g. 4MB, 3.5MiB, 123456B
    BOPs:    BOPs, KBOPs, MBOPs, GBOPs, TBOPs                            e.g. 20GBOPs
    latency: s, ms, us                                                   e.g. 2.5ms, 800us
    bits per weight: bpw                                                 e.g. 4.25bpw
A bits-per-weight budget bounds the quantized layers' packed code and scale bits over their weight count
(mpq.cost.layer_cost); float tensors do not count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from mpq.cost.costs import CostKind
from mpq.errors import MpqError
from mpq.params import Custom, Real, Text, check_fields

SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
BOPS_UNITS = {"bops": 1, "kbops": 1e3, "mbops": 1e6, "gbops": 1e9, "tbops": 1e12}
LATENCY_UNITS = {"s": 1, "ms": 1e-3, "us": 1e-6}
PER_WEIGHT_UNITS = {"bpw": 1}
KIND_OF_UNIT = (
    {u: CostKind.SIZE_BYTES for u in SIZE_UNITS}
    | {u: CostKind.BOPS for u in BOPS_UNITS}
    | {u: CostKind.LATENCY_S for u in LATENCY_UNITS}
    | {u: CostKind.BITS_PER_WEIGHT for u in PER_WEIGHT_UNITS}
)
SCALE_OF_UNIT = SIZE_UNITS | BOPS_UNITS | LATENCY_UNITS | PER_WEIGHT_UNITS
KINDS = tuple(k.value for k in CostKind)
# A plan's bits per weight adds up per-layer shares (bits / all weights) in floats, so a plan exactly at the limit
# can read a few ulps over it; far below one byte's share of any model under 10^11 weights.
PER_WEIGHT_SLACK = 1e-12

_BUDGET = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]+)\s*$")


BUDGET_CONSTRAINTS = {
    "kind": Custom(CostKind, f"a CostKind or one of {', '.join(KINDS)}"),
    "limit": Real(0, closed="right", phrase="a positive finite number in the kind's unit (bytes, BOPs, s, bpw)"),
    "text": Text("the budget as written, e.g. '4MB'"),
}


@dataclass(frozen=True)
class Budget:
    """An upper limit on one cost: `kind` a CostKind (or its string: size_bytes, bops, latency_s, bits_per_weight)."""

    kind: CostKind
    limit: float
    text: str

    def __post_init__(self) -> None:
        check_fields(self, BUDGET_CONSTRAINTS)

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "limit": self.limit, "text": self.text}

    @classmethod
    def from_json(cls, data: dict) -> "Budget":
        """A budget as plan.json stores it; ValueError for an unknown kind or a limit that is not a positive finite
        number."""
        kind, limit = data["kind"], float(data["limit"])
        if kind not in KINDS:
            raise ValueError(f"budget kind {kind!r} is not one of {', '.join(KINDS)}")
        if not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"budget {data.get('text', limit)!r} has limit {limit}, not a positive finite number")
        return cls(kind=kind, limit=limit, text=str(data["text"]))


def parse_budget(text: "str | Budget") -> Budget:
    """Parse "4MB", "20GBOPs", "2.5ms" ... into a Budget."""
    if isinstance(text, Budget):
        return text
    match = _BUDGET.match(str(text))
    if not match:
        raise MpqError(
            f"cannot read budget {text!r}: write a number and a unit, e.g. 4MB, 3.5MiB, 20GBOPs, 2.5ms or 4.25bpw"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in KIND_OF_UNIT:
        raise MpqError(
            f"unknown budget unit {match.group(2)!r} in {text!r}: use B, KB, MB, GB, KiB, MiB, GiB, "
            "BOPs, KBOPs, MBOPs, GBOPs, TBOPs, s, ms, us or bpw"
        )
    limit = number * SCALE_OF_UNIT[unit]
    if not math.isfinite(limit) or limit <= 0:
        raise MpqError(f"budget {text!r} must be a positive number of {match.group(2)}")
    if KIND_OF_UNIT[unit] == CostKind.SIZE_BYTES:
        limit = float(math.floor(limit))
    return Budget(kind=KIND_OF_UNIT[unit], limit=limit, text=str(text).strip())


def format_bytes(size_bytes: float, round_up: bool = False) -> str:
    """4012345 -> '4,012,345 B (4.01 MB)'; `round_up` rounds a fractional byte count up, never down."""
    whole = math.ceil(size_bytes) if round_up else int(size_bytes)
    return f"{whole:,} B ({size_bytes / 1e6:.2f} MB)"


BOPS_PREFIXES = (("TBOPs", 1e12), ("GBOPs", 1e9), ("MBOPs", 1e6), ("KBOPs", 1e3), ("BOPs", 1.0))
LATENCY_PREFIXES = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6))
PER_WEIGHT_PREFIXES = (("bpw", 1.0),)


def _scaled(value: float, prefixes: tuple[tuple[str, float], ...], round_up: bool) -> str:
    """`value` in the largest unit that keeps it >= 1, to 6 significant digits; `round_up` never rounds it down,
    so that the printed text, given back as a budget, is still at least `value`."""
    unit, scale = next(((u, f) for u, f in prefixes if abs(value) >= f), prefixes[-1])
    number = value / scale
    digits = max(0, 5 - math.floor(math.log10(abs(number)))) if number else 0
    if round_up:
        step = 10.0**-digits
        text = f"{math.ceil(number / step - 1e-9) * step:.{digits}f}"
        while float(text) * scale < value:  # float division can land a hair low
            text = f"{float(text) + step:.{digits}f}"
    else:
        text = f"{number:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def format_cost(kind: CostKind, value: float, round_up: bool = False) -> str:
    """A cost in its natural unit: bytes, BOPs (K/M/G/T), seconds (s/ms/us), bits per weight.
    `round_up`: never below `value`."""
    if kind == CostKind.SIZE_BYTES:
        return format_bytes(value, round_up)
    if kind == CostKind.BOPS:
        return _scaled(value, BOPS_PREFIXES, round_up)
    if kind == CostKind.BITS_PER_WEIGHT:
        return _scaled(value, PER_WEIGHT_PREFIXES, round_up)
    return _scaled(value, LATENCY_PREFIXES, round_up)


def as_budgets(budget) -> list[Budget]:
    """One budget or a list of them, each a string such as "4MB" or a Budget."""
    items = (
        [budget] if isinstance(budget, (str, Budget)) else list(budget) if isinstance(budget, (list, tuple)) else None
    )
    if not items or not all(isinstance(b, (str, Budget)) for b in items):
        raise MpqError(
            'budget must be a string with a unit such as "4MB", "20GBOPs", "2.5ms" or "4.25bpw" (or a list of them), '
            f"not {budget!r}"
        )
    return [parse_budget(b) for b in items]


def within_budgets(costs: "Mapping[CostKind, float]", budgets: "list[Budget]", latency_known: bool) -> bool:
    """Whether every budget holds: the one rule for plans, baselines and sweep points. A cost the plan
    lacks fails its budget (it cannot be shown to hold), except a latency budget when no latency model
    is given, which cannot be checked and is skipped."""
    checked = [b for b in budgets if b.kind != CostKind.LATENCY_S or latency_known]
    return all(not exceeds(b, costs.get(b.kind, math.inf)) for b in checked)


def exceeds(budget: Budget, cost: float) -> bool:
    """Whether `cost` is over `budget` (bits per weight with PER_WEIGHT_SLACK, see there)."""
    slack = PER_WEIGHT_SLACK * budget.limit if budget.kind == CostKind.BITS_PER_WEIGHT else 0.0
    return cost > budget.limit + slack
