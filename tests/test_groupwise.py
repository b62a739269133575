"""Group-wise weight scales (--group-size) and bits-per-weight budgets (--budget 4.25bpw): the quantizer's formula
against a loop over groups, predicted bytes and bits per weight against the real exported file, the solver against
brute force, weight-only baselines and the torchao IntxWeightOnlyConfig export."""

import itertools
import json
import math

import pytest
import torch

import mpq
from mpq.cost.budget import format_cost, parse_budget, within_budgets
from mpq.cost.layer_cost import Choice, model_costs
from mpq.errors import MpqError
from mpq.export.packed_file import read_packed
from mpq.inputs.graph import prepare_model
from mpq.quant.affine import channel_quant_error, quantize_weight
from mpq.quant.calibration import weight_clip_ratios
from mpq.quant.formats import SymmetricInt
from mpq.quant.observers import WEIGHT_CLIPS
from mpq.solver.omega import choice_omega
from tests.helpers import USER_MODELS, run_cli
from tests.user_models import group_net, linear_net

GROUP = 32
PROBES = mpq.ProbeSettings(max_probes=4, min_probes=2, seed=0)
WEIGHT_ONLY = mpq.SearchSpace(bits=(2, 4, 8), act_bits=None)


def loop_quantize(weight: torch.Tensor, bits: int, group: int, ratios: torch.Tensor | None = None) -> torch.Tensor:
    """Q_b(W) group by group: each output channel's flattened weights in groups of `group`, the last one shorter."""
    rows = weight.reshape(weight.shape[0], -1)
    out = torch.empty_like(rows)
    qmax = 2 ** (bits - 1) - 1
    for c in range(rows.shape[0]):
        for k, start in enumerate(range(0, rows.shape[1], group)):
            part = rows[c, start : start + group]
            ratio = 1.0 if ratios is None else float(ratios[c, k])
            scale = torch.tensor(ratio, dtype=torch.float32) * part.abs().max() / qmax
            scale = scale if scale > 0 else torch.tensor(1.0)
            out[c, start : start + group] = torch.clamp(torch.round(part / scale), -qmax - 1, qmax) * scale
    return out.reshape(weight.shape)


@pytest.fixture(scope="module")
def x():
    return torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def searched(x):
    quantizer = mpq.Quantizer(group_size=GROUP)
    return mpq.search(
        group_net(), x, "4.5bpw", space=WEIGHT_ONLY, quantizer=quantizer, probes=PROBES, cache_dir=False, progress=False
    )


def test_group_scales_are_per_group_of_the_flattened_channel_weights():
    conv = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))  # 27 weights per channel
    linear = torch.randn(5, 80, generator=torch.Generator().manual_seed(1))  # 2 groups of 32 and one of 16
    for weight in (conv, linear):
        for bits in (2, 4, 8):
            q = quantize_weight(weight, bits, group_size=GROUP)
            assert (
                q.scale.shape == (weight.shape[0], math.ceil(weight[0].numel() / GROUP))
                and q.scale.dtype == torch.float32
            )
            assert torch.equal(q.dequantize(), loop_quantize(weight, bits, GROUP))
    # one group as large as the channel is per-channel quantization, bit for bit
    assert torch.equal(quantize_weight(linear, 4, group_size=128).dequantize(), quantize_weight(linear, 4).dequantize())
    ratios = WEIGHT_CLIPS["mse"]
    from mpq.quant.affine import grouped

    r = ratios.ratios(grouped(linear, GROUP), 3).reshape(5, -1)
    assert torch.equal(quantize_weight(linear, 3, r, GROUP).dequantize(), loop_quantize(linear, 3, GROUP, r))
    assert channel_quant_error(linear, 3, r, GROUP).sum() <= channel_quant_error(linear, 3, None, GROUP).sum()


def test_omega_uses_the_group_wise_quantizer(searched, x):
    prepared = prepare_model(group_net(), x[:2])
    ratios = weight_clip_ratios(prepared, "mse", fmt=SymmetricInt(GROUP))
    for name, s in searched.sensitivity.layers.items():
        weight = prepared.folded.get_submodule(name).weight
        for bits in (2, 4, 8):
            assert ratios[name][bits].shape == (weight.shape[0], math.ceil(weight[0].numel() / GROUP))
            expected = float(channel_quant_error(weight, bits, ratios[name][bits], GROUP).sum())
            assert s.quant_error[bits] == pytest.approx(
                expected, rel=1e-6
            )  # float32 error, summed per channel in float64
    assert searched.sensitivity.quantizer.group_size == GROUP


