"""Latency budgets on a model: device rooflines, measured tables, `mpq profile`, and the solver under them."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import mpq
from mpq.cost.budget import format_cost, parse_budget
from mpq.cost.latency import latency_model
from mpq.cost.latency_table import LatencyRow, layer_key, read_latency_table, table_text
from mpq.cost.layer_cost import Choice
from mpq.cost.roofline import shipped_devices
from mpq.errors import BudgetInfeasible, MpqError
from mpq.inputs.graph import prepare_model
from mpq.solver.build import Layers, build_problem
from tests.helpers import USER_MODELS, run_cli
from tests.user_models import small_convnet

SMALL = f"{USER_MODELS}:small_convnet"
DEVICE = """
name = "test-device"
memory_bandwidth_bytes_per_s = 1e8
layer_overhead_s = 1e-6
[[kernels]]
weight_bits = 4
act_bits = 4
ops_per_s = 2e9
[[kernels]]
weight_bits = 8
act_bits = 8
ops_per_s = 1e9
[[kernels]]
weight_bits = 32
act_bits = 32
ops_per_s = 0.5e9
"""


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "test-device.toml"
    path.write_text(DEVICE)
    return path


@pytest.fixture
def small_data(tmp_path):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 16, (24,), generator=g)
    np.savez(tmp_path / "small.npz", x=x.numpy(), y=y.numpy())
    return tmp_path / "small.npz", (x, y)


def test_roofline_latency_of_a_tiny_layer_is_the_formula(tiny_model, tiny_data, device):
    layers = prepare_model(tiny_model, tiny_data[0][:2]).graph.by_name
    conv1, fc = layers["conv1"], layers["fc"]  # conv1: 1944 MACs, 54 weights, 72 inputs, 108 outputs per sample
    model = latency_model(str(device), batch=2)
    # W4A8 runs on the int8 kernel (4-bit inputs would be needed for the int4 one): compute-bound
    assert model.latency_s(conv1, Choice(4, 8)) == pytest.approx(
        max(2 * 1944 * 2 / 1e9, (27 + 2 * 180) / 1e8) + 1e-6, rel=1e-12
    )
    assert model.latency_s(conv1, Choice(4, 4)) == pytest.approx(
        max(2 * 1944 * 2 / 2e9, (27 + 2 * 180 * 4 / 8) / 1e8) + 1e-6, rel=1e-12
    )
    # a float input needs the fp32 kernel: 4-byte activations
    assert model.latency_s(conv1, Choice(8, None)) == pytest.approx(
        max(2 * 1944 * 2 / 0.5e9, (54 + 2 * 180 * 4) / 1e8) + 1e-6, rel=1e-12
    )
    # fc: 32 MACs, 32 weights, 8 inputs, 4 outputs: memory-bound
    assert model.latency_s(fc, Choice(8, 8)) == pytest.approx((32 + 2 * 12) / 1e8 + 1e-6, rel=1e-12)


def test_shipped_devices_load_with_their_sources():
    assert set(shipped_devices()) >= {"arm-cortex-a76", "nvidia-t4", "nvidia-a100"}
    for name in shipped_devices():
        spec = latency_model(name).device
        assert spec.name == name and len(spec.source) > 40
    t4 = latency_model("nvidia-t4").device
    assert {(k.weight_bits, k.act_bits): k.ops_per_s for k in t4.kernels}[8, 8] == 130e12  # the datasheet's INT8 TOPS
    a76 = latency_model("arm-cortex-a76").device
    assert a76.kernel_for(Choice(4, 4)).weight_bits == 8  # no 4-bit arithmetic: the int8 kernel


def test_table_rows_match_exactly_and_a_missing_row_names_the_layer(tiny_model, tiny_data, tmp_path):
    graph = prepare_model(tiny_model, tiny_data[0][:2]).graph
    conv1, conv2, fc = graph.layers
    assert (
        layer_key(conv2, 1).stride == "2x2" and layer_key(conv2, 1).output_hw == "2x2" and layer_key(fc, 1).kernel == ""
    )
    rows = [
        LatencyRow(layer_key(conv1, 1), Choice(8, 8), 3e-5),
        LatencyRow(layer_key(conv1, 1), Choice(4, 8), 2e-5),
        LatencyRow(layer_key(conv2, 1), Choice(8, 8), 1e-5),
        LatencyRow(layer_key(fc, 1), Choice(8, None), 4e-6),
        LatencyRow(layer_key(fc, 4), Choice(8, None), 9e-6),
    ]
    path = tmp_path / "t.csv"
    path.write_text(table_text(rows, ["device: hand-written"]))
    with pytest.raises(MpqError, match="batches \\[1, 4\\]: choose one with --latency-batch"):
        read_latency_table(path)
    table = read_latency_table(path, batch=1)
    assert table.device == "hand-written"
    assert table.latency_s(conv1, Choice(4, 8)) == 2e-5 and table.latency_s(fc, Choice(8, None)) == 4e-6
    assert read_latency_table(path, batch=4).latency_s(fc, Choice(8, None)) == 9e-6
    with pytest.raises(
        MpqError, match="no row for layer conv2 \\(conv2d 3->2 kernel 3x3 stride 2x2 input 6x6 batch 1\\) at W4A8"
    ):
        table.latency_s(conv2, Choice(4, 8))
    budgets = [parse_budget("1ms")]
    problem = build_problem(Layers(graph.layers), budgets, (4, 8), (8, None), lambda n, c: 0.0, latency=table)
    assert problem.choices == {"conv1": [Choice(4, 8), Choice(8, 8)], "conv2": [Choice(8, 8)], "fc": [Choice(8, None)]}
    assert problem.costs["conv1"][Choice(4, 8)]["latency_s"] == 2e-5
    with pytest.raises(MpqError, match="no row for layer fc .* at any candidate width \\(W4A8, W8A8\\)"):
        build_problem(Layers(graph.layers), budgets, (4, 8), (8,), lambda n, c: 0.0, latency=table)
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace(",3e-05,", ",-1,", 1))
    with pytest.raises(MpqError, match="bad.csv line 3: latency_s '-1'"):
        read_latency_table(bad)


def _brute_force(sens, layers, budget_s, model, bits, acts, margin):
    """Every plan of least total Omega within the latency budget, ties broken towards the widest activations
    (as the solver's second stage); plans still tied are all optimal."""
    options = [Choice(b, a) for b in bits for a in acts]
    latencies = {(layer.name, c): model.latency_s(layer, c) for layer in layers for c in options}
    omegas = {
        (layer.name, c): sens.layers[layer.name].omega(c.weight_bits, margin) for layer in layers for c in options
    }
    ranked = []
    for combo in itertools.product(options, repeat=len(layers)):
        if sum(latencies[layer.name, c] for layer, c in zip(layers, combo)) <= budget_s:
            omega = sum(omegas[layer.name, c] for layer, c in zip(layers, combo))
            ranked.append(
                (omega, -sum(c.act_bits or 32 for c in combo), {layer.name: c for layer, c in zip(layers, combo)})
            )
    least = min(r[0] for r in ranked)
    widest = min(r[1] for r in ranked if r[0] <= least * (1 + 1e-9))
    return [r[2] for r in ranked if r[0] <= least * (1 + 1e-9) and r[1] == widest]


def test_latency_budgets_are_met_by_the_brute_force_optimum(small_data, device):
    _, (x, y) = small_data
    sens = mpq.analyze(small_convnet(), (x, y), max_probes=4, min_probes=4, cache_dir=False, progress=False)
    layers = [s.layer for s in sens.layers.values()]
    model = latency_model(str(device))
    bits, acts = (2, 4, 8), (4, 8)
    least = sum(min(model.latency_s(layer, Choice(b, a)) for b in bits for a in acts) for layer in layers)
    most = sum(max(model.latency_s(layer, Choice(b, a)) for b in bits for a in acts) for layer in layers)
    for fraction in (0.1, 0.4, 0.8):
        budget = least + fraction * (most - least)
        plan = mpq.solve(sens, f"{budget}s", bits=bits, act_bits=acts, latency=model, trace_margin=2.0)
        chosen = {n: lp.choice for n, lp in plan.layers.items()}
        assert chosen in _brute_force(sens, layers, budget, model, bits, acts, 2.0)  # 1-3 of 1,296 plans
        assert plan.predicted["latency_s"] == pytest.approx(
            sum(model.latency_s(layer, chosen[layer.name]) for layer in layers), rel=1e-12
        )
        assert plan.predicted["latency_s"] <= budget
    with pytest.raises(
        BudgetInfeasible, match=f"the smallest that can be met is {format_cost('latency_s', least, round_up=True)}"
    ):
        mpq.solve(sens, f"{least * 0.99}s", bits=bits, act_bits=acts, latency=model)


def test_search_cli_keeps_a_latency_budget_and_reports_it(small_data, device, tmp_path, capsys):
    data, _ = small_data
    out = tmp_path / "out"
    args = (
        "search",
        "--model",
        SMALL,
        "--data",
        data,
        "--device",
        device,
        "--bits",
        "2,4,8",
        "--act-bits",
        "4,8",
        "--max-probes",
        "4",
        "--no-cache",
        "--quiet",
        "--out",
        out,
    )
    status, stdout, _ = run_cli(capsys, *args, "--budget", "40us")
    assert status == 0
    plan, report = json.loads((out / "plan.json").read_text()), json.loads((out / "report.json").read_text())
    assert (
        plan["predicted"]["latency_s"] <= 40e-6 and report["predicted"]["latency_s"] == plan["predicted"]["latency_s"]
    )
    assert plan["settings"]["latency"] == {
        "source": "roofline",
        "spec": str(device),
        "device": "test-device",
        "batch": 1,
    }
    assert f"predicted latency {format_cost('latency_s', plan['predicted']['latency_s'])} within 40us" in stdout
    w8 = next(b for b in report["baselines"] if b["name"] == "uniform W8A8")
    assert w8["fits_budget"] == (w8["latency_s"] <= 40e-6)
    # `mpq verify` predicts with the latency model the plan was solved with
    status, _, _ = run_cli(
        capsys, "verify", out / "plan.json", "--model", SMALL, "--data", data, "--no-cache", "--out", tmp_path / "v"
    )
    assert status == 0
    assert json.loads((tmp_path / "v" / "report.json").read_text())["predicted"] == report["predicted"]
    graph = prepare_model(small_convnet(), torch.zeros(2, 3, 8, 8)).graph
    least = sum(
        min(latency_model(str(device)).latency_s(layer, Choice(b, a)) for b in (2, 4, 8) for a in (4, 8))
        for layer in graph.layers
    )
    status, _, err = run_cli(capsys, *args, "--budget", "1us")
    assert status == 3 and err.count("\n") == 1
    assert f"the smallest that can be met is {format_cost('latency_s', least, round_up=True)}" in err


def test_a_latency_budget_without_a_latency_model_exits_2(small_data, tmp_path, capsys):
    status, _, err = run_cli(
        capsys, "search", "--model", SMALL, "--data", small_data[0], "--budget", "2.5ms", "--out", tmp_path / "o"
    )
    assert status == 2 and err.count("\n") == 1
    assert "budget 2.5ms is a latency: pass --latency-device NAME" in err and "--latency-table FILE.csv" in err
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        SMALL,
        "--data",
        small_data[0],
        "--budget",
        "2.5ms",
        "--device",
        "nvidia-t5",
        "--out",
        tmp_path / "o",
    )
    assert status == 2 and "unknown device 'nvidia-t5'" in err


