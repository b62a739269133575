"""The kinds of cost a budget limits, and costs keyed by them.

A CostKind is its JSON string ("size_bytes", "bops", "latency_s", "bits_per_weight"): it equals and hashes as that
string, so plan.json and report.json keep their keys, and a Costs reads by either."""

from __future__ import annotations

from enum import Enum
from typing import Mapping


class CostKind(str, Enum):
    """What a budget limits: packed bytes, bit operations, predicted seconds, or packed bits per weight."""

    SIZE_BYTES = "size_bytes"
    BOPS = "bops"
    LATENCY_S = "latency_s"
    BITS_PER_WEIGHT = "bits_per_weight"

    __hash__ = str.__hash__  # a dict keyed by kinds reads by their strings too

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Costs(dict):
    """Costs by CostKind (a layer's, a plan's); absent kinds are unknown (e.g. latency without a latency model)."""

    @classmethod
    def of(cls, values: Mapping) -> "Costs":
        """Costs from a mapping keyed by kinds or their strings (ValueError for another key)."""
        return cls({CostKind(k): v for k, v in values.items()})

    def to_json(self) -> dict:
        return {k.value if isinstance(k, CostKind) else k: v for k, v in self.items()}

    def plus(self, other: Mapping) -> "Costs":
        """The sum, kind by kind."""
        total = Costs(self)
        for kind, value in other.items():
            total[CostKind(kind)] = total.get(kind, 0.0) + value
        return total
