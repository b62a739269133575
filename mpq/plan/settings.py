"""The typed options of a search, validated where they are made, and the record a plan keeps of them.

    SearchSpace     the widths the solver may choose from: candidate weight widths, activation widths,
                    width granularity (per layer or per group of output channels), pins, trace margin
    SolverSettings  the MILP solver and its time limit
    PlanSettings    what a plan was searched with: the two above, the probe settings, the quantizer,
                    the metric and loss, the resolved pins and what the solver saw

`to_json` writes plan.json's "settings"; `from_json` reads exactly that back into equal objects and
refuses unknown keys (MpqError), so a plan's settings are data, never a back channel.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import ClassVar

from mpq.errors import MpqError
from mpq.params import Custom, Flag, Options, Real, Whole, check_fields
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.quant.widths import MAX_BITS, MIN_BITS, check_bits
from mpq.sensitivity.settings import ProbeSettings

SOLVERS = ("cbc", "highs")
DEFAULT_SOLVER = "highs"  # as exact as CBC and faster on the larger problems (reports/solver.md)
WIDTH_GRANULARITIES = ("layer", "channel")
ACT_CHOICE_NOTE = "activation widths are chosen by cost only (Omega is the weight sensitivity)"
ACT_SENSITIVITY_NOTE = "activation widths are chosen by sensitivity (Omega adds each input's T/m * E||Q_a(x) - x||^2)"


def _whole(value, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MpqError(f"{what} must be a whole number of at least {least}, not {value!r}")
    return value


def act_widths(act_bits) -> tuple[int | None, ...]:
    """Candidate activation widths from an int, None (float inputs) or a sequence of them, sorted (None first)."""
    if act_bits is None or isinstance(act_bits, numbers.Integral):
        items = [_int(act_bits)]
    elif isinstance(act_bits, (str, bytes)) or not isinstance(act_bits, Iterable):
        raise MpqError(f"act_bits must be widths such as (4, 8) or None, not {act_bits!r}")
    else:
        items = [_int(a) for a in act_bits]
    if not items:
        raise MpqError("give at least one activation width, e.g. act_bits=8, act_bits=(4, 8) or act_bits=None")
    if any(
        a is not None and (isinstance(a, bool) or not isinstance(a, int) or not MIN_BITS <= a <= MAX_BITS)
        for a in items
    ):
        raise MpqError(
            f"activation widths {items} must be whole numbers from {MIN_BITS} to {MAX_BITS}, or None for float inputs"
        )
    return tuple(sorted(set(items), key=lambda a: a or 0))


def _int(value):
    """A numpy (or other) integer as an int, so that np.int64(4) is the width 4; anything else unchanged."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def weight_widths(bits) -> tuple[int, ...]:
    if isinstance(bits, (str, bytes, numbers.Number)) or not isinstance(bits, Iterable):
        raise MpqError(f"bits must be a tuple of widths such as (4, 6, 8) or (4,), not {bits!r}")
    items = [_int(b) for b in bits]
    if not items:
        raise MpqError("give at least one candidate weight width, e.g. bits=(4, 8)")
    return tuple(sorted({check_bits(b) for b in items}))


def _pins(keep) -> dict[str, int]:
    if keep is None:
        return {}
    if not isinstance(keep, dict) or not all(isinstance(k, str) for k in keep):
        raise MpqError(f'keep must map layer names to weight widths, e.g. {{"fc": 8}}, not {keep!r}')
    return {name: check_bits(_int(bits)) for name, bits in keep.items()}


def _width(value) -> int:
    return check_bits(_int(value))


