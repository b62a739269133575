"""Activation tie groups from the fx graph (layers reading one tensor), act-bit choices and pins in the API."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

import mpq
from mpq.cost.budget import parse_budget
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.inputs.graph import prepare_model
from mpq.solver.build import Layers, build_problem
from mpq.solver.problem import solve_problem, total_costs


class ResBlockNet(nn.Module):
    """stem -> one ResNet basic block with a downsample branch -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = torch.relu(out + self.downsample(x))
        return self.fc(out.mean(dim=(2, 3)))


@pytest.fixture
def block():
    torch.manual_seed(0)
    return ResBlockNet().eval()


@pytest.fixture
def block_data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)


def test_downsample_and_first_conv_share_an_activation_quantizer(block, block_data):
    prepared = prepare_model(block, block_data[0][:2])
    assert [layer.name for layer in prepared.graph.layers] == ["stem", "conv1", "conv2", "downsample.0", "fc"]
    assert prepared.graph.act_tie_groups == [["conv1", "downsample.0"]]


def test_solver_with_graph_ties_equals_brute_force(block, block_data):
    prepared = prepare_model(block, block_data[0][:2])
    graph = prepared.graph
    rng = random.Random(0)
    table = {(layer.name, b): rng.uniform(0.1, 1.0) * 4.0**-b for layer in graph.layers for b in (2, 4, 8)}
    omega = lambda name, c: table[name, c.weight_bits] + 0.3 * table[name, c.act_bits]  # noqa: E731
    all_8 = {layer.name: Choice(8, 8) for layer in graph.layers}
    tied = 0
    for fraction in (0.15, 0.3, 0.45, 0.6):
        budgets = [parse_budget(f"{fraction * total_costs(_problem(graph, [], omega), all_8)['bops']!r}BOPs")]
        problem = _problem(graph, budgets, omega)
        assert problem.act_tie_groups == [["conv1", "downsample.0"]]
        solution = solve_problem(problem)
        best = min(
            (sum(problem.omega[n][c] for n, c in zip(problem.layers, combo)), combo)
            for combo in itertools.product(*(problem.choices[n] for n in problem.layers))
            if combo[1].act_bits == combo[3].act_bits
            and total_costs(problem, dict(zip(problem.layers, combo)))["bops"] <= budgets[0].limit
        )
        assert solution.objective == pytest.approx(best[0], rel=1e-9)
        assert solution.choices["conv1"].act_bits == solution.choices["downsample.0"].act_bits
        untied = solve_problem(_problem(graph, budgets, omega, ties=False))
        tied += untied.choices["conv1"].act_bits != untied.choices["downsample.0"].act_bits
    assert tied >= 1  # the tie is binding at some budget


def _problem(graph, budgets, omega, ties=True):
    over = Layers(graph.layers, graph.float_bytes, graph.act_tie_groups if ties else ())
    return build_problem(over, budgets, (2, 4, 8), (4, 8), omega)


def test_api_solve_with_act_choices_and_pins(block, block_data):
    sensitivity = mpq.analyze(block, block_data, max_probes=4, min_probes=2, cache_dir=False, progress=False)
    assert sensitivity.act_tie_groups == [["conv1", "downsample.0"]]
    wide = mpq.solve(sensitivity, "1TBOPs", bits=(2, 4, 8), act_bits=(4, 8))
    assert {lp.act_bits for lp in wide.layers.values()} == {8}  # Omega ignores act bits: widest when free
    assert wide.settings.space.act_bits == (4, 8) and "chosen by cost only" in wide.settings.act_choice_note
    all_8 = sum(layer.macs * 64 for layer in (s.layer for s in sensitivity.layers.values()))
    plan = mpq.solve(
        sensitivity,
        f"{0.5 * all_8!r}BOPs",
        bits=(2, 4, 8),
        act_bits=(4, 8),
        keep={"conv2": 8},
        keep_first=8,
        keep_last=8,
    )
    assert plan.layers["conv1"].act_bits == plan.layers["downsample.0"].act_bits
    assert (plan.layers["stem"].weight_bits, plan.layers["conv2"].weight_bits, plan.layers["fc"].weight_bits) == (
        8,
        8,
        8,
    )
    assert 4 in {lp.act_bits for lp in plan.layers.values()}  # the BOPs budget pushes some act widths down
    assert plan.predicted["bops"] <= 0.5 * all_8
    assert plan.settings.keep == {"conv2": 8, "stem": 8, "fc": 8}


def test_api_act_bits_forms_and_unknown_pin(block, block_data):
    sensitivity = mpq.analyze(block, block_data, max_probes=2, min_probes=2, cache_dir=False, progress=False)
    assert {lp.act_bits for lp in mpq.solve(sensitivity, "1GB", act_bits=None).layers.values()} == {None}
    assert {lp.act_bits for lp in mpq.solve(sensitivity, "1GB", act_bits=6).layers.values()} == {6}
    assert {lp.act_bits for lp in mpq.solve(sensitivity, "1GB", act_bits=[None, 8]).layers.values()} == {
        None
    }  # float is widest
    with pytest.raises(MpqError, match="activation widths \\[4, 99\\] must be whole numbers"):
        mpq.solve(sensitivity, "1GB", act_bits=(4, 99))
    with pytest.raises(MpqError, match="did you mean conv1"):
        mpq.solve(sensitivity, "1GB", keep={"conv_1": 8})
    with pytest.raises(MpqError, match="kept at both"):
        mpq.solve(sensitivity, "1GB", keep={"stem": 4}, keep_first=8)


def test_cli_act_bits_list_and_unknown_keep_exits_2_before_any_hessian_work(tmp_path, block_data, capsys):
    import numpy as np

    from mpq.cli.main import main
    from mpq.cli.parser import build_parser

    args = build_parser().parse_args(
        ["search", "--budget", "4MB", "--act-bits", "4,8,none", "--keep", "fc=8", "--keep-first", "8"]
    )
    assert (args.act_bits, args.keep, args.keep_first, args.keep_last) == ((4, 8, None), ["fc=8"], 8, None)
    assert build_parser().parse_args(["search", "--budget", "4MB"]).act_bits == (8,)
    np.savez(tmp_path / "d.npz", x=block_data[0].numpy(), y=block_data[1].numpy())
    model = f"{__file__}:ResBlockNet"
    status = main(
        [
            "search",
            "--model",
            model,
            "--data",
            str(tmp_path / "d.npz"),
            "--budget",
            "1GB",
            "--keep",
            "conv9=8",
            "--no-cache",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert (
        status == 2
        and "cannot keep conv9: no quantizable layer has that name; did you mean conv" in capsys.readouterr().err
    )