def test_predicted_bytes_and_bits_per_weight_are_those_of_the_exported_file(searched, x, tmp_path):
    plan = searched.plan
    layers = {n: lp.weight_bits for n, lp in plan.layers.items()}
    assert len(set(layers.values())) > 1, layers  # mixed widths, so the test is not of one width only
    written = mpq.export_plan(group_net(), plan, x, tmp_path / "plan.mpq")
    stored = read_packed(tmp_path / "plan.mpq")
    assert (
        stored.file_bytes
        == (tmp_path / "plan.mpq").stat().st_size
        == plan.predicted["size_bytes"] + stored.header_bytes
    )
    assert written.counted_bytes == plan.predicted["size_bytes"] == searched.report.plan.size_bytes
    tensors = stored.packed.tensors
    bits = sum(
        8 * tensors[f"{n}.{p}"].numel() * tensors[f"{n}.{p}"].element_size()
        for n in plan.layers
        for p in ("weight_codes", "weight_scale")
    )
    weights = sum(math.prod(meta["weight_shape"]) for meta in stored.packed.layers.values())
    assert plan.predicted["bits_per_weight"] == searched.report.plan.bits_per_weight == bits / weights <= 4.5
    assert (
        tensors["fc2.weight_scale"].shape == (48, 3) and tensors["fc2.weight_scale"].dtype == torch.float32
    )  # 80 = 32 + 32 + 16
    assert tensors["depthwise.weight_scale"].shape == (8, 1)  # 9 weights per channel: one (short) group


def test_plan_json_states_the_groups_and_reads_back_equal(searched, tmp_path):
    searched.plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert all(e["granularity"] == "group" and e["group_size"] == GROUP for e in data["layers"].values())
    assert data["settings"]["quantizer"]["group_size"] == GROUP
    again = mpq.Plan.load(tmp_path / "plan.json")
    assert again.layers == searched.plan.layers and again.settings == searched.plan.settings
    data["layers"]["fc1"]["group_size"] = 64
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(MpqError, match="group_size"):
        mpq.Plan.load(tmp_path / "bad.json")


def test_the_solver_is_exact_under_a_bits_per_weight_and_a_byte_budget(searched, x):
    sensitivity = searched.sensitivity
    prepared = prepare_model(group_net(), x[:2])
    infos = prepared.graph.layers
    budgets = [parse_budget("3.7bpw"), parse_budget("9000B")]
    plan = mpq.solve(sensitivity, budgets, space=WEIGHT_ONLY)
    best = None
    for widths in itertools.product(WEIGHT_ONLY.bits, repeat=len(infos)):
        choices = {layer.name: Choice(w, None) for layer, w in zip(infos, widths)}
        costs = model_costs(infos, choices, prepared.graph.float_bytes, fmt=SymmetricInt(GROUP))
        if within_budgets(costs, budgets, latency_known=False):
            omega = sum(choice_omega(sensitivity.layers[n], c, 2.0, False) for n, c in choices.items())
            best = min(best or (math.inf, None), (omega, widths))
    assert best is not None
    assert plan.predicted["omega"] == pytest.approx(best[0], rel=1e-9)
    assert plan.predicted["bits_per_weight"] <= 3.7 and plan.predicted["size_bytes"] <= 9000


def test_a_plan_exactly_at_its_bits_per_weight_fits():
    net = linear_net()
    sensitivity = mpq.analyze(
        net,
        torch.randn(16, 64),
        probes=PROBES,
        quantizer=mpq.Quantizer(group_size=GROUP),
        cache_dir=False,
        progress=False,
    )
    # every input is a multiple of 32: uniform W4 is exactly 4 + 32/32 = 5 bits per weight
    plan = mpq.solve(sensitivity, "5bpw", space=mpq.SearchSpace(bits=(4, 8), act_bits=None))
    assert {lp.weight_bits for lp in plan.layers.values()} == {4} and plan.predicted["bits_per_weight"] == 5.0
    with pytest.raises(mpq.BudgetInfeasible, match="smallest that can be met is 5 bpw"):
        mpq.solve(sensitivity, "4.99bpw", space=mpq.SearchSpace(bits=(4, 8), act_bits=None))


def test_bits_per_weight_grammar_and_format():
    budget = parse_budget("4.25bpw")
    assert (budget.kind, budget.limit) == ("bits_per_weight", 4.25)
    assert format_cost("bits_per_weight", 4.2500001, round_up=True) == "4.25001 bpw"
    assert within_budgets({"bits_per_weight": 4.25 * (1 + 1e-13)}, [budget], False)
    assert not within_budgets({"bits_per_weight": 4.2501}, [budget], False)


def test_weight_only_baselines_are_group_wise_at_the_plan_group_size(searched):
    report = searched.report
    names = [b.name for b in report.baselines]
    assert (
        names[0] == "uniform W8 g32" and "uniform W2 g32" in names and "uniform W4 g32" not in names
    )  # W4 g32 is 5 bpw > 4.5
    assert all(b.fits_budget == (b.bits_per_weight <= 4.5) for b in report.baselines)
    assert report.weight_only is None  # a weight-only plan is its own float-activation reference
    assert json.loads(json.dumps(report.to_json()))["measured"]["bits_per_weight"] == report.plan.bits_per_weight


