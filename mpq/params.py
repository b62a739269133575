"""Parameters checked in one place, in scikit-learn's `_param_validation` style.

Every config class (SearchSpace, SolverSettings, ProbeSettings, Quantizer, Budget, Plan) and every verb's
keywords (mpq.plan.keywords) declare their fields' constraints once, as a dict of name -> constraint, or a list
of alternatives (None in the list: None is allowed). `checked` takes the values where they enter: it gives
numpy scalars back as Python ones, normalizes what a constraint normalizes (widths sorted into a tuple), and
raises one MpqError naming the field for the first value that meets none of its constraints:

    CONSTRAINTS = {"tol": Real(0, 1, closed="neither"), "seed": Whole(0, 2**63 - 1), "hvp": Options(("a", "b"))}
    def __post_init__(self): check_fields(self, CONSTRAINTS)
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
from dataclasses import dataclass
from typing import Callable

from mpq.errors import MpqError

_SHOWN = reprlib.Repr()  # a value as a message shows it: long strings and deep lists cut short
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlevel = 40, 40, 3


class _Refused(Exception):
    """A value a constraint does not take (carrying the reason when the constraint knows a better one)."""


@dataclass(frozen=True)
class Whole:
    """A whole number (numpy integers too, bool never) from `least` to `most` (None: no upper bound)."""

    least: int = 0
    most: int | None = None
    phrase: str = ""

    def take(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Refused
        value = int(value)
        if value < self.least or (self.most is not None and value > self.most):
            raise _Refused
        return value

    def describe(self) -> str:
        if self.phrase:
            return self.phrase
        if self.most is None:
            return f"a whole number of at least {self.least}"
        return f"a whole number from {self.least} to {self.most}"


@dataclass(frozen=True)
class Real:
    """A finite real number (not bool) between `low` and `high`; `closed`: which ends are allowed."""

    low: float = -math.inf
    high: float = math.inf
    closed: str = "both"  # "both", "left", "right" or "neither"
    phrase: str = ""

    def take(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _Refused
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        if not (above and below):
            raise _Refused
        return value if type(value) in (int, float) else float(value)

    def describe(self) -> str:
        return self.phrase or f"a finite number from {self.low} to {self.high}"


@dataclass(frozen=True)
class Options:
    """One of a few strings."""

    options: tuple[str, ...]

    def take(self, value):
        if not isinstance(value, str) or value not in self.options:
            raise _Refused
        return value

    def describe(self) -> str:
        return f"one of {', '.join(self.options)}"


@dataclass(frozen=True)
class Is:
    """Exactly this value (compared by identity for True/False/None, else by equality and type)."""

    value: object

    def take(self, value):
        if value is self.value or (type(value) is type(self.value) and value == self.value):
            return value
        raise _Refused

    def describe(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Flag:
    """True or False (numpy's bool too)."""

    def take(self, value):
        if type(value).__name__ not in ("bool", "bool_"):
            raise _Refused
        return bool(value)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Text:
    """A non-empty string."""

    phrase: str = "a non-empty string"

    def take(self, value):
        if not isinstance(value, str) or not value:
            raise _Refused
        return value

    def describe(self) -> str:
        return self.phrase


@dataclass(frozen=True)
class FilePath:
    """A path: a non-empty str or an os.PathLike (pathlib.Path)."""

    def take(self, value):
        if isinstance(value, str) and value and "\0" not in value:
            return value
        if isinstance(value, os.PathLike) and not isinstance(value, bytes):
            return value
        raise _Refused

    def describe(self) -> str:
        return "a path (a non-empty str or a pathlib.Path)"


@dataclass(frozen=True)
class Instance:
    """An instance of `cls`."""

    cls: type

    def take(self, value):
        if not isinstance(value, self.cls):
            raise _Refused
        return value

    def describe(self) -> str:
        return f"an mpq.{self.cls.__name__}"


@dataclass(frozen=True)
class Custom:
    """What `check(value)` gives back; the check raises MpqError (its sentence is the reason) or returns it."""

    check: Callable
    phrase: str

    def take(self, value):
        try:
            return self.check(value)
        except MpqError as exc:
            raise _Refused(str(exc)) from None
        except (TypeError, ValueError, AttributeError):
            raise _Refused from None

    def describe(self) -> str:
        return self.phrase


def take(name: str, value, constraint):
    """`value` as the first of `constraint` (one, or a list of alternatives; None allowing None) takes it."""
    alternatives = constraint if isinstance(constraint, list) else [constraint]
    reason = None
    for option in alternatives:
        if option is None:
            if value is None:
                return None
            continue
        try:
            return option.take(value)
        except _Refused as refused:
            reason = reason or (str(refused) if refused.args else None)
    if reason is not None:
        raise MpqError(reason if reason.startswith(f"{name} ") else f"{name}={_SHOWN.repr(value)}: {reason}")
    phrases = ["None" if c is None else c.describe() for c in alternatives]
    raise MpqError(f"{name}={_SHOWN.repr(value)} must be {' or '.join(phrases)}")


def checked(constraints: dict, values: dict) -> dict:
    """`values` (a name -> value dict, every name in `constraints`) taken by their constraints, in their order."""
    return {name: take(name, value, constraints[name]) for name, value in values.items()}


def check_fields(record, constraints: dict) -> None:
    """Every field of the dataclass `record` named in `constraints` checked and set to its taken value."""
    for name, value in checked(constraints, {n: getattr(record, n) for n in constraints}).items():
        object.__setattr__(record, name, value)
