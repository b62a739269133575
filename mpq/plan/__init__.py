"""The Plan: the bit widths chosen for every layer, as read from and written to plan.json.

    {"schema": "mpq.plan/1",
     "model": {"fingerprint": sha256, "layers": count, "params": count},
     "budgets": [{"kind": "size_bytes", "limit": 4000000, "text": "4MB"}],
     "layers": {"<module name>": {"weight_bits": 6, "act_bits": 8, "granularity": "channel", ...}},
     "predicted": {"size_bytes": int, "bops": float, "omega": float},
     "solver": {"name": "highs", "status": "optimal", "proven_optimal": true, "gap": 0.0, "time_limit_s": null},
     "versions": {"mpq": "0.1.0", "torch": "2.13.0", "numpy": ..., "pulp": ..., "highspy": ...}}

"versions" are those of the mpq that made the plan and of the packages its numbers depend on
(mpq.versions); a plan read back keeps its own (none for plans written before they were recorded).

"granularity" is that of the weight scales: "channel", one per output channel; or "group", with
"group_size": g, one per group of g consecutive weights of an output channel (mpq.quant.affine), the
group size of the plan's quantizer (settings.quantizer.group_size), the same for every layer. A plan searched with
per-channel
widths (`--granularity channel`) adds to every layer entry
     "channel_bits": [{"channels": [start, stop], "weight_bits": b}, ...]   (runs of equal width)
     "channel_group": G
where the runs cover channels 0 .. out_channels - 1 in order, each exactly once, and "weight_bits"
is the widest of them. The codes are stored (bit-packed, byte-aligned) per chunk: each run cut at
multiples of G (no "channel_group": each run whole). Without "channel_bits" every channel takes
"weight_bits" and the layer is stored as one chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mpq.cost.budget import Budget
from mpq.errors import MpqError
from mpq.files import write_json_atomic
from mpq.params import Custom, Instance, check_fields
from mpq.plan.layers import ChannelRun, LayerPlan, layer_from_json, layer_to_json, storage_chunks
from mpq.plan.legacy import settings_from_json
from mpq.plan.records import PlanModel, Predicted, SolverRecord
from mpq.plan.settings import PlanSettings, SearchSpace, SolverSettings
from mpq.quant.formats import WeightFormat
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.versions import versions

__all__ = ["Plan", "LayerPlan", "ChannelRun", "PlanSettings", "SearchSpace", "SolverSettings", "storage_chunks"]

SCHEMA = "mpq.plan/1"
_RECORDS = {"model": PlanModel, "predicted": Predicted, "solver": SolverRecord}


def _layers(layers) -> dict:
    if not isinstance(layers, dict) or not all(
        isinstance(k, str) and isinstance(v, LayerPlan) for k, v in layers.items()
    ):
        raise TypeError
    return layers


def _budgets(budgets) -> list:
    if not isinstance(budgets, (list, tuple)) or not all(isinstance(b, Budget) for b in budgets):
        raise TypeError
    return list(budgets)


PLAN_CONSTRAINTS = {
    "layers": Custom(_layers, "a dict of layer names to mpq.LayerPlan"),
    "budgets": Custom(_budgets, "a list of mpq.Budget"),
    "settings": [None, Instance(PlanSettings)],
    "versions": Instance(dict),
    "recipe": [None, Instance(dict)],
}


@dataclass
class Plan:
    """Per-module widths plus what they were chosen for (model fingerprint, budgets, predictions)."""

    layers: dict[str, LayerPlan]
    model: PlanModel = field(default_factory=PlanModel)
    budgets: list[Budget] = field(default_factory=list)
    predicted: Predicted = field(default_factory=Predicted)
    settings: PlanSettings | None = (
        None  # what it was searched with (None: a plan made by hand, e.g. a uniform baseline)
    )
    solver: SolverRecord = field(default_factory=SolverRecord)  # how the solve ended (mpq.solver.problem.Solution)
    versions: dict = field(
        default_factory=versions
    )  # of mpq, torch, numpy, pulp, highspy when it was made (mpq.versions)
    recipe: dict | None = (
        None  # the options of the `mpq search` run that made it (mpq.cli.recipe): --config plan.json repeats it
    )

    def __post_init__(self) -> None:
        check_fields(self, PLAN_CONSTRAINTS)

    def __setattr__(self, name: str, value) -> None:
        """Records given as dicts (the JSON objects), here or later, become typed."""
        record = _RECORDS.get(name)
        if record is not None and not isinstance(value, record):
            value = record.from_json(value)
        object.__setattr__(self, name, value)

    @property
    def quantizer(self) -> Quantizer:
        """The quantizer the plan is verified and exported with (the default for a plan without settings)."""
        return self.settings.quantizer if self.settings is not None else DEFAULT_QUANTIZER

    @property
    def weight_format(self) -> WeightFormat:
        """The format its weights are stored in: its quantizer's (mpq.quant.formats)."""
        return self.quantizer.format

    @property
    def group_size(self) -> int | None:
        """Weights per scale group (None: one scale per output channel): its quantizer's."""
        return self.quantizer.group_size

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "model": self.model.to_json(),
            "budgets": [b.to_json() for b in self.budgets],
            "layers": {name: layer_to_json(lp, self.group_size) for name, lp in self.layers.items()},
            "predicted": self.predicted.to_json(),
            "settings": self.settings.to_json() if self.settings is not None else {},
            **({"solver": self.solver.to_json()} if self.solver else {}),
            **({"versions": dict(self.versions)} if self.versions else {}),
            **({"recipe": dict(self.recipe)} if self.recipe is not None else {}),
        }

    def save(self, path: "str | Path") -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict, source: str = "plan") -> "Plan":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise MpqError(f'{source} is not an mpq plan (expected "schema": "{SCHEMA}"); make one with `mpq search`')
        try:
            layers = {name: layer_from_json(name, entry) for name, entry in data["layers"].items()}
            budgets = [Budget.from_json(b) for b in data.get("budgets", [])]
            for key in ("model", "predicted", "solver"):
                if not isinstance(data.get(key, {}), dict):
                    raise TypeError(f"{key} must be an object")
            made_with = _versions_from_json(data.get("versions", {}))
            recipe = data.get("recipe")
            if recipe is not None and not isinstance(recipe, dict):
                raise TypeError("recipe must be an object")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MpqError(f"{source} is malformed ({exc}); make a new one with `mpq search`") from None
        plan = cls(
            layers=layers,
            model=data.get("model", {}),
            budgets=budgets,
            predicted=data.get("predicted", {}),
            settings=settings_from_json(data.get("settings", {})),
            solver=data.get("solver", {}),
            versions=made_with,
            recipe=recipe,
        )
        stated = {entry.get("group_size") for entry in data["layers"].values()}
        if stated - {plan.group_size}:
            raise MpqError(
                f"{source} is malformed (its layers' group_size {sorted(stated, key=str)} differs from its "
                f"quantizer's, {plan.group_size}); make a new one with `mpq search`"
            )
        return plan

    @classmethod
    def load(cls, path: "str | Path") -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise MpqError(f"cannot read plan {path}: {exc.strerror}") from None
        except RecursionError:
            raise MpqError(f"{path} is nested too deeply to be a plan; make a new plan with `mpq search`") from None
        except ValueError:
            raise MpqError(f"{path} is not valid JSON (truncated?); make a new plan with `mpq search`") from None
        plan = cls.from_json(data, source=str(path))
        if not isinstance(plan.model.get("fingerprint"), str) or not plan.model["fingerprint"]:
            raise MpqError(
                f"{path} names no model fingerprint, so mpq cannot tell which model it was made for: make the plan "
                "with `mpq search` (or `mpq solve --table`)"
            )
        return plan


def _versions_from_json(data) -> dict[str, str | None]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()
    ):
        raise ValueError(f'"versions" must map package names to version strings, not {data!r}')
    return dict(data)