SPACE_CONSTRAINTS = {
    "bits": Custom(weight_widths, "a tuple of widths from 2 to 8, e.g. (4, 8)"),
    "act_bits": Custom(act_widths, "widths such as (4, 8), or None for float inputs"),
    "granularity": Options(WIDTH_GRANULARITIES),
    "channel_group": Whole(1, phrase="a whole number of output channels, 1 or more (e.g. --channel-group 8)"),
    "keep": Custom(_pins, 'a dict of layer names to widths, e.g. {"fc": 8}, or None'),
    "keep_first": [None, Custom(_width, "a width from 2 to 8")],
    "keep_last": [None, Custom(_width, "a width from 2 to 8")],
    "trace_margin": Real(0, phrase="a finite number of standard errors, 0 or more (e.g. 2)"),
    "act_sensitivity": [None, Flag()],
}
SOLVER_CONSTRAINTS = {
    "name": Options(SOLVERS),
    "time_limit_s": [None, Real(0, closed="right", phrase="a positive number of seconds")],
}


class _Record:
    """A settings record whose JSON is its fields; reading refuses unknown keys (`_what` names it in the message)."""

    _what: ClassVar[str]

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data):
        return cls(**_known_keys(cls, data, cls._what))


@dataclass(frozen=True)
class SearchSpace(_Record):
    """The widths a search may choose: every layer takes one of `bits` for its weights (per group of
    `channel_group` output channels with granularity "channel") and one of `act_bits` for its input
    (None: float). `keep` pins layers by name; `keep_first` / `keep_last` the first / last quantizable
    layer in execution order. Omega uses each trace plus `trace_margin` standard errors. With several
    activation widths, `act_sensitivity` None uses the inputs' sensitivity when analyzed, False chooses
    by cost only, True requires it."""

    bits: tuple[int, ...] = (4, 5, 6, 7, 8)
    act_bits: tuple[int | None, ...] = (8,)
    granularity: str = "layer"
    channel_group: int = 1
    keep: dict = field(default_factory=dict)
    keep_first: int | None = None
    keep_last: int | None = None
    trace_margin: float = 2.0
    act_sensitivity: bool | None = None
    _what: ClassVar[str] = "search_space"

    def __post_init__(self) -> None:
        check_fields(self, SPACE_CONSTRAINTS)
        if self.granularity == "layer" and self.channel_group != 1:
            raise MpqError(
                'a channel group applies to per-channel widths only: add --granularity channel (granularity="channel")'
            )

    @property
    def several_act_widths(self) -> bool:
        return len(self.act_bits) > 1

    def to_json(self) -> dict:
        return {
            "bits": list(self.bits),
            "act_bits": list(self.act_bits),
            "granularity": self.granularity,
            "channel_group": self.channel_group,
            "keep": dict(self.keep),
            "keep_first": self.keep_first,
            "keep_last": self.keep_last,
            "trace_margin": self.trace_margin,
            "act_sensitivity": self.act_sensitivity,
        }


@dataclass(frozen=True)
class SolverSettings(_Record):
    """The MILP solver ("highs" or "cbc") and a time limit in seconds (None: until proven optimal; with a
    limit the plan records whether optimality was proven and the relative gap)."""

    name: str = DEFAULT_SOLVER
    time_limit_s: float | None = None
    _what: ClassVar[str] = "solver"

    def __post_init__(self) -> None:
        check_fields(self, SOLVER_CONSTRAINTS)


@dataclass(frozen=True)
class ChannelSearch(_Record):
    """What a per-channel search solved: binary variables before and after presolve, dominated choices dropped."""

    binary_variables: int
    dominated_choices_dropped: int
    binary_variables_after_presolve: int
    _what: ClassVar[str] = "channels"


@dataclass(frozen=True)
class LatencySource(_Record):
    """The latency model a plan was solved with: a device roofline or a measured table (mpq.cost.latency)."""

    source: str  # "roofline" or "table"
    spec: str
    device: str | None
    batch: int
    sha256: str | None = None  # of a latency table
    note: str | None = None  # the candidate widths it has no latency for, when some
    _what: ClassVar[str] = "latency"

    def to_json(self) -> dict:
        """Its fields, leaving out an absent table hash and note."""
        return {k: v for k, v in super().to_json().items() if v is not None or k == "device"}


