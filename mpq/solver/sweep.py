"""The budgets of a Pareto sweep: "LOW:HIGH[:STEPS]" ranges or lists of budgets of one kind, and which
of the points are verified."""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from mpq.cost.budget import SCALE_OF_UNIT, Budget, as_budgets, parse_budget
from mpq.cost.costs import CostKind
from mpq.errors import MpqError

SWEEP_KINDS = (CostKind.SIZE_BYTES, CostKind.BOPS, CostKind.BITS_PER_WEIGHT)


DEFAULT_STEPS = 30


DEFAULT_VERIFY_POINTS = 6


_RANGE = re.compile(r"^\s*([^:]+):([^:]+?)(?::\s*([0-9]+))?\s*$")


_UNIT = re.compile(r"[A-Za-z]+\s*$")


def _unit(text: str) -> str:
    match = _UNIT.search(text)
    if not match:
        raise MpqError(f"cannot read budget {text!r}: write a number and a unit, e.g. 4MB or 20GBOPs")
    return match.group(0).strip()


def _sweep_kind(budgets: list[Budget]) -> str:
    kinds = {b.kind for b in budgets}
    if len(kinds) > 1:
        raise MpqError(
            f"the budgets of one sweep must be of one kind, not {' and '.join(sorted(kinds))}; give others with "
            "--also-budget"
        )
    kind = kinds.pop()
    if kind not in SWEEP_KINDS:
        raise MpqError(
            "a sweep runs over sizes (e.g. 2MB:6MB), BOPs (e.g. 10GBOPs:40GBOPs) or bits per weight (e.g. "
            f"3bpw:6bpw), not {kind}"
        )
    return kind


def budget_range(low: Budget, high: Budget, steps: int, unit: str) -> list[Budget]:
    """`steps` budgets evenly spaced from `low` to `high`, each written in `unit` to 6 significant digits
    (whole bytes for B) and read back from that text, so that text and limit agree."""
    if steps < 2:
        raise MpqError(f"a budget range needs at least 2 steps, not {steps}")
    if not low.limit < high.limit:
        raise MpqError(f"a budget range goes from the smaller to the larger budget: {low.text}:{high.text}")
    scale = SCALE_OF_UNIT[unit.lower()]
    values = np.linspace(low.limit, high.limit, steps)
    if unit.lower() == "b":  # whole bytes
        return [parse_budget(f"{int(v)}B") for v in values]
    return [parse_budget(f"{v / scale:.6g}{unit}") for v in values]


def parse_sweep(spec: "str | Budget | Iterable[str | Budget]") -> list[Budget]:
    """Sweep budgets from "2MB:6MB" (30 steps), "2MB:6MB:STEPS", "2MB,3MB,4MB" or a list; sorted, one kind."""
    if isinstance(spec, str) and ":" in spec:
        match = _RANGE.match(spec)
        if not match:
            raise MpqError(f"cannot read budget range {spec!r}: write LOW:HIGH or LOW:HIGH:STEPS, e.g. 2MB:6MB:30")
        low, high = parse_budget(match.group(1)), parse_budget(match.group(2))
        _sweep_kind([low, high])
        budgets = budget_range(low, high, int(match.group(3) or DEFAULT_STEPS), _unit(match.group(2)))
    else:
        items = [b for b in spec.split(",") if b.strip()] if isinstance(spec, str) else spec
        budgets = as_budgets(items)
    _sweep_kind(budgets)
    unique = {b.limit: b for b in budgets}
    return [unique[limit] for limit in sorted(unique)]


def verified_indices(count: int, wanted: "int | str") -> list[int]:
    """`wanted` indices evenly spread over range(count), both ends included; "all" gives every one."""
    if wanted == "all":
        return list(range(count))
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
        raise MpqError(f'verify_points={wanted!r} must be a whole number of points (0 or more) or "all"')
    if wanted == 0 or count == 0:
        return []
    if wanted == 1:
        return [count - 1]
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(wanted, count))})
