"""A bit-allocation problem given as a CSV table (`mpq solve --table`), one row per layer and choice:

    layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s[,group]
    conv1,4,8,0.031,4608,115605504,0.00021
    conv1,8,8,0.0001,9216,231211008,0.00036

`act_bits` empty (or `none`) means the layer's input stays in float. A cost cell may be left empty
when that cost is unknown; a budget on that cost then names the layer that lacks it. Rows of layers
with the same non-empty `group` take equal bits. Layers keep the order of their first row.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from mpq.cost.budget import Budget
from mpq.cost.costs import CostKind
from mpq.cost.layer_cost import Choice
from mpq.errors import MpqError
from mpq.plan import LayerPlan, Plan
from mpq.plan.records import PlanModel, Predicted
from mpq.plan.settings import PlanSettings, SolverSettings
from mpq.quant.widths import parse_width
from mpq.solver.problem import Problem, Solution

COLUMNS = ("layer", "weight_bits", "act_bits", "omega", "size_bytes", "bops", "latency_s")
COST_COLUMNS = (CostKind.SIZE_BYTES, CostKind.BOPS, CostKind.LATENCY_S)


@dataclass(frozen=True)
class TableRow:
    """One row: a layer, one of its choices, that choice's Omega and costs (by budget kind), its tie group."""

    line: int
    layer: str
    choice: Choice
    omega: float
    costs: dict[str, float]
    group: str


def _number(where: str, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MpqError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise MpqError(f"{where}: {column} {text!r} must be a finite number")
    if column != "omega" and value < 0:
        raise MpqError(f"{where}: {column} {text!r} is negative; costs are 0 or more")
    return value


def _width(where: str, column: str, text: str) -> int:
    return parse_width(text, f"{where}: {column}")


def parse_row(where: str, line: int, record: dict[str, str]) -> TableRow:
    layer = record["layer"].strip()
    if not layer:
        raise MpqError(f"{where}: the layer name is empty")
    act_text = record["act_bits"].strip()
    act_bits = None if act_text.lower() in ("", "none", "float") else _width(where, "act_bits", act_text)
    omega_text = record["omega"].strip()
    if not omega_text:
        raise MpqError(f"{where}: omega is empty; every row needs its Omega")
    costs = {k: _number(where, k, record[k].strip()) for k in COST_COLUMNS if record[k].strip()}
    return TableRow(
        line=line,
        layer=layer,
        choice=Choice(_width(where, "weight_bits", record["weight_bits"].strip()), act_bits),
        omega=_number(where, "omega", omega_text),
        costs=costs,
        group=(record.get("group") or "").strip(),
    )


def read_rows(path: "str | Path") -> list[TableRow]:
    """Every row of the table, checked one by one; errors name the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise MpqError(
                    f"{path} lacks the column(s) {', '.join(missing)}; the header must read {','.join(COLUMNS)}[,group]"
                )
            reader.fieldnames = header
            rows = []
            for record in reader:
                where = f"{path} line {reader.line_num}"
                if None in record or any(v is None for v in record.values()):
                    raise MpqError(f"{where}: the row does not have the header's {len(header)} cells")
                rows.append(parse_row(where, reader.line_num, record))
    except OSError as exc:
        raise MpqError(f"cannot read table {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MpqError(f"{path} is not a readable CSV table ({exc})") from None
    if not rows:
        raise MpqError(f"{path} has a header but no rows; give one row per layer and choice")
    return rows


def problem_from_rows(path: "str | Path", rows: list[TableRow], budgets: list[Budget]) -> Problem:
    """The integer program of the table: choices, Omega and costs per layer, tie groups from `group`.
    One pass over the rows (dicts by layer), so a table of many layers reads in time linear in its rows."""
    line_of: dict[str, dict[Choice, int]] = {}  # layer -> choice -> its line; keys in the order of first rows
    omega: dict[str, dict[Choice, float]] = {}
    costs: dict[str, dict[Choice, dict[str, float]]] = {}
    group_of: dict[str, tuple[str, int]] = {}
    for row in rows:
        where = f"{path} line {row.line}"
        lines = line_of.setdefault(row.layer, {})
        if row.choice in lines:
            raise MpqError(
                f"{where}: layer {row.layer} with {row.choice.label()} repeats line {lines[row.choice]}; give each "
                "choice once"
            )
        lines[row.choice] = row.line
        if row.layer not in group_of:
            group_of[row.layer] = (row.group, row.line)
        elif group_of[row.layer][0] != row.group:
            raise MpqError(
                f"{where}: layer {row.layer} is in group {row.group!r} here but {group_of[row.layer][0]!r} on line "
                f"{group_of[row.layer][1]}; give all its rows one group"
            )
        omega.setdefault(row.layer, {})[row.choice] = row.omega
        costs.setdefault(row.layer, {})[row.choice] = row.costs
    layers = list(line_of)
    groups: dict[str, list[str]] = {}
    for name in layers:
        if group_of[name][0]:
            groups.setdefault(group_of[name][0], []).append(name)
    return Problem(
        layers=layers,
        choices={n: sorted(line_of[n]) for n in layers},
        omega=omega,
        costs=costs,
        fixed_costs={},
        budgets=budgets,
        tie_groups=[g for g in groups.values() if len(g) > 1],
    )


def read_table(path: "str | Path", budgets: list[Budget]) -> Problem:
    """The problem a CSV table states (see the module docstring); MpqError naming the line if it is malformed."""
    return problem_from_rows(path, read_rows(path), budgets)


def plan_from_solution(path: "str | Path", problem: Problem, solution: Solution) -> Plan:
    """The plan.json of a solved table: its widths, the table as the model fingerprint, predicted costs."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    known = [k for k in COST_COLUMNS if all(k in problem.costs[n][c] for n, c in solution.choices.items())]
    costs = {k: solution.costs[k] for k in known}
    if CostKind.SIZE_BYTES in costs:
        costs[CostKind.SIZE_BYTES] = int(round(costs[CostKind.SIZE_BYTES]))
    predicted = Predicted(**{k.value: v for k, v in costs.items()}, omega=solution.objective, order=(*known, "omega"))
    return Plan(
        layers={n: LayerPlan(weight_bits=c.weight_bits, act_bits=c.act_bits) for n, c in solution.choices.items()},
        model=PlanModel(fingerprint=digest, layers=len(problem.layers), table=str(path), order=("table",)),
        budgets=problem.budgets,
        predicted=predicted,
        settings=PlanSettings(
            source="table",
            solver=SolverSettings(name=solution.solver, time_limit_s=solution.time_limit_s),
            keep=problem.keep,
            tie_groups=problem.tie_groups,
        ),
        solver=solution.solver_json(),
    )
