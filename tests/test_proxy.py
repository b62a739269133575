"""`mpq search --proxy-check N`: random plans at the same size budget, Omega against measured KL."""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import mpq
from mpq.cost.layer_cost import model_costs
from mpq.errors import MpqError
from mpq.inputs.graph import prepare_model
from mpq.report.markdown import write_outputs
from mpq.verify.proxy import FLOOR, random_plan


def plan_size(prepared, plan) -> float:
    return model_costs(
        prepared.graph.layers, {n: lp.choice for n, lp in plan.layers.items()}, prepared.graph.float_bytes
    )["size_bytes"]


def test_proxy_check_measures_random_plans_within_the_budget(tiny_model, tiny_data, tmp_path):
    result = mpq.search(
        tiny_model,
        tiny_data,
        "200B",
        bits=(2, 3, 4, 6, 8),
        max_probes=4,
        cache_dir=False,
        progress=False,
        proxy_plans=6,
    )
    check = result.report.proxy
    assert [p.kind for p in check.points] == ["mpq plan"] + ["random"] * 6
    assert check.points[0].kl_to_fp32 == pytest.approx(result.report.plan.kl_to_fp32)
    assert all(FLOOR * 200 <= p.size_bytes <= 200 for p in check.points[1:])
    assert check.spearman == pytest.approx(
        spearmanr([p.omega for p in check.points], [p.kl_to_fp32 for p in check.points])[0]
    )
    # the searched plan has the least Omega of all (the solver's optimum at this budget)
    assert check.points[0].omega <= min(p.omega for p in check.points[1:]) + 1e-12
    paths = write_outputs(tmp_path, result.sensitivity, result.plan, result.report)
    assert (tmp_path / "proxy-fidelity.png").stat().st_size > 0 and tmp_path / "proxy-fidelity.png" in paths
    assert "## Does Ω predict?" in (tmp_path / "report.md").read_text()
    saved = json.loads((tmp_path / "report.json").read_text())["proxy_check"]
    assert saved["random_plans"] == 6 and saved["spearman_omega_kl"] == pytest.approx(check.spearman)


def test_random_plans_keep_activation_widths_and_are_seeded(tiny_model, tiny_data):
    x, _ = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    sens = mpq.analyze(prepared, tiny_data, max_probes=4, cache_dir=False, progress=False)
    plan = mpq.solve(sens, "200B", bits=(2, 3, 4, 6, 8))
    draws = [random_plan(prepared, plan, (2, 3, 4, 6, 8), np.random.default_rng(7)) for _ in range(2)]
    assert draws[0].layers == draws[1].layers
    for lp, original in zip(draws[0].layers.values(), plan.layers.values()):
        assert lp.act_bits == original.act_bits and lp.weight_bits in (2, 3, 4, 6, 8)
    assert FLOOR * 200 <= plan_size(prepared, draws[0]) <= 200


def test_proxy_check_needs_a_size_budget_and_two_plans(tiny_model, tiny_data):
    with pytest.raises(MpqError, match="at least 2 random plans"):
        mpq.search(tiny_model, tiny_data, "200B", max_probes=4, cache_dir=False, progress=False, proxy_plans=1)
    with pytest.raises(MpqError, match="needs a size budget"):
        mpq.search(tiny_model, tiny_data, "1MBOPs", max_probes=4, cache_dir=False, progress=False, proxy_plans=5)
