"""The verbs' options: frozen config objects (ProbeSettings, SearchSpace, SolverSettings), with the flat
keyword arguments of mpq 0.1.0 still taken for one release, folded into them with a DeprecationWarning."""

from __future__ import annotations

import warnings
from dataclasses import fields, replace

from mpq.errors import MpqError
from mpq.plan.settings import SearchSpace, SolverSettings
from mpq.sensitivity.settings import ProbeSettings


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def check_known(verb: str, keywords: dict, allowed: set[str]) -> None:
    unknown = sorted(set(keywords) - allowed)
    if unknown:
        raise MpqError(f"mpq.{verb}() has no option {', '.join(unknown)}: see help(mpq.{verb}) for its options")


def folded(verb: str, cls, given, keywords: dict, param: str):
    """`given` (an instance of `cls`, or None for its defaults) with the legacy `keywords` that name its fields."""
    if given is not None and not isinstance(given, cls):
        raise MpqError(f"mpq.{verb}(): {param} must be an mpq.{cls.__name__}, not {type(given).__name__}")
    mine = {k: v for k, v in keywords.items() if k in field_names(cls)}
    if not mine:
        return given or cls()
    warnings.warn(
        f"mpq.{verb}({', '.join(f'{k}=' for k in mine)}...) is deprecated: pass "
        f"{param}=mpq.{cls.__name__}({', '.join(f'{k}=...' for k in mine)})",
        DeprecationWarning,
        stacklevel=4,
    )
    try:
        return replace(given or cls(), **mine)
    except TypeError as exc:
        raise MpqError(f"mpq.{verb}(): {exc}") from None


def probe_settings(verb: str, probes, keywords: dict) -> ProbeSettings:
    return folded(verb, ProbeSettings, probes, keywords, "probes")


def search_space(verb: str, space, keywords: dict) -> SearchSpace:
    return folded(verb, SearchSpace, space, keywords, "space")


def solver_settings(verb: str, solver, keywords: dict) -> SolverSettings:
    """A SolverSettings from `solver` (one, a solver name as in mpq 0.1.0, or None) and a legacy time_limit_s."""
    if isinstance(solver, str):
        keywords = {**keywords, "name": solver}
        solver = None
    limit = {"time_limit_s": keywords["time_limit_s"]} if "time_limit_s" in keywords else {}
    name = {"name": keywords["name"]} if "name" in keywords else {}
    return folded(verb, SolverSettings, solver, limit | name, "solver")


SOLVE_KEYWORDS = field_names(SearchSpace) | {"time_limit_s"}  # the flat keywords mpq.solve still takes
SEARCH_KEYWORDS = field_names(ProbeSettings) | SOLVE_KEYWORDS


def search_configs(
    verb: str, space, probes, solver, keywords: dict
) -> tuple[SearchSpace, ProbeSettings, SolverSettings]:
    """The configs of a verb that analyzes and solves (search, pareto), legacy keywords folded in."""
    check_known(verb, keywords, SEARCH_KEYWORDS)
    return (
        search_space(verb, space, keywords),
        probe_settings(verb, probes, keywords),
        solver_settings(verb, solver, keywords),
    )
