"""Per-channel weight widths (`--granularity channel`): brute force against the solver, exact bytes of the
packed export, plan.json round trip and validation, load_packed and ONNX against the evaluator."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import run_cli

import mpq
from mpq.cache import Cache
from mpq.cost.budget import parse_budget
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.export.packed_file import read_packed
from mpq.inputs.data import Dataset
from mpq.inputs.graph import prepare_model
from mpq.plan import ChannelRun, LayerPlan, Plan, storage_chunks
from mpq.quant.affine import fake_quantize_weight
from mpq.quant.reference import fp32_reference
from mpq.solver.build import Layers
from mpq.solver.channels import build_channel_problem, channel_groups, channel_omega
from mpq.solver.presolve import lagrangian_reduction, solve_presolved
from mpq.solver.problem import Problem, solve_problem
from mpq.verify.apply import unpack_model
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration

BITS = (3, 5, 8)  # 3 and 5 bits make ceil(n * b / 8) round per group


@pytest.fixture(scope="module")
def tiny_setup():
    """The tiny conv net (conv1 3x18 weights, conv2 2x27, fc 4x8), its data and an 8-probe sensitivity."""
    from conftest import TinyConvNet

    torch.manual_seed(0)
    model = TinyConvNet().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, 2, 6, 6, generator=generator)
    y = torch.randint(0, 4, (24,), generator=generator)
    sensitivity = mpq.analyze(model, (x, y), max_probes=8, min_probes=8, cache_dir=False, progress=False)
    return model, Dataset(x=x, y=y), sensitivity


def brute_force(sensitivity, group: int, budget_bytes: float, margin: float = 2.0) -> float:
    """Least total Omega over every assignment of a width in BITS to every group of `group` channels, 8-bit inputs.

    Size from first principles: per group ceil(n_c * |g| * b / 8) + 4 |g| scales + 4 |g| biases; per layer 8 bytes
    of input quantizer; plus the float remainder."""
    units = []  # (omega per width, bytes per width)
    fixed = sensitivity.float_bytes
    for s in sensitivity.layers.values():
        layer = s.layer
        per_channel = layer.params // layer.out_channels
        fixed += 8
        for start in range(0, layer.out_channels, group):
            stop = min(start + group, layer.out_channels)
            n = stop - start
            omegas = [float(s.channel_omega(b, margin)[start:stop].sum()) for b in BITS]
            sizes = [math.ceil(per_channel * n * b / 8) + 4 * n + (4 * n if layer.bias_params else 0) for b in BITS]
            units.append((omegas, sizes))
    best = math.inf
    for pick in itertools.product(range(len(BITS)), repeat=len(units)):
        size = fixed + sum(u[1][k] for u, k in zip(units, pick))
        if size <= budget_bytes:
            best = min(best, sum(u[0][k] for u, k in zip(units, pick)))
    return best


def size_range(sensitivity, group: int) -> tuple[float, float]:
    layers = [s.layer for s in sensitivity.layers.values()]
    problem = build_channel_problem(
        Layers(layers, sensitivity.float_bytes), [], BITS, (8,), lambda g, b: 0.0, group
    ).problem
    low = sum(min(c["size_bytes"] for c in problem.costs[u].values()) for u in problem.layers)
    high = sum(max(c["size_bytes"] for c in problem.costs[u].values()) for u in problem.layers)
    return problem.fixed_costs["size_bytes"] + low, problem.fixed_costs["size_bytes"] + high


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.8])
def test_solver_equals_brute_force_over_every_per_channel_assignment(tiny_setup, group, fraction):
    _, _, sensitivity = tiny_setup
    low, high = size_range(sensitivity, group)
    budget = math.floor(low + fraction * (high - low))
    plan = mpq.solve(sensitivity, f"{budget}B", bits=BITS, granularity="channel", channel_group=group)
    expected = brute_force(sensitivity, group, budget)
    assert plan.predicted["omega"] == pytest.approx(expected, rel=1e-9)
    assert plan.predicted["size_bytes"] <= budget
    for lp in plan.layers.values():  # groups of `group` channels take one width
        widths = [r.weight_bits for r in lp.channel_bits for _ in range(r.start, r.stop)]
        assert all(widths[c] == widths[c - c % group] for c in range(len(widths)))
        assert lp.channel_group == group and lp.weight_bits == max(widths)


def test_channel_groups_cover_the_layer_and_the_last_may_be_shorter(tiny_setup):
    _, _, sensitivity = tiny_setup
    fc = sensitivity.layers["fc"].layer  # 4 output channels
    assert [(g.start, g.stop) for g in channel_groups(fc, 3)] == [(0, 3), (3, 4)]
    assert [
        (c.start, c.stop, c.weight_bits) for c in storage_chunks([ChannelRun(0, 3, 4), ChannelRun(3, 7, 8)], 2)
    ] == [(0, 2, 4), (2, 3, 4), (3, 4, 8), (4, 6, 8), (6, 7, 8)]


def test_per_channel_optimum_is_at_most_the_layer_tied_optimum(tiny_setup):
    """Tying all groups of each layer to one width restricts the same program, so its optimum is no better."""
    _, _, sensitivity = tiny_setup
    layers = [s.layer for s in sensitivity.layers.values()]
    low, high = size_range(sensitivity, 1)
    omega = channel_omega(sensitivity, 2.0)
    for fraction in (0.2, 0.5, 0.9):
        budget = parse_budget(f"{math.floor(low + fraction * (high - low))}B")
        free = build_channel_problem(Layers(layers, sensitivity.float_bytes), [budget], BITS, (8,), omega, 1).problem
        tied = build_channel_problem(Layers(layers, sensitivity.float_bytes), [budget], BITS, (8,), omega, 1).problem
        tied.tie_groups = [[u for u in tied.layers if u.startswith(f"{layer.name}[")] for layer in layers]
        per_channel, _ = solve_presolved(free)
        assert per_channel.objective <= solve_problem(tied).objective + 1e-15
    assert per_channel.objective < solve_problem(tied).objective  # strictly better somewhere


def random_problem(seed: int, units: int = 6, widths: int = 3) -> Problem:
    rng = np.random.default_rng(seed)
    names = [f"u{i}" for i in range(units)]
    choices = {n: [Choice(b, 8) for b in range(2, 2 + widths)] for n in names}
    omega, costs = {}, {}
    for n in names:
        o = np.sort(rng.random(widths))[::-1] * rng.lognormal(0, 2)
        c = np.sort(rng.integers(1, 100, widths))
        omega[n] = {ch: float(o[k]) for k, ch in enumerate(choices[n])}
        costs[n] = {ch: {"size_bytes": float(c[k])} for k, ch in enumerate(choices[n])}
    total = sum(max(v["size_bytes"] for v in costs[n].values()) for n in names)
    budget = parse_budget(f"{int(total * 0.6)}B")
    return Problem(layers=names, choices=choices, omega=omega, costs=costs, fixed_costs={}, budgets=[budget])


@pytest.mark.parametrize("seed", range(6))
def test_lagrangian_reduction_keeps_the_optimum_of_random_knapsacks(seed):
    problem = random_problem(seed)
    best = min(
        sum(problem.omega[n][c] for n, c in zip(problem.layers, pick))
        for pick in itertools.product(*(problem.choices[n] for n in problem.layers))
        if sum(problem.costs[n][c]["size_bytes"] for n, c in zip(problem.layers, pick)) <= problem.budgets[0].limit
    )
    reduction = lagrangian_reduction(problem)
    assert reduction.lower_bound <= best + 1e-12 and best <= reduction.incumbent + 1e-12
    solution, _ = solve_presolved(problem)
    assert solution.objective == pytest.approx(best, rel=1e-12)


@pytest.fixture(scope="module")
def channel_plan(tiny_setup):
    """A per-channel plan of the tiny net (groups of 2, widths 3/5/8) with mixed widths inside layers."""
    model, data, sensitivity = tiny_setup
    low, high = size_range(sensitivity, 2)
    plan = mpq.solve(sensitivity, f"{math.floor((low + high) / 2)}B", bits=BITS, granularity="channel", channel_group=2)
    assert any(len({r.weight_bits for r in lp.channel_bits}) > 1 for lp in plan.layers.values())
    return plan


def test_measured_size_and_bops_equal_the_prediction(tiny_setup, channel_plan, tmp_path):
    model, data, _ = tiny_setup
    report = mpq.verify(model, channel_plan, data, baseline_bits=BITS, cache_dir=False)
    assert report.plan.size_bytes == channel_plan.predicted["size_bytes"]
    assert report.plan.bops == channel_plan.predicted["bops"]
    result = mpq.export_plan(model, channel_plan, data, tmp_path / "tiny.mpqpack", cache_dir=False, eval_split=0)
    stored = read_packed(tmp_path / "tiny.mpqpack")
    assert stored.tensor_bytes == result.counted_bytes == channel_plan.predicted["size_bytes"]
    assert stored.file_bytes == (tmp_path / "tiny.mpqpack").stat().st_size


def test_load_packed_reproduces_the_evaluator_for_per_channel_widths(tiny_setup, channel_plan, tmp_path):
    model, data, _ = tiny_setup
    prepared = prepare_model(model, data.x[:2])
    calibration = plan_calibration(prepared, channel_plan, data, fp32_reference(prepared, data, 8, Cache(None)), 8)
    evaluator = packed_logits(prepared, pack_plan(prepared, channel_plan, calibration), data, 8)
    mpq.export_plan(model, channel_plan, data, tmp_path / "tiny.mpqpack", cache_dir=False, eval_split=0)
    rebuilt = mpq.load_packed(tmp_path / "tiny.mpqpack", model)
    with torch.inference_mode():
        assert torch.equal(torch.cat([rebuilt(x) for x, _ in data.batches(8)]), evaluator)
    dequantized, _ = unpack_model(prepared.folded, read_packed(tmp_path / "tiny.mpqpack").packed)
    for name, lp in channel_plan.layers.items():  # every channel at its own width and its clip ratio there, bit for bit
        weight = prepared.folded.get_submodule(name).weight
        for run in lp.channel_bits:
            ratio = calibration.clip_ratios[name][run.weight_bits][run.start : run.stop]
            expected = fake_quantize_weight(weight[run.start : run.stop], run.weight_bits, ratio)
            assert torch.equal(dequantized.get_submodule(name).weight[run.start : run.stop], expected)


def test_onnx_stores_per_channel_codes_in_the_widest_type(tiny_setup, channel_plan, tmp_path):
    import onnx

    from mpq.export.onnx_qdq import run_onnx

    model, data, _ = tiny_setup
    prepared = prepare_model(model, data.x[:2])
    calibration = plan_calibration(prepared, channel_plan, data, fp32_reference(prepared, data, 8, Cache(None)), 8)
    evaluator = packed_logits(prepared, pack_plan(prepared, channel_plan, calibration), data, 8)
    mpq.export_plan(model, channel_plan, data, tmp_path / "tiny.onnx", format="onnx", cache_dir=False, eval_split=0)
    inits = {i.name: i for i in onnx.load(str(tmp_path / "tiny.onnx")).graph.initializer}
    storage = {3: onnx.TensorProto.INT4, 5: onnx.TensorProto.INT8, 8: onnx.TensorProto.INT8}
    for name, lp in channel_plan.layers.items():
        assert inits[f"{name}.weight_codes"].data_type == storage[lp.weight_bits]
    assert torch.allclose(run_onnx(tmp_path / "tiny.onnx", data.x, batch_size=8), evaluator, atol=1e-5)


def test_torchao_export_carries_per_channel_widths(tiny_setup, channel_plan, tmp_path):
    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_torchao_config

    model, data, _ = tiny_setup
    prepared = prepare_model(model, data.x[:2])
    calibration = plan_calibration(prepared, channel_plan, data, fp32_reference(prepared, data, 25, Cache(None)), 25)
    evaluator = packed_logits(prepared, pack_plan(prepared, channel_plan, calibration), data, 8)
    mpq.export_plan(model, channel_plan, data, tmp_path / "t.json", format="torchao", cache_dir=False, eval_split=0)
    folded = prepare_model(model, data.x[:2]).folded
    quantize_(folded, load_torchao_config(tmp_path / "t.json"), filter_fn=None)
    for name, lp in channel_plan.layers.items():
        codes = folded.get_submodule(name).weight.qdata
        for run in lp.channel_bits:
            assert int(codes[run.start : run.stop].abs().max()) <= 2 ** (run.weight_bits - 1)
    with torch.inference_mode():
        assert torch.equal(torch.cat([folded(x) for x, _ in data.batches(8)]), evaluator)


def test_per_channel_plan_round_trips_through_plan_json(channel_plan, tmp_path):
    channel_plan.save(tmp_path / "plan.json")
    text = json.loads((tmp_path / "plan.json").read_text())
    entry = text["layers"]["conv1"]
    assert entry["weight_bits"] == max(r["weight_bits"] for r in entry["channel_bits"]) and entry["channel_group"] == 2
    assert entry["channel_bits"][0]["channels"][0] == 0
    back = Plan.load(tmp_path / "plan.json")
    assert back.layers == channel_plan.layers and back.to_json() == channel_plan.to_json()
    assert text["settings"]["search_space"]["granularity"] == "channel" and back.settings == channel_plan.settings


def test_layer_wise_plans_keep_their_json():
    plan = Plan.from_json({"schema": "mpq.plan/1", "layers": {"fc": {"weight_bits": 6, "act_bits": 8}}})
    assert plan.layers["fc"] == LayerPlan(6, 8) and plan.layers["fc"].channel_bits is None
    assert plan.to_json()["layers"]["fc"] == {"weight_bits": 6, "act_bits": 8, "granularity": "channel"}


def _plan_with(channel_bits, weight_bits=8, **extra) -> dict:
    entry = {"weight_bits": weight_bits, "act_bits": 8, "channel_bits": channel_bits, **extra}
    return {"schema": "mpq.plan/1", "layers": {"fc": entry}}


@pytest.mark.parametrize(
    "channel_bits, weight_bits, message",
    [
        ([], 8, "non-empty list"),
        ([{"channels": [1, 4], "weight_bits": 8}], 8, "starts at 1 instead of 0"),
        (
            [{"channels": [0, 2], "weight_bits": 8}, {"channels": [3, 4], "weight_bits": 4}],
            8,
            "starts at 3 instead of 2",
        ),
        (
            [{"channels": [0, 3], "weight_bits": 8}, {"channels": [2, 4], "weight_bits": 4}],
            8,
            "starts at 2 instead of 3",
        ),
        ([{"channels": [0, 0], "weight_bits": 8}], 8, "holds no channel"),
        ([{"channels": [0, 4], "weight_bits": 17}], 8, "not a width from 1 to 16"),
        ([{"channels": [0, 4], "weight_bits": 0}], 8, "not a width from 1 to 16"),
        ([{"channels": "0-4", "weight_bits": 8}], 8, 'needs "channels": [start, stop]'),
        ([{"channels": [0, 2], "weight_bits": 4}, {"channels": [2, 4], "weight_bits": 6}], 8, "not the widest"),
        ("all", 8, "non-empty list"),
    ],
)
def test_malformed_channel_bits_are_one_sentence_errors(channel_bits, weight_bits, message):
    with pytest.raises(MpqError, match="malformed") as error:
        Plan.from_json(_plan_with(channel_bits, weight_bits), source="plan.json")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_channel_bits_must_cover_the_layers_channels(tiny_setup):
    model, data, _ = tiny_setup
    widths = {
        "conv1": LayerPlan(8, 8),
        "conv2": LayerPlan(8, 8),
        "fc": LayerPlan(8, 8, channel_bits=(ChannelRun(0, 3, 8),), channel_group=1),
    }
    with pytest.raises(MpqError, match="channel_bits of layer fc cover 3 output channels but the layer has 4"):
        mpq.verify(model, Plan(layers=widths), data, cache_dir=False)
    with pytest.raises(MpqError, match="channel_group 0 is not a positive"):
        Plan.from_json(_plan_with([{"channels": [0, 4], "weight_bits": 8}], 8, channel_group=0))


def test_keep_pins_every_channel_of_a_layer(tiny_setup):
    _, _, sensitivity = tiny_setup
    low, _ = size_range(sensitivity, 1)
    plan = mpq.solve(sensitivity, f"{math.floor(low) + 40}B", bits=BITS, granularity="channel", keep={"conv2": 8})
    assert plan.layers["conv2"].channel_bits == (ChannelRun(0, 2, 8),)


def test_bad_granularity_options_are_user_errors(tiny_setup):
    _, _, sensitivity = tiny_setup
    with pytest.raises(MpqError, match="granularity='row' must be one of layer, channel"):
        mpq.solve(sensitivity, "1MB", granularity="row")
    with pytest.raises(MpqError, match="must be a whole number of output channels"):
        mpq.solve(sensitivity, "1MB", granularity="channel", channel_group=0)
    with pytest.raises(MpqError, match="add --granularity channel"):
        mpq.solve(sensitivity, "1MB", channel_group=4)


def test_cli_search_with_channel_granularity_writes_channel_bits(tmp_path, capsys):
    from helpers import USER_MODELS, mlp_data

    data = mlp_data(tmp_path / "d.npz")
    args = [
        "search",
        "--model",
        f"{USER_MODELS}:mlp",
        "--data",
        data,
        "--budget",
        "290B",
        "--bits",
        "4,8",
        "--no-cache",
        "--quiet",
        "--max-probes",
        "3",
        "--out",
        tmp_path / "out",
        "--granularity",
        "channel",
        "--channel-group",
        "3",
    ]
    status, out, err = run_cli(capsys, *args)
    assert status == 0, err
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all("channel_bits" in entry for entry in plan["layers"].values())
    assert report["measured"]["size_bytes"] == plan["predicted"]["size_bytes"] <= 290
    status, _, err = run_cli(capsys, *args[:-1], "0")
    assert status == 2 and err.startswith("mpq: error: channel_group=0 must be a whole number")


def test_per_channel_plans_use_the_chosen_solver(tiny_setup, channel_plan):
    _, _, sensitivity = tiny_setup
    budget = channel_plan.budgets[0].text
    cbc = mpq.solve(sensitivity, budget, bits=BITS, granularity="channel", channel_group=2, solver="cbc")
    assert channel_plan.solver["name"] == "highs" and cbc.solver["name"] == "cbc" and cbc.solver["proven_optimal"]
    assert cbc.predicted["omega"] == pytest.approx(channel_plan.predicted["omega"], rel=1e-9)