@dataclass(frozen=True)
class PlanSettings:
    """What a plan was made with. `source` "search" (mpq.solve / mpq search) or "table" (mpq solve --table,
    where only `keep` and `tie_groups` apply). `keep`: the pins as resolved to layer names;
    `act_sensitivity`: whether Omega included the inputs' sensitivity."""

    source: str = "search"
    space: SearchSpace = field(default_factory=SearchSpace)
    solver: SolverSettings = field(default_factory=SolverSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    quantizer: Quantizer = DEFAULT_QUANTIZER
    metric: str = "hessian"
    loss: str | None = None
    keep: dict = field(default_factory=dict)
    act_sensitivity: bool = False
    act_tie_groups: tuple = ()
    tie_groups: tuple = ()
    latency: LatencySource | None = None
    channels: ChannelSearch | None = None
    container_reserve_bytes: int = 0
    gguf_metadata: str | None = None  # the GGUF file whose tokenizer metadata a --target gguf plan's file copies

    def __post_init__(self) -> None:
        if self.source not in ("search", "table"):
            raise MpqError(f"a plan's settings source must be search or table, not {self.source!r}")
        object.__setattr__(self, "keep", _pins(self.keep) if self.source == "search" else dict(self.keep))
        object.__setattr__(self, "act_tie_groups", tuple(tuple(g) for g in self.act_tie_groups))
        object.__setattr__(self, "tie_groups", tuple(tuple(g) for g in self.tie_groups))
        _whole(self.container_reserve_bytes, "container_reserve_bytes", 0)

    @property
    def act_choice_note(self) -> str | None:
        """How activation widths were chosen, when there was a choice."""
        if not self.space.several_act_widths:
            return None
        return ACT_SENSITIVITY_NOTE if self.act_sensitivity else ACT_CHOICE_NOTE

    def to_json(self) -> dict:
        typed = {
            "space": self.space,
            "solver": self.solver,
            "probes": self.probes,
            "quantizer": self.quantizer,
            "latency": self.latency,
            "channels": self.channels,
        }
        out = {"source": self.source}
        for f in fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            if f.name in typed:
                out[_JSON_NAMES.get(f.name, f.name)] = None if value is None else value.to_json()
            elif isinstance(value, tuple):
                out[f.name] = [list(g) for g in value]
            elif f.name == "gguf_metadata" and value is None:
                continue  # written only for GGUF plans: other plans' JSON is as before
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data) -> "PlanSettings":
        names = {_JSON_NAMES.get(f.name, f.name): f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise MpqError(f"the plan's settings {data!r} are not an object; make a new plan with `mpq search`")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise MpqError(
                f"the plan's settings hold unknown keys ({', '.join(unknown)}): it was written by another mpq "
                "version; make a new plan with `mpq search`"
            )
        readers = {
            "space": SearchSpace.from_json,
            "solver": SolverSettings.from_json,
            "probes": _probes_from_json,
            "quantizer": Quantizer.from_json,
            "latency": LatencySource.from_json,
            "channels": ChannelSearch.from_json,
        }
        values = {}
        for key, value in data.items():
            name = names[key]
            values[name] = readers[name](value) if name in readers and value is not None else value
        try:
            return cls(**values)
        except TypeError as exc:
            raise MpqError(f"the plan's settings are malformed ({exc}); make a new plan with `mpq search`") from None


_JSON_NAMES = {"space": "search_space"}


def _known_keys(cls, data, what: str) -> dict:
    if not isinstance(data, dict):
        raise MpqError(f"the plan's {what} setting {data!r} is not an object; make a new plan with `mpq search`")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MpqError(
            f"the plan's {what} setting holds unknown keys ({', '.join(unknown)}); make a new plan with `mpq search`"
        )
    return dict(data)


def _probes_from_json(data) -> ProbeSettings:
    return ProbeSettings(**_known_keys(ProbeSettings, data, "probes"))
