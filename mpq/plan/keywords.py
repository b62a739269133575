"""The verbs' own keywords (mpq.analyze, solve, verify, search, pareto, quantize_, export_plan), their constraints
declared once (mpq.params) and checked first thing in each verb, before any work; the config objects they take
(SearchSpace, ProbeSettings, SolverSettings, Quantizer, Budget) check their own fields."""

from __future__ import annotations

import functools
import inspect

from mpq.params import Custom, FilePath, Flag, Is, Real, Text, Whole, take
from mpq.plan.settings import weight_widths

_CACHE = [None, Is(False), FilePath()]


def _baseline_widths(bits) -> tuple[int, ...]:
    """Extra uniform baselines: widths from 2 to 8, or none at all (uniform W8 is always measured)."""
    return () if isinstance(bits, (tuple, list)) and not bits else weight_widths(bits)


KEYWORD_CONSTRAINTS = {
    "baseline_bits": [None, Custom(_baseline_widths, "a tuple of widths from 2 to 8, e.g. (4, 8), or ()")],
    "batch_size": Whole(1, phrase="a whole number of samples, 1 or more"),
    "eval_batch_size": Whole(1, phrase="a whole number of samples, 1 or more"),
    "eval_split": Real(0, 1, closed="left", phrase="a fraction from 0 (measure in-sample) up to, not including, 1"),
    "proxy_plans": Whole(0, phrase="a whole number of random plans (0: none; 2 or more to rank-correlate)"),
    "verify_points": [Whole(0, phrase="a whole number of points (0 or more)"), Is("all")],
    "cache_dir": _CACHE,
    "path": FilePath(),
    "progress": [None, Flag()],
    "activations": Flag(),
    "quantize_embeddings": Flag(),
    "metric": [None, Text("a metric's name, e.g. hessian")],
    "format": Text("an export format's name, e.g. packed"),
}


def checks_keywords(*names: str):
    """A verb's decorator: its keywords `names` checked (KEYWORD_CONSTRAINTS) before it runs, and passed on as
    taken (numpy scalars as Python numbers, widths as a sorted tuple)."""
    unknown = set(names) - set(KEYWORD_CONSTRAINTS)
    assert not unknown, f"declare {sorted(unknown)} in KEYWORD_CONSTRAINTS"

    def decorate(verb):
        signature = inspect.signature(verb)

        @functools.wraps(verb)
        def checked_verb(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name in names:
                bound.arguments[name] = take(name, bound.arguments[name], KEYWORD_CONSTRAINTS[name])
            return verb(*bound.args, **bound.kwargs)

        return checked_verb

    return decorate
