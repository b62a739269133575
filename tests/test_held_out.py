"""Held-out verification: the quantizer is calibrated on `data`, the plan and baselines measured on `eval_data`."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import mpq
from mpq.errors import MpqError
from mpq.inputs.prepare import as_dataset, as_prepared
from mpq.inputs.split import held_out_split
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration
from tests.helpers import USER_MODELS, run_cli
from tests.user_models import mlp


@pytest.fixture
def halves():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    return (x[:32], y[:32]), (x[32:], y[32:])


def test_plan_is_calibrated_on_data_and_measured_on_eval_data(halves):
    (calibration, held_out), model = halves, mlp()
    result = mpq.search(
        model,
        calibration,
        "1KB",
        eval_data=held_out,
        probes=mpq.ProbeSettings(max_probes=2),
        cache_dir=False,
        progress=False,
    )
    report, plan = result.report, result.plan
    assert report.plan.n_eval == 32 and any("measured on 32 held-out samples" in n for n in report.notes)
    prepared, cal, evl = as_prepared(model, as_dataset(calibration)), as_dataset(calibration), as_dataset(held_out)
    fitted = plan_calibration(prepared, plan, cal, fp32_reference(prepared, cal, 25, mpq.cache.Cache(None)))
    logits = packed_logits(prepared, pack_plan(prepared, plan, fitted), evl, 25)
    fp32 = fp32_reference(prepared, evl, 25, mpq.cache.Cache(None)).logits
    expected_kl = float(
        F.kl_div(
            F.log_softmax(logits.double(), 1), F.log_softmax(fp32.double(), 1), log_target=True, reduction="batchmean"
        )
    )
    assert report.plan.kl_to_fp32 == pytest.approx(expected_kl, rel=1e-6)
    assert report.fp32.top1 == pytest.approx(float((fp32.argmax(1) == held_out[1]).float().mean()))
    in_sample = mpq.verify(model, plan, calibration, cache_dir=False, eval_split=0)
    assert in_sample.plan.kl_to_fp32 != pytest.approx(report.plan.kl_to_fp32) and any(
        "in-sample" in n for n in in_sample.notes
    )


def test_without_eval_data_a_seeded_quarter_is_held_out_and_fits_on_the_rest(halves):
    (calibration, _), model = halves, mlp()
    result = mpq.search(
        model, calibration, "1KB", probes=mpq.ProbeSettings(max_probes=2), cache_dir=False, progress=False
    )
    assert result.report.plan.n_eval == 8 and any(
        "a seeded split of --data" in n and "8 of 32 samples held out" in n for n in result.report.notes
    )
    fit, held = held_out_split(as_dataset(calibration))
    assert len(fit) == 24 and len(held) == 8 and not set(map(tuple, fit.x.tolist())) & set(map(tuple, held.x.tolist()))
    again = mpq.verify(model, result.plan, calibration, cache_dir=False)  # the same split: the same numbers
    assert again.plan.kl_to_fp32 == pytest.approx(result.report.plan.kl_to_fp32, rel=1e-9)
    explicit = mpq.verify(model, result.plan, (fit.x, fit.y), eval_data=(held.x, held.y), cache_dir=False)
    assert explicit.plan.kl_to_fp32 == pytest.approx(result.report.plan.kl_to_fp32, rel=1e-9)
    with pytest.raises(MpqError, match="eval_split"):
        mpq.verify(model, result.plan, calibration, cache_dir=False, eval_split=1.5)


def test_quantize_and_export_calibrate_on_the_part_verification_fits_on(halves, tmp_path):
    """Without eval_split, mpq.quantize_ gives, on the held-out samples, exactly the logits mpq.search verified;
    eval_split=0 calibrates on all of the data (other logits)."""
    (calibration, _), model = halves, mlp()
    result = mpq.search(
        model, calibration, "1KB", probes=mpq.ProbeSettings(max_probes=2), cache_dir=False, progress=False
    )
    fit, held = held_out_split(as_dataset(calibration))
    prepared = as_prepared(model, fit)
    fitted = plan_calibration(prepared, result.plan, fit, fp32_reference(prepared, fit, 25, mpq.cache.Cache(None)))
    verified = packed_logits(prepared, pack_plan(prepared, result.plan, fitted), held, 25)
    by_default, on_all = (
        mpq.quantize_(model, result.plan, calibration, cache_dir=False),
        mpq.quantize_(model, result.plan, calibration, cache_dir=False, eval_split=0),
    )
    with torch.inference_mode():
        assert torch.equal(by_default(held.x).float(), verified)
        assert not torch.equal(on_all(held.x).float(), verified)


def test_the_built_in_views_are_split_by_photo():
    from mpq.models.efficientnet_lite0 import load_views

    fit, held = held_out_split(load_views())
    assert len(held) == 50 and len(fit) == 150  # 5 of the 20 photos, every one of their 10 views
    assert not set(fit.groups.tolist()) & set(held.groups.tolist()) and len(set(held.groups.tolist())) == 5


def test_eval_data_that_does_not_fit_the_model_fails_before_any_work(halves, tmp_path, capsys):
    calibration, _ = halves
    np.savez(tmp_path / "cal.npz", x=calibration[0].numpy(), y=calibration[1].numpy())
    np.savez(tmp_path / "wrong.npz", x=np.zeros((8, 5), np.float32))
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        tmp_path / "cal.npz",
        "--eval-data",
        tmp_path / "wrong.npz",
        "--budget",
        "1KB",
        "--out",
        tmp_path / "out",
        "--no-cache",
    )
    assert (
        status == 2
        and err.startswith("mpq: error: the model cannot run on the data (inputs of shape (5,)")
        and len(err.strip().splitlines()) == 1
    )
    with pytest.raises(MpqError, match="labels y reach 9"):
        mpq.search(
            mlp(), calibration, "1KB", eval_data=(calibration[0], torch.full((32,), 9)), cache_dir=False, progress=False
        )


def test_pareto_points_are_measured_on_eval_data(halves):
    (calibration, held_out), model = halves, mlp()
    result = mpq.pareto(
        model,
        calibration,
        "600B,1KB",
        eval_data=held_out,
        verify_points="all",
        probes=mpq.ProbeSettings(max_probes=2),
        cache_dir=False,
        progress=False,
    )
    measured = [p.measured for p in result.points if p.measured is not None]
    assert measured and all(m.n_eval == 32 for m in measured) and all(m.fits_budget for m in measured)
    assert all(u.measured.n_eval == 32 for u in result.uniform)


def test_one_rule_decides_whether_a_plan_fits_its_budgets():
    from mpq.cost.budget import parse_budget, within_budgets

    size, latency = parse_budget("1KB"), parse_budget("2ms")
    assert within_budgets({"size_bytes": 900}, [size], latency_known=False)
    assert not within_budgets({"bops": 1.0}, [size], latency_known=False)  # a cost it lacks cannot be shown to hold
    assert within_budgets({"size_bytes": 900}, [size, latency], latency_known=False)  # no latency model: not checked
    assert not within_budgets(
        {"size_bytes": 900}, [size, latency], latency_known=True
    )  # a model without this plan's latency
    assert within_budgets({"size_bytes": 900, "latency_s": 0.001}, [size, latency], latency_known=True)
