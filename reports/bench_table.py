"""Benchmark of `mpq solve --table` on large synthetic tables (mpq/solver/table.py, problem.py).

Run:  python reports/bench_table.py                      (about a minute on 2 busy cores)
      python reports/bench_table.py --compare-rev REV    (also times read_table of mpq/solver/table.py at git REV)
      python reports/bench_table.py --quick              (N = 200 only; writes nothing)
Writes reports/table_parsing.md. For each N: a table of N layers x 5 choices (W4..W8, A8; Omega, bytes,
BOPs and latency per row, seeded), `read_table` timed in this process (best of 3), then the whole
`python -m mpq.cli solve --table T --budget B` timed as a subprocess, B the size of uniform W6; its
solver line (HiGHS, one thread) gives the solver's share.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpq.cost.budget import parse_budget  # noqa: E402
from mpq.solver.problem import build_program, check_feasible  # noqa: E402
from mpq.solver.table import read_table  # noqa: E402

BITS = (4, 5, 6, 7, 8)
SIZES = (1_000, 10_000)


def write_table(path: Path, layers: int, seed: int = 0) -> int:
    """A table of `layers` layers x 5 choices; returns the bytes of uniform W6 (the budget used)."""
    rng = random.Random(seed)
    lines = ["layer,weight_bits,act_bits,omega,size_bytes,bops,latency_s"]
    uniform6 = 0
    for i in range(layers):
        params, trace = rng.randint(1_000, 100_000), rng.uniform(0.1, 10.0)
        for b in BITS:
            size = params * b // 8
            uniform6 += size if b == 6 else 0
            lines.append(
                f"block{i}.conv,{b},8,{trace * params * 4.0**-b:.6g},{size},{params * b * 8 * 100},{params * b * 1e-10:.6g}"
            )
    path.write_text("\n".join(lines) + "\n")
    return uniform6


def time_read(read, path: Path, budget: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read(path, [parse_budget(budget)])
        best = min(best, time.perf_counter() - start)
    return best


def time_build(path: Path, budget: str) -> float:
    """check_feasible and build_program (the PuLP model) of the table's problem, in-process."""
    problem = read_table(path, [parse_budget(budget)])
    start = time.perf_counter()
    check_feasible(problem)
    build_program(problem)
    return time.perf_counter() - start


def old_read_table(rev: str):
    """read_table of mpq/solver/table.py as it was at git revision `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:mpq/solver/table.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_table.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_table"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.read_table


def run_solve(table: Path, budget: str, out: Path) -> tuple[float, str]:
    command = [sys.executable, "-m", "mpq.cli", "solve", "--table", str(table), "--budget", budget, "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mpq solve failed ({done.returncode}): {done.stderr}")
    solver_line = next(line for line in done.stdout.splitlines() if line.startswith("solver:"))
    return seconds, solver_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-rev", help="also time read_table of mpq/solver/table.py at this git revision")
    parser.add_argument("--quick", action="store_true", help="N = 200 only; write nothing")
    args = parser.parse_args()
    sizes = (200,) if args.quick else SIZES
    old = old_read_table(args.compare_rev) if args.compare_rev else None
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            table = Path(folder) / f"table-{n}.csv"
            budget = f"{write_table(table, n)}B"
            read_s = time_read(read_table, table, budget)
            old_s = time_read(old, table, budget, repeats=1) if old else None
            build_s = time_build(table, budget)
            solve_s, solver_line = run_solve(table, budget, Path(folder) / f"out-{n}")
            rows.append((n, 5 * n, budget, read_s, old_s, build_s, solve_s, solver_line))
            print(
                f"N={n}: read_table {read_s:.3f} s"
                + (f" (at {args.compare_rev}: {old_s:.2f} s)" if old else "")
                + f", checks and model build {build_s:.2f} s, mpq solve {solve_s:.2f} s; {solver_line}",
                flush=True,
            )
    if args.quick:
        return
    lines = [
        "# `mpq solve --table` on large tables",
        "",
        (
            f"Measured by `python reports/bench_table.py{' --compare-rev ' + args.compare_rev if args.compare_rev else ''}` "
            f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores shared with other jobs, so"
        ),
        "absolute seconds vary by about 2x between runs; the ratios hold) in one run.",
        "Synthetic tables of N layers x 5 choices (W4..W8 at A8), seeded; budget: the bytes of uniform W6.",
        "`read_table`: best of 3 in-process; `mpq solve`: wall time of `python -m mpq.cli solve --table T --budget B --out O`",
        "as a subprocess (interpreter start, imports, parsing, the model build, HiGHS, plan.json).",
        "",
        "| layers | rows | budget | read_table (s) |"
        + (f" read_table at {args.compare_rev} (s) |" if old else "")
        + " checks + model build (s) | mpq solve (s) | its solver line |",
        "|---:|---:|---:|---:|" + ("---:|" if old else "") + "---:|---:|---|",
    ]
    for n, r, budget, read_s, old_s, build_s, solve_s, solver_line in rows:
        lines.append(
            f"| {n:,} | {r:,} | {budget} | {read_s:.3f} |"
            + (f" {old_s:.2f} |" if old else "")
            + f" {build_s:.2f} | {solve_s:.2f} | {solver_line} |"
        )
    lines += [
        "",
        "The table used to be read in O(layers x rows): each layer's choices, Omega and costs were gathered by a",
        "scan of every row. It is now one pass over the rows into per-layer dicts (`problem_from_rows`). The checks",
        '(`check_feasible`) and the PuLP model (`build_program`) were already linear: "checks + model build" is',
        "timed in-process. The solver line's seconds (printed by `mpq solve`) are the model build plus HiGHS; the",
        "rest of `mpq solve` is interpreter start and imports (nearly all of it at 1,000 layers), reading, the checks and plan.json.",
        "",
    ]
    (ROOT / "reports" / "table_parsing.md").write_text("\n".join(lines))
    print("wrote reports/table_parsing.md")


if __name__ == "__main__":
    main()
