"""Per-layer SQNR on the tiny model, against sums computed here from the tensors themselves."""

import json
import math

import pytest
import torch

from mpq.cache import Cache, entry_bytes, entry_value
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import LayerPlan, Plan
from mpq.quant.affine import sqnr_db
from mpq.quant.reference import fp32_reference
from mpq.report.markdown import sqnr_table
from mpq.verify.apply import fake_quant_model
from mpq.verify.measure import pack_plan, plan_calibration, verify_prepared
from mpq.verify.sqnr import layer_sqnr


def test_sqnr_db_is_ten_log10_of_the_energy_ratio():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(5.0, 0.0) == math.inf


def test_layer_sqnr_matches_direct_sums(tiny_model, tiny_data):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = Plan(layers={"conv1": LayerPlan(3, 8), "conv2": LayerPlan(5, None), "fc": LayerPlan(8, 4)})
    reference = fp32_reference(prepared, Dataset(x=x, y=y), 8, Cache(None))
    calibration = plan_calibration(prepared, plan, Dataset(x=x, y=y), reference, 8)
    packed = pack_plan(prepared, plan, calibration)
    rows = {r.name: r for r in layer_sqnr(prepared, packed, x, batch_size=10)}
    w = prepared.folded.conv1.weight.detach().double()
    noise = (
        (
            w
            - calibration.weight("conv1", prepared.folded.conv1.weight, [3] * prepared.folded.conv1.weight.shape[0])
            .dequantize()
            .double()
        )
        .pow(2)
        .sum()
    )
    assert rows["conv1"].weight_sqnr_db == pytest.approx(10 * math.log10(float(w.pow(2).sum() / noise)))
    assert rows["fc"].weight_sqnr_db > rows["conv2"].weight_sqnr_db > rows["conv1"].weight_sqnr_db
    assert rows["conv2"].input_sqnr_db is None
    # conv1's input is the model input itself: its SQNR is that of the 8-bit quantizer on x
    act = packed.tensors
    scale, zp = float(act["conv1.input_scale"][0]), int(act["conv1.input_zero_point"][0])
    xq = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    assert rows["conv1"].input_sqnr_db == pytest.approx(
        sqnr_db(float(x.double().pow(2).sum()), float((x - xq).double().pow(2).sum())), rel=1e-6
    )
    assert rows["fc"].input_sqnr_db < rows["conv1"].input_sqnr_db  # 4 bits against 8
    # fc is the last layer: its output SQNR is that of the quantized model's logits against FP32's
    with torch.no_grad():
        fp32, quantized = prepared.folded(x).double(), fake_quant_model(prepared.folded, packed)(x).double()
    assert rows["fc"].output_sqnr_db == pytest.approx(
        sqnr_db(float(fp32.pow(2).sum()), float((fp32 - quantized).pow(2).sum())), rel=1e-6
    )


def test_report_md_carries_the_sqnr_table(tiny_model, tiny_data):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = Plan(layers={"conv1": LayerPlan(4, 8), "conv2": LayerPlan(4, 8), "fc": LayerPlan(8, 8)})
    report = verify_prepared(prepared, plan, Dataset(x=x, y=y))
    assert [r.name for r in report.layer_sqnr] == ["conv1", "conv2", "fc"]
    table = sqnr_table(report)
    assert table.count("\n") == 4 and f"| fc | 8 | 8 | {report.layer_sqnr[2].weight_sqnr_db:.1f} |" in table
    assert report.to_json()["layer_sqnr"][0]["name"] == "conv1"


def test_the_sqnr_table_is_read_back_from_the_cache_as_it_was_measured(tiny_model, tiny_data, tmp_path):
    x, y = tiny_data
    prepared = prepare_model(tiny_model, x[:2])
    plan = Plan(layers={"conv1": LayerPlan(4, 8), "conv2": LayerPlan(3, None), "fc": LayerPlan(8, 8)})
    measured = verify_prepared(prepared, plan, Dataset(x=x, y=y), cache=Cache(tmp_path)).layer_sqnr
    (entry,) = tmp_path.glob("layer-sqnr-*.json")
    assert measured[1].input_sqnr_db is None and all(math.isfinite(r.output_sqnr_db) for r in measured)
    rename = lambda old, new: entry.write_bytes(  # noqa: E731  (the entry's digest follows its value)
        entry_bytes(json.loads(json.dumps(entry_value(entry.read_bytes())).replace(old, new)))
    )
    rename('"conv1"', '"conv1 read from the cache"')
    assert (
        verify_prepared(prepared, plan, Dataset(x=x, y=y), cache=Cache(tmp_path)).layer_sqnr[0].name
        == "conv1 read from the cache"
    )
    rename('"conv1 read from the cache"', '"conv1"')
    again = verify_prepared(prepared, plan, Dataset(x=x, y=y), cache=Cache(tmp_path)).layer_sqnr
    assert again == measured
