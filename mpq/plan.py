"""The Plan: the bit widths chosen for every layer, as read from and written to plan.json.

    {"schema": "mpq.plan/1",
     "model": {"fingerprint": sha256, "layers": count, "params": count},
     "budgets": [{"kind": "size_bytes", "limit": 4000000, "text": "4MB"}],
     "layers": {"<module name>": {"weight_bits": 6, "act_bits": 8, "granularity": "channel", ...}},
     "predicted": {"size_bytes": int, "bops": float, "omega": float},
     "solver": {"name": "highs", "status": "optimal", "proven_optimal": true, "gap": 0.0, "time_limit_s": null}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mpq.budget import Budget
from mpq.cost import Choice
from mpq.errors import MpqError
from mpq.files import write_json_atomic

SCHEMA = "mpq.plan/1"
GRANULARITIES = ("channel", "tensor")


@dataclass(frozen=True)
class LayerPlan:
    """Widths of one layer: weights (quantized per output channel) and its input activation."""

    weight_bits: int
    act_bits: int | None
    granularity: str = "channel"

    @property
    def choice(self) -> Choice:
        return Choice(self.weight_bits, self.act_bits)


@dataclass
class Plan:
    """Per-module widths plus what they were chosen for (model fingerprint, budgets, predictions)."""

    layers: dict[str, LayerPlan]
    model: dict = field(default_factory=dict)
    budgets: list[Budget] = field(default_factory=list)
    predicted: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)  # mpq.solver.Solution.solver_json(): name, status, proven_optimal, gap

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "budgets": [b.to_json() for b in self.budgets],
            "layers": {
                name: {"weight_bits": lp.weight_bits, "act_bits": lp.act_bits, "granularity": lp.granularity}
                for name, lp in self.layers.items()
            },
            "predicted": self.predicted,
            "settings": self.settings,
            **({"solver": self.solver} if self.solver else {}),
        }

    def save(self, path: "str | Path") -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict, source: str = "plan") -> "Plan":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise MpqError(f"{source} is not an mpq plan (expected \"schema\": \"{SCHEMA}\"); make one with `mpq search`")
        try:
            layers = {name: _layer_from_json(name, entry) for name, entry in data["layers"].items()}
            budgets = [Budget.from_json(b) for b in data.get("budgets", [])]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MpqError(f"{source} is malformed ({exc}); make a new one with `mpq search`") from None
        return cls(layers=layers, model=data.get("model", {}), budgets=budgets, predicted=data.get("predicted", {}), settings=data.get("settings", {}),
                   solver=data.get("solver", {}))

    @classmethod
    def load(cls, path: "str | Path") -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise MpqError(f"cannot read plan {path}: {exc.strerror}") from None
        except ValueError:
            raise MpqError(f"{path} is not valid JSON (truncated?); make a new plan with `mpq search`") from None
        return cls.from_json(data, source=str(path))


def _layer_from_json(name: str, entry: dict) -> LayerPlan:
    weight_bits, act_bits = entry["weight_bits"], entry.get("act_bits")
    granularity = entry.get("granularity", "channel")
    if not isinstance(weight_bits, int) or not 1 <= weight_bits <= 16:
        raise ValueError(f"layer {name}: weight_bits {weight_bits!r} is not a width from 1 to 16")
    if act_bits is not None and (not isinstance(act_bits, int) or not 1 <= act_bits <= 16):
        raise ValueError(f"layer {name}: act_bits {act_bits!r} is not null or a width from 1 to 16")
    if granularity not in GRANULARITIES:
        raise ValueError(f"layer {name}: granularity {granularity!r} is not one of {GRANULARITIES}")
    return LayerPlan(weight_bits=weight_bits, act_bits=act_bits, granularity=granularity)
