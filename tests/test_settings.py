"""Typed settings: the config objects are validated where they are made, plan.json stores them and
Plan.load gives back equal objects, unknown keys are refused, and the flat keywords of mpq 0.1.0 give
the same plan with a DeprecationWarning."""

import json
import warnings

import pytest

import mpq
from mpq.errors import MpqError
from mpq.plan import Plan
from mpq.plan.settings import PlanSettings, SearchSpace, SolverSettings
from mpq.quant.quantizer import Quantizer
from mpq.sensitivity.settings import ProbeSettings

PROBES = ProbeSettings(max_probes=4, min_probes=4, batch_size=12, seed=3)


@pytest.fixture
def sensitivity(tiny_model, tiny_data):
    return mpq.analyze(tiny_model, tiny_data, probes=PROBES, cache_dir=False, progress=False)


def test_search_plan_round_trips_its_typed_settings(tiny_model, tiny_data, tmp_path):
    space = SearchSpace(bits=(8, 4, 6), act_bits=(8,), trace_margin=1.0, keep={"fc": 8})
    solver = SolverSettings(name="cbc", time_limit_s=30.0)
    quantizer = Quantizer("minmax", "minmax", False)
    result = mpq.search(
        tiny_model,
        tiny_data,
        "2KB",
        space=space,
        probes=PROBES,
        solver=solver,
        quantizer=quantizer,
        cache_dir=False,
        progress=False,
    )
    plan = result.plan
    assert plan.settings.space == space and plan.settings.space.bits == (4, 6, 8)
    assert plan.settings.probes == PROBES and plan.settings.solver == solver and plan.settings.quantizer == quantizer
    assert plan.settings.keep == {"fc": 8} and plan.layers["fc"].weight_bits == 8
    plan.save(tmp_path / "plan.json")
    stored = json.loads((tmp_path / "plan.json").read_text())["settings"]
    assert (
        stored["search_space"]["bits"] == [4, 6, 8]
        and stored["probes"]["max_probes"] == 4
        and stored["solver"] == {"name": "cbc", "time_limit_s": 30.0}
    )
    back = Plan.load(tmp_path / "plan.json")
    assert back.settings == plan.settings and back.to_json() == plan.to_json()


def test_unknown_settings_keys_are_refused(tmp_path):
    settings = PlanSettings().to_json()
    for bad in (
        {**settings, "bitz": [4]},
        {**settings, "search_space": {**settings["search_space"], "bitz": 1}},
        {**settings, "probes": {**settings["probes"], "tol2": 0.1}},
        {**settings, "quantizer": {"act_observer": "minmax", "x": 1}},
    ):
        plan = {"schema": "mpq.plan/1", "layers": {"fc": {"weight_bits": 8, "act_bits": 8}}, "settings": bad}
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        with pytest.raises(MpqError, match="unknown keys"):
            Plan.load(tmp_path / "plan.json")


def test_plans_of_mpq_0_1_0_are_read_into_typed_settings():
    flat = {
        "bits": [4, 5, 6, 7, 8],
        "act_bits": 8,
        "metric": "hessian",
        "keep": {"fc": 8},
        "trace_margin": 2.0,
        "loss": "fp32 (cross-entropy to FP32 predictions)",
        "probes": 32,
        "tol": 0.05,
        "seed": 0,
        "quantizer": {"act_observer": "percentile", "weight_clip": "mse", "bias_correction": True},
        "container_reserve_bytes": 888,
    }
    plan = Plan.from_json(
        {"schema": "mpq.plan/1", "layers": {"fc": {"weight_bits": 8, "act_bits": 8}}, "settings": flat}
    )
    assert (
        plan.settings.space == SearchSpace()
        and plan.settings.keep == {"fc": 8}
        and plan.settings.container_reserve_bytes == 888
    )
    table = {"source": "table", "keep": {}, "tie_groups": [["a", "b"]], "solver_seconds": 0.01}
    plan = Plan.from_json(
        {"schema": "mpq.plan/1", "layers": {"a": {"weight_bits": 4, "act_bits": None}}, "settings": table}
    )
    assert plan.settings.source == "table" and plan.settings.tie_groups == (("a", "b"),)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SearchSpace(bits=()), "at least one candidate weight width"),
        (lambda: SearchSpace(bits=(4, 9)), "supports only 2 to 8"),
        (lambda: SearchSpace(act_bits=(0,)), "activation widths"),
        (lambda: SearchSpace(trace_margin=float("nan")), "trace_margin=nan must be a finite number"),
        (lambda: SearchSpace(trace_margin=float("inf")), "trace_margin=inf must be a finite number"),
        (lambda: SearchSpace(granularity="row"), "granularity='row' must be one of layer, channel"),
        (lambda: SearchSpace(channel_group=4), "a channel group applies to per-channel widths only"),
        (lambda: SearchSpace(keep={"fc": 12}), "supports only 2 to 8"),
        (lambda: SolverSettings(name="gurobi"), "name='gurobi' must be one of cbc, highs"),
        (lambda: SolverSettings(time_limit_s=0), "positive number of seconds"),
        (lambda: ProbeSettings(tol=0), "between 0 and 1"),
        (lambda: ProbeSettings(max_probes=1), "at least 2"),
        (lambda: ProbeSettings(max_seconds=float("nan")), "positive number of seconds"),
        (lambda: ProbeSettings(seed=-1), "seed=-1 must be a whole number"),
        (lambda: ProbeSettings(seed=2**70), "must be a whole number from 0"),
        (lambda: ProbeSettings(batch_size=0), "at least 1"),
        (lambda: ProbeSettings(probing="some"), "probing='some' must be one of per-layer, all-layers"),
        (lambda: ProbeSettings(hvp="fwd-fwd"), "hvp='fwd-fwd' must be one of fwd-rev, rev-rev"),
    ],
)
def test_config_objects_refuse_bad_values_with_one_sentence(make, message):
    with pytest.raises(MpqError, match=message) as caught:
        make()
    assert "\n" not in str(caught.value)


def test_min_probes_is_lowered_to_max_probes():
    assert ProbeSettings(max_probes=4).min_probes == 4 and ProbeSettings(max_probes=4) == ProbeSettings(
        max_probes=4, min_probes=4
    )


def test_flat_keywords_still_give_the_same_plan_with_a_deprecation_warning(sensitivity):
    typed = mpq.solve(sensitivity, "2KB", space=SearchSpace(bits=(4, 8), keep={"fc": 8}))
    with pytest.warns(DeprecationWarning, match=r"pass space=mpq.SearchSpace\(bits=..., keep=...\)"):
        flat = mpq.solve(sensitivity, "2KB", bits=(4, 8), keep={"fc": 8})
    assert flat.layers == typed.layers and flat.settings == typed.settings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mpq.solve(sensitivity, "2KB", space=SearchSpace(bits=(4, 8)))  # the typed form warns of nothing


def test_verbs_refuse_unknown_options_and_wrong_types(sensitivity, tiny_model, tiny_data):
    with pytest.raises(MpqError, match="has no option bitz"):
        mpq.solve(sensitivity, "2KB", bitz=(4,))
    with pytest.raises(MpqError, match="takes the result of mpq.analyze"):
        mpq.solve(None, "2KB")
    with pytest.raises(MpqError, match="space must be an mpq.SearchSpace"):
        mpq.solve(sensitivity, "2KB", space={"bits": (4,)})
    with pytest.raises(MpqError, match="has no option max_probez"):
        mpq.analyze(tiny_model, tiny_data, max_probez=3)