def test_quantized_activations_get_a_weight_only_reference_and_the_advice(x):
    from mpq.report.summary import next_steps

    result = mpq.search(
        group_net(),
        x,
        "5.5bpw",
        space=mpq.SearchSpace(bits=(4, 8)),
        quantizer=mpq.Quantizer(group_size=GROUP),
        probes=PROBES,
        cache_dir=False,
        progress=False,
    )
    reference = result.report.weight_only
    assert (
        reference.name == "uniform W8 g32" and reference.bits_per_weight == result.report.baselines[0].bits_per_weight
    )
    w8a8 = result.report.baselines[0]
    assert w8a8.name == "uniform W8A8 g32"
    capped = [s for s in next_steps(result.sensitivity, result.plan, result.report) if "farther from FP32" in s]
    gap = (1 - w8a8.cosine_to_fp32) / (1 - reference.cosine_to_fp32)
    assert bool(capped) == (gap >= 4), gap
    if capped:
        assert "`--act-bits none`" in capped[0]
    # 2-bit inputs: far from FP32 whatever the weights, and the advice says so
    narrow = mpq.search(
        group_net(),
        x,
        "5.5bpw",
        space=mpq.SearchSpace(bits=(4, 8), act_bits=2),
        quantizer=mpq.Quantizer(group_size=GROUP),
        probes=PROBES,
        cache_dir=False,
        progress=False,
    )
    steps = next_steps(narrow.sensitivity, narrow.plan, narrow.report)
    assert any(
        s.startswith("Activation quantization caps the result: uniform W8A2 g32 is") and "`--act-bits none`" in s
        for s in steps
    ), steps


def test_torchao_intx_weight_only_config_reproduces_the_evaluator(tmp_path):
    net, x = linear_net(), torch.randn(48, 64, generator=torch.Generator().manual_seed(2))
    pytest.importorskip("torchao")
    from torchao.quantization import IntxUnpackedToInt8Tensor, IntxWeightOnlyConfig, quantize_

    from mpq.export.torchao_config import load_intx_config

    result = mpq.search(
        net,
        x,
        "4.8bpw",
        space=mpq.SearchSpace(bits=(2, 4, 8), act_bits=None),
        quantizer=mpq.Quantizer(group_size=GROUP),
        probes=PROBES,
        cache_dir=False,
        progress=False,
    )
    mpq.export_plan(net, result.plan, x, tmp_path / "plan.torchao.json", format="torchao")
    modules = json.loads((tmp_path / "plan.torchao.modules.json").read_text())["modules"]
    for name, lp in result.plan.layers.items():
        assert modules[name] == {
            "module": "Linear",
            "weight_bits": lp.weight_bits,
            "group_size": GROUP,
            "torchao": f"IntxWeightOnlyConfig(weight_dtype=torch.int{lp.weight_bits}, granularity=PerGroup(group_size=32), mapping_type=SYMMETRIC)",
        }
    evaluator = mpq.quantize_(net, result.plan, x)
    with torch.no_grad():
        expected = evaluator(x)
    outputs = {}
    for carry in (True, False):
        folded = prepare_model(net, x[:2]).folded
        config = load_intx_config(tmp_path / "plan.torchao.json", carry_scales=carry)
        assert all(isinstance(c, IntxWeightOnlyConfig) for c in config.fqn_to_config.values())
        quantize_(folded, config, filter_fn=None)
        assert isinstance(folded.fc1.weight, IntxUnpackedToInt8Tensor) and folded.fc1.weight.block_size == (1, GROUP)
        with torch.no_grad():
            outputs[carry] = folded(x)
    assert torch.equal(outputs[True], expected)  # mpq's codes, scales and biases carried: bit for bit
    # torchao's own scales (max|W| / ((2^b - 1) / 2), no clipping search, no bias correction): the plan's widths, not its numbers
    agreement = float((outputs[False].argmax(1) == expected.argmax(1)).float().mean())
    cosine = float(torch.nn.functional.cosine_similarity(outputs[False], expected, dim=1).mean())
    print(
        f"torchao's own scales against the evaluator: argmax agreement {agreement:.4f}, mean cosine {cosine:.4f}, "
        f"widths {sorted(lp.weight_bits for lp in result.plan.layers.values())}"
    )
    assert agreement >= 0.5 and cosine >= 0.9, (agreement, cosine)


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "group size 0 must be a power of two of at least 8"),
        ("-32", "group size -32 must be a power of two"),
        ("48", "group size 48 must be a power of two"),
        ("4", "group size 4 must be a power of two of at least 8"),
        ("big", "'big' is not a whole number of weights"),
    ],
)
def test_bad_group_sizes_exit_2_with_one_sentence(capsys, tmp_path, value, message):
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:group_net",
        "--budget",
        "4bpw",
        "--group-size",
        value,
        "--out",
        tmp_path,
    )
    assert status == 2 and message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("mpq: error")] == [err.strip().splitlines()[-1]]
    with pytest.raises(MpqError, match="power of two"):
        mpq.Quantizer(group_size=48)


