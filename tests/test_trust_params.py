"""Issue 25: the API's config objects and the verbs' keywords check every field in one place (mpq.params). One test
throws generated bad values at every field of every config and every verb keyword: each is refused with an MpqError
whose one sentence names the field, or is one the field documents as allowed (ALLOWED)."""

from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

import mpq
from mpq.cost.budget import BUDGET_CONSTRAINTS
from mpq.errors import MpqError
from mpq.plan import PLAN_CONSTRAINTS
from mpq.plan.keywords import KEYWORD_CONSTRAINTS
from mpq.plan.settings import SOLVER_CONSTRAINTS, SPACE_CONSTRAINTS
from mpq.quant.quantizer import QUANTIZER_CONSTRAINTS
from mpq.sensitivity.settings import PROBE_CONSTRAINTS

BAD = {
    "object": object(),
    "nan": float("nan"),
    "inf": float("inf"),
    "negative": -1,
    "empty": "",
    "bool": True,
    "string number": "3",
    "None": None,
    "empty list": [],
    "huge": 2**70,
    "fraction": 0.5,
}
# (owner, field) -> the generated values it takes
ALLOWED = {
    ("SearchSpace", "act_bits"): {"None"},  # float inputs
    ("SearchSpace", "keep"): {"None"},
    ("SearchSpace", "keep_first"): {"None"},
    ("SearchSpace", "keep_last"): {"None"},
    ("SearchSpace", "act_sensitivity"): {"None", "bool"},
    ("SearchSpace", "trace_margin"): {"huge", "fraction"},
    ("SearchSpace", "channel_group"): {"huge"},
    ("SolverSettings", "time_limit_s"): {"None", "huge", "fraction"},
    ("ProbeSettings", "tol"): {"fraction"},
    ("ProbeSettings", "max_seconds"): {"huge", "fraction"},
    **{("ProbeSettings", n): {"huge"} for n in ("min_probes", "max_probes", "batch_size", "chunk_size")},
    ("ProbeSettings", "anchor_samples"): {"huge"},
    ("Quantizer", "bias_correction"): {"bool"},
    ("Quantizer", "equalize"): {"bool"},
    ("Quantizer", "group_size"): {"None", "huge"},  # 2**70 is a power of two: one group per channel
    ("Budget", "limit"): {"huge", "fraction"},
    ("Budget", "text"): {"string number"},
    ("Plan", "budgets"): {"empty list"},
    ("Plan", "settings"): {"None"},
    ("Plan", "recipe"): {"None"},
    ("keywords", "baseline_bits"): {"None", "empty list"},  # no baselines beyond uniform W8
    ("keywords", "cache_dir"): {"None", "string number"},
    ("keywords", "path"): {"string number"},
    ("keywords", "progress"): {"None", "bool"},
    ("keywords", "activations"): {"bool"},
    ("keywords", "quantize_embeddings"): {"bool"},
    ("keywords", "metric"): {"None", "string number"},
    ("keywords", "format"): {"string number"},
    ("keywords", "eval_split"): {"fraction"},
    **{("keywords", n): {"huge"} for n in ("batch_size", "eval_batch_size", "proxy_plans", "verify_points")},
}
BUDGET = mpq.Budget("size_bytes", 4e6, "4MB")
CONFIGS = {
    "SearchSpace": (mpq.SearchSpace, SPACE_CONSTRAINTS, {"granularity": "channel"}),
    "SolverSettings": (mpq.SolverSettings, SOLVER_CONSTRAINTS, {}),
    "ProbeSettings": (mpq.ProbeSettings, PROBE_CONSTRAINTS, {}),
    "Quantizer": (mpq.Quantizer, QUANTIZER_CONSTRAINTS, {}),
    "Budget": (mpq.Budget, BUDGET_CONSTRAINTS, {"kind": "size_bytes", "limit": 4e6, "text": "4MB"}),
    "Plan": (mpq.Plan, PLAN_CONSTRAINTS, {"layers": {}}),
}


def verb_calls(model, plan, sens, tmp_path):
    """Each verb keyword with a call that passes it (model and data are good: a refusal comes from the keyword)."""
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    out = tmp_path / "out.bin"
    return {
        "baseline_bits": [lambda v: mpq.verify(model, plan, (x, y), baseline_bits=v)],
        "batch_size": [
            lambda v: mpq.verify(model, plan, (x, y), batch_size=v),
            lambda v: mpq.quantize_(model, plan, (x, y), batch_size=v),
            lambda v: mpq.export_plan(model, plan, (x, y), out, batch_size=v),
        ],
        "eval_batch_size": [
            lambda v: mpq.search(model, (x, y), eval_batch_size=v),
            lambda v: mpq.pareto(model, (x, y), eval_batch_size=v),
        ],
        "eval_split": [lambda v: mpq.verify(model, plan, (x, y), eval_split=v)],
        "proxy_plans": [lambda v: mpq.search(model, (x, y), proxy_plans=v)],
        "verify_points": [lambda v: mpq.pareto(model, (x, y), verify_points=v)],
        "cache_dir": [lambda v: mpq.analyze(model, (x, y), cache_dir=v)],
        "path": [lambda v: mpq.export_plan(model, plan, (x, y), v)],
        "progress": [lambda v: mpq.analyze(model, (x, y), progress=v)],
        "activations": [lambda v: mpq.analyze(model, (x, y), activations=v)],
        "quantize_embeddings": [lambda v: mpq.search(model, (x, y), quantize_embeddings=v)],
        "metric": [lambda v: mpq.pareto(model, (x, y), metric=v)],
        "format": [lambda v: mpq.export_plan(model, plan, (x, y), out, format=v)],
    }


def test_every_field_of_every_config_refuses_bad_values_naming_the_field(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    plan = mpq.Plan(layers={"0": mpq.LayerPlan(weight_bits=8, act_bits=8)})
    calls = verb_calls(model, plan, None, tmp_path)
    assert set(calls) == set(KEYWORD_CONSTRAINTS)
    cases = []
    for owner, (cls, constraints, base) in CONFIGS.items():
        typed = {"model", "predicted", "solver"} if owner == "Plan" else set()  # records: Plan.__setattr__
        named = {f.name for f in fields(cls) if f.init} - typed
        assert set(constraints) == named, f"{owner}: every field is declared once"
        cases += [(owner, name, lambda v, c=cls, n=name, b=base: c(**{**b, n: v})) for name in constraints]
    cases += [("keywords", name, call) for name, verbs in calls.items() for call in verbs]
    for owner, name, make in cases:
        for label, value in BAD.items():
            if label in ALLOWED.get((owner, name), set()):
                if owner != "keywords":
                    make(value)  # taken
                continue
            with pytest.raises(MpqError) as caught:
                make(value)
            said = str(caught.value)
            assert said.startswith(f"{name}=") or said.startswith(f"{name} "), (owner, name, label, said)
            assert "\n" not in said
    assert not list(tmp_path.iterdir())


def test_numpy_scalars_are_taken_as_python_numbers():
    space = mpq.SearchSpace(bits=(np.int64(4), np.int32(8)), keep_first=np.int64(8), trace_margin=np.float32(1.5))
    assert space.bits == (4, 8) and type(space.keep_first) is int and type(space.trace_margin) is float
    probes = mpq.ProbeSettings(max_probes=np.int64(4), tol=np.float64(0.1), seed=np.uint8(3))
    assert (probes.max_probes, probes.seed, type(probes.seed)) == (4, 3, int)
    assert mpq.Quantizer(group_size=np.int64(32), bias_correction=np.bool_(False)).group_size == 32
