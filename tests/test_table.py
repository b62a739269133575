"""`mpq solve --table`: the CSV contract, its errors (exit 2), unreachable budgets (exit 3), pins and groups."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from mpq.cli.main import main
from mpq.cost.budget import parse_budget
from mpq.cost.layer_cost import Choice
from mpq.solver.problem import solve_problem, total_costs
from mpq.solver.table import read_table

HEADER = "layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s,group"
# three layers, 4 or 8 bits; a and b tied by group g; c keeps float inputs
ROWS = [
    "a,4,8,1.0,500,1000,0.001,g",
    "a,8,8,0.1,1000,2000,0.002,g",
    "b,4,8,2.0,500,1000,0.001,g",
    "b,8,8,0.9,1000,2000,0.002,g",
    "c,4,,3.0,500,1000,0.0015,",
    "c,8,,0.3,1000,2000,0.003,",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "table.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def solve_cli(tmp_path: Path, table: Path, *args: str) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    status = main(["solve", "--table", str(table), "--out", str(out), *args])
    plan = out / "plan.json"
    return status, json.loads(plan.read_text()) if plan.exists() else None


def widths(plan: dict) -> dict[str, tuple[int, int | None]]:
    return {n: (e["weight_bits"], e["act_bits"]) for n, e in plan["layers"].items()}


def test_plan_is_the_brute_force_optimum_with_groups(tmp_path, capsys):
    table = write(tmp_path, ROWS)
    status, plan = solve_cli(tmp_path, table, "--budget", "2600B")
    assert status == 0
    problem = read_table(table, [parse_budget("2600B")])
    best = min(
        (sum(problem.omega[n][c] for n, c in zip(problem.layers, combo)), combo)
        for combo in itertools.product(*(problem.choices[n] for n in problem.layers))
        if combo[0].weight_bits == combo[1].weight_bits
        and total_costs(problem, dict(zip(problem.layers, combo)))["size_bytes"] <= 2600
    )
    assert widths(plan) == {n: (c.weight_bits, c.act_bits) for n, c in zip(problem.layers, best[1])}
    assert widths(plan) == {"a": (4, 8), "b": (4, 8), "c": (8, None)}  # omega 1.0 + 2.0 + 0.3
    assert plan["schema"] == "mpq.plan/1" and plan["predicted"] == {
        "size_bytes": 2000,
        "bops": 4000.0,
        "latency_s": 0.005,
        "omega": 3.3,
    }
    assert "| c | 8 | float | 0.3 |" in capsys.readouterr().out


def test_without_the_group_the_optimum_splits_the_pair(tmp_path):
    status, plan = solve_cli(tmp_path, write(tmp_path, [r.rsplit(",", 1)[0] + "," for r in ROWS]), "--budget", "2600B")
    assert status == 0
    assert widths(plan) == {"a": (4, 8), "b": (8, 8), "c": (8, None)}  # omega 1.0 + 0.9 + 0.3 = 2.2 < 3.3


def test_three_budgets_at_once_all_hold(tmp_path):
    status, plan = solve_cli(
        tmp_path, write(tmp_path, ROWS), "--budget", "3000B", "--budget", "5KBOPs", "--budget", "4.6ms"
    )
    assert status == 0
    assert (
        plan["predicted"]["size_bytes"] <= 3000
        and plan["predicted"]["bops"] <= 5000
        and plan["predicted"]["latency_s"] <= 0.0046
    )
    # every single 8-bit layer breaks one budget: a or b at 8 with c at 4 bits makes 4.5 ms but the group
    # lifts both (5.5 ms); c at 8 makes 5 ms; so all 4-bit, though 3000 B and 5 KBOPs would allow more
    assert widths(plan) == {"a": (4, 8), "b": (4, 8), "c": (4, None)}


def test_keep_first_and_last_and_by_name(tmp_path):
    table = write(tmp_path, ROWS)
    status, plan = solve_cli(tmp_path, table, "--budget", "2GB", "--keep-first", "4", "--keep-last", "4")
    assert status == 0 and widths(plan) == {"a": (4, 8), "b": (4, 8), "c": (4, None)}  # b follows a through its group
    status, plan = solve_cli(tmp_path, table, "--budget", "2GB", "--keep", "c=4")
    assert status == 0 and widths(plan) == {"a": (8, 8), "b": (8, 8), "c": (4, None)}
    assert plan["settings"]["keep"] == {"c": 4}


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (ROWS, HEADER.replace(",bops", ""), "lacks the column(s) bops"),
        (
            [*ROWS[:3], "b,8,8,zero,1000,2000,0.002,g", *ROWS[4:]],
            HEADER,
            "table.csv line 5: omega 'zero' is not a number",
        ),
        ([*ROWS[:5], "c,8,,0.3,1000,2000,fast,"], HEADER, "line 7: latency_s 'fast' is not a number"),
        ([*ROWS[:5], "c,eight,,0.3,1000,2000,0.003,"], HEADER, "line 7: weight_bits 'eight' is not a whole number"),
        ([*ROWS, "c,8,,0.5,900,2000,0.003,"], HEADER, "line 8: layer c with W8Af repeats line 7"),
        ([*ROWS, ",8,8,0.5,900,2000,0.003,"], HEADER, "line 8: the layer name is empty"),
        ([], HEADER, "has a header but no rows"),
        ([*ROWS[:5], "c,8,,0.3,1000,2000,0.003,g"], HEADER, "line 7: layer c is in group 'g' here but '' on line 6"),
        ([*ROWS[:5], "c,8,,0.3,1000,2000"], HEADER, "line 7: the row does not have the header's 8 cells"),
        ([*ROWS[:5], "c,8,,0.3,-1000,2000,0.003,"], HEADER, "line 7: size_bytes '-1000' is negative"),
    ],
)
def test_bad_table_exits_2_with_one_line_naming_the_row(tmp_path, capsys, rows, header, message):
    status, plan = solve_cli(tmp_path, write(tmp_path, rows, header), "--budget", "2GB")
    err = capsys.readouterr().err
    assert status == 2 and plan is None
    assert err.startswith("mpq: error: ") and err.count("\n") == 1
    assert message in err


def test_budget_on_a_cost_the_table_leaves_empty_exits_2(tmp_path, capsys):
    rows = [r.replace(",0.0015,", ",,") for r in ROWS]
    status, _ = solve_cli(tmp_path, write(tmp_path, rows), "--budget", "5ms")
    assert status == 2
    assert "budget 5ms needs a latency_s cost for every layer, and layer c has none" in capsys.readouterr().err


def test_unknown_keep_name_exits_2(tmp_path, capsys):
    status, _ = solve_cli(tmp_path, write(tmp_path, ROWS), "--budget", "2GB", "--keep", "d=8")
    assert status == 2 and "cannot keep d" in capsys.readouterr().err


def test_unreachable_budget_exits_3_with_the_least_that_can_be_met(tmp_path, capsys):
    status, plan = solve_cli(tmp_path, write(tmp_path, ROWS), "--budget", "3.4ms")
    err = capsys.readouterr().err
    assert status == 3 and plan is None
    assert "no plan meets the budget 3.4ms" in err and "the smallest that can be met is 3.5 ms" in err


def test_budgets_reachable_alone_but_not_together_exit_3(tmp_path, capsys):
    # 1000 B needs both layers at 4 bits (8000 BOPs); 2000 BOPs needs both at 8 bits (2000 B)
    rows = [
        "a,4,8,1,500,4000,0.001,",
        "a,8,8,0,1000,1000,0.002,",
        "b,4,8,1,500,4000,0.001,",
        "b,8,8,0,1000,1000,0.002,",
    ]
    status, plan = solve_cli(tmp_path, write(tmp_path, rows), "--budget", "1000B", "--budget", "2000BOPs")
    err = capsys.readouterr().err
    assert status == 3 and plan is None
    assert "no plan meets all budgets at once" in err
    assert "1000B alone needs 1,000 B" in err and "2000BOPs alone needs 2 KBOPs" in err


def test_float_act_bits_read_as_none_and_choices_sorted(tmp_path):
    problem = read_table(write(tmp_path, ROWS), [])
    assert problem.choices["c"] == [Choice(4, None), Choice(8, None)]
    assert problem.tie_groups == [["a", "b"]]
    assert solve_problem(problem).choices["c"] == Choice(8, None)