def test_onnx_refuses_group_wise_plans(searched, x, tmp_path):
    with pytest.raises(MpqError, match="one weight scale per output channel.*--format packed or --format torchao"):
        mpq.export_plan(group_net(), searched.plan, x, tmp_path / "plan.onnx", format="onnx")


def test_pareto_sweeps_bits_per_weight(x, tmp_path):
    from mpq.report.pareto_files import pareto_csv, write_pareto

    result = mpq.pareto(
        group_net(),
        x,
        "3bpw:5bpw:3",
        also_budgets="12KB",
        space=WEIGHT_ONLY,
        quantizer=mpq.Quantizer(group_size=GROUP),
        probes=PROBES,
        verify_points=1,
        cache_dir=False,
        progress=False,
    )
    assert result.kind == "bits_per_weight" and [p.budget.text for p in result.points] == ["3bpw", "4bpw", "5bpw"]
    for point in result.feasible_points:
        assert (
            point.plan.predicted["bits_per_weight"] <= point.budget.limit
            and point.plan.predicted["size_bytes"] <= 12000
        )
    measured = [p for p in result.points if p.measured is not None]
    assert measured and measured[0].measured.bits_per_weight == measured[0].plan.predicted["bits_per_weight"]
    assert [u.name for u in result.uniform] == ["uniform W2 g32", "uniform W4 g32", "uniform W8 g32"]
    assert result.uniform[1].predicted["bits_per_weight"] == result.uniform[1].measured.bits_per_weight
    assert "bits_per_weight" in pareto_csv(result).splitlines()[0]
    assert all(p.exists() for p in write_pareto(tmp_path, result))


def test_cli_search_with_group_size_and_bpw_budget(capsys, tmp_path):
    import numpy as np

    np.savez(tmp_path / "x.npz", x=torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(3)).numpy())
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        f"{USER_MODELS}:group_net",
        "--data",
        tmp_path / "x.npz",
        "--act-bits",
        "none",
        "--bits",
        "2,4,8",
        "--group-size",
        "32",
        "--budget",
        "4.5bpw",
        "--budget",
        "20KB",
        "--max-probes",
        "2",
        "--out",
        tmp_path / "out",
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [b["kind"] for b in plan["budgets"]] == ["bits_per_weight", "size_bytes"] and plan["recipe"][
        "group-size"
    ] == 32
    assert report["measured"]["bits_per_weight"] == plan["predicted"]["bits_per_weight"] <= 4.5
    assert (
        report["measured"]["size_bytes"] == plan["predicted"]["size_bytes"] and report["quantizer"]["group_size"] == 32
    )
    assert "bits per quantized weight" in (tmp_path / "out" / "report.md").read_text()
    # verify keeps the plan's group size even with another quantizer
    status, _, err = run_cli(
        capsys,
        "verify",
        tmp_path / "out" / "plan.json",
        "--model",
        f"{USER_MODELS}:group_net",
        "--data",
        tmp_path / "x.npz",
        "--weight-clip",
        "minmax",
        "--out",
        tmp_path / "v",
        "--no-cache",
        "--quiet",
    )
    assert status == 0, err
    verified = json.loads((tmp_path / "v" / "report.json").read_text())
    assert (
        verified["quantizer"]["group_size"] == 32
        and verified["measured"]["size_bytes"] == plan["predicted"]["size_bytes"]
    )


def test_per_channel_widths_with_group_scales_are_counted_exactly(x, tmp_path):
    space = mpq.SearchSpace(bits=(2, 4, 8), act_bits=8, granularity="channel", channel_group=4)
    result = mpq.search(
        group_net(),
        x,
        ["12KB", "5bpw"],
        space=space,
        quantizer=mpq.Quantizer(group_size=GROUP),
        probes=PROBES,
        cache_dir=False,
        progress=False,
    )
    assert any(len({r.weight_bits for r in lp.channel_bits}) > 1 for lp in result.plan.layers.values())
    stored = mpq.export_plan(group_net(), result.plan, x, tmp_path / "plan.mpq")
    assert stored.counted_bytes == result.plan.predicted["size_bytes"] == result.report.plan.size_bytes
    assert (
        stored.file_bytes
        == (tmp_path / "plan.mpq").stat().st_size
        == read_packed(tmp_path / "plan.mpq").header_bytes + stored.counted_bytes
    )
    assert result.plan.predicted["bits_per_weight"] == result.report.plan.bits_per_weight <= 5