def test_profile_writes_a_table_that_covers_the_model_and_drives_search(small_data, tmp_path, capsys):
    data, _ = small_data
    table = tmp_path / "cpu.csv"
    status, out, _ = run_cli(
        capsys,
        "profile",
        "--model",
        SMALL,
        "--data",
        data,
        "--out",
        table,
        "--repeats",
        "5",
        "--warmup",
        "1",
        "--threads",
        "1",
    )
    assert status == 0
    loaded = read_latency_table(table)
    assert loaded.batch == 1 and "threads" in loaded.device
    layers = prepare_model(small_convnet(), torch.zeros(2, 3, 8, 8)).graph.layers
    covered = lambda choice: [layer.name for layer in layers if loaded.covers(layer, choice)]  # noqa: E731
    assert covered(Choice(32, None)) == covered(Choice(8, 8)) == ["stem", "dw", "pw", "fc"]
    assert covered(Choice(8, None)) == covered(Choice(4, None)) == ["fc"]  # weight-only kernels run Linear layers
    assert {c for _, c in loaded.latencies} == {Choice(32, None), Choice(8, 8), Choice(8, None), Choice(4, None)}
    assert all(v > 0 for v in loaded.latencies.values())
    assert "| W8A8 | torch.ao quantized" in out and "4 of 4" in out and "no native kernel here: no rows" in out
    status, out, err = run_cli(
        capsys,
        "search",
        "--model",
        SMALL,
        "--data",
        data,
        "--latency-table",
        table,
        "--budget",
        "1s",
        "--bits",
        "4,8",
        "--act-bits",
        "8,none",
        "--max-probes",
        "4",
        "--no-cache",
        "--quiet",
        "--out",
        tmp_path / "o",
    )
    assert status == 0, err
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    chosen = {n: Choice(v["weight_bits"], v["act_bits"]) for n, v in plan["layers"].items()}
    by_name = {layer.name: layer for layer in layers}
    assert plan["predicted"]["latency_s"] == pytest.approx(
        sum(loaded.latency_s(by_name[n], c) for n, c in chosen.items())
    )
    assert all(c == Choice(8, 8) for n, c in chosen.items() if n != "fc")  # the only widths measured on convs
    assert "W4A8 on any layer" in plan["settings"]["latency"]["note"] and "note: " in out
