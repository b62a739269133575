"""`mpq solve --table` on a table of 2,000 layers (10,000 rows): parsed in one pass, solved to the optimum
that its budgets force, and read in time linear in its rows (reports/table_parsing.md has the timings)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mpq.cli.main import main
from mpq.cost.budget import parse_budget
from mpq.cost.layer_cost import Choice
from mpq.solver.problem import solve_problem
from mpq.solver.table import read_table

BITS = (4, 5, 6, 7, 8)


def params(i: int) -> int:
    return 8 * (100 + (37 * i) % 400)  # a multiple of 8: every size is a whole number of bytes


def heavy(i: int) -> bool:
    """Every third layer: its Omega per byte saved exceeds any other layer's at every width."""
    return i % 3 == 0


def omega(i: int, bits: int) -> float:
    scale = 1000 * (1 + (i % 7) / 10) if heavy(i) else 1 + (i % 5) / 10
    return scale * params(i) * 4.0**-bits


def write_table(path: Path, layers: int) -> Path:
    """Rows by width, then by layer: a layer's rows are not adjacent, so parsing must gather them."""
    lines = ["layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s"]
    for bits in BITS:
        for i in range(layers):
            p = params(i)
            lines.append(f"L{i},{bits},8,{omega(i, bits)!r},{p * bits // 8},{p * bits * 64},{p * bits * 1e-9!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def size(layers: int, bits_of) -> int:
    return sum(params(i) * bits_of(i) // 8 for i in range(layers))


N = 2000


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("table") / "big.csv", N)


def test_a_2000_layer_table_parses_in_order_with_every_choice(table):
    problem = read_table(table, [parse_budget("1GB")])
    assert problem.layers == [f"L{i}" for i in range(N)]
    assert all(problem.choices[n] == [Choice(b, 8) for b in BITS] for n in problem.layers)
    assert problem.omega["L1234"][Choice(6, 8)] == omega(1234, 6)
    assert problem.costs["L1999"][Choice(5, 8)] == {
        "size_bytes": params(1999) * 5 // 8,
        "bops": params(1999) * 5 * 64,
        "latency_s": params(1999) * 5 * 1e-9,
    }


def test_the_budget_that_fits_heavy_layers_at_w8_gives_exactly_that(table, tmp_path):
    """Budget = heavy layers at 8 bits + the rest at 4: moving any byte from a heavy layer to another loses
    more Omega than it saves (an exchange argument), so this is the one optimum."""
    budget = size(N, lambda i: 8 if heavy(i) else 4)
    out = tmp_path / "out"
    assert (
        main(["solve", "--table", str(table), "--budget", f"{budget}B", "--budget", "1TBOPs", "--out", str(out)]) == 0
    )
    plan = json.loads((out / "plan.json").read_text())
    assert {n: e["weight_bits"] for n, e in plan["layers"].items()} == {f"L{i}": 8 if heavy(i) else 4 for i in range(N)}
    assert plan["predicted"]["size_bytes"] == budget
    assert plan["predicted"]["omega"] == pytest.approx(sum(omega(i, 8 if heavy(i) else 4) for i in range(N)), rel=1e-12)
    assert plan["solver"]["proven_optimal"] is True and plan["model"]["layers"] == N


@pytest.mark.parametrize("bits", [4, 8])
def test_budgets_of_uniform_widths_force_them(table, bits):
    budget = size(N, lambda i: bits)
    problem = read_table(table, [parse_budget(f"{budget}B")])
    solution = solve_problem(problem)
    assert set(solution.choices.values()) == {Choice(bits, 8)}
    assert solution.costs["size_bytes"] == budget


def best_read_seconds(path: Path) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        read_table(path, [parse_budget("1GB")])
        best = min(best, time.perf_counter() - start)
    return best


def test_reading_is_linear_in_the_rows(tmp_path):
    """8x the layers take about 8x as long (the quadratic reading took about 40x)."""
    small = best_read_seconds(write_table(tmp_path / "small.csv", 500))
    large = best_read_seconds(write_table(tmp_path / "large.csv", 4000))
    assert large / small < 24, f"500 layers {small:.3f} s, 4000 layers {large:.3f} s"
