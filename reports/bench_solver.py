"""Benchmark: CBC against HiGHS on mpq's integer programs, and a verified Pareto sweep of the default model.

Run:  python reports/bench_solver.py            (add --no-verify to skip the measured sweep)
Writes reports/solver.md, reports/pareto-efficientnet-lite0.png and reports/pareto-efficientnet-lite0.csv.
Every number is measured in this one run, on this machine; the two solvers run interleaved, problem by
problem (the order alternates), so that load on a shared machine falls on both alike.

Problems: (1) the default model's layer-wise problem (EfficientNet-Lite0, 50 layers, W 4..8, A8) at 30
sizes from the smallest reachable (or 2MB) to 6MB; (2) the same with activations 4 or 8 (act tie groups,
the second stage preferring wide activations) under a size sweep and a fixed BOPs budget; (3) HAWQ-V3's
18 published problems (tests/data/hawq_v3); (4) random problems of 100 to 1000 layers, 7 widths, size and
BOPs budgets. The sensitivity is a cheap cached one (at most 8 Hutchinson probes per layer, not the default 32).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

import mpq  # noqa: E402
from mpq.cost.budget import Budget, parse_budget  # noqa: E402
from mpq.models.efficientnet_lite0 import build_model, load_views  # noqa: E402
from mpq.report.pareto_files import pareto_table, write_pareto  # noqa: E402
from mpq.solver.build import build_problem
from mpq.solver.milp import DEFAULT_SOLVER, SOLVERS  # noqa: E402
from mpq.solver.problem import Problem, smallest_cost, solve_problem  # noqa: E402

PROBES = 8
POINTS = 30
VERIFY = 8
SAME = 1e-9  # relative difference of total Omega counted as the same optimum


def compare(name: str, problem: Problem, index: int) -> dict:
    """Solve one problem with both solvers (order alternating with `index`): seconds and total Omega each."""
    order = SOLVERS if index % 2 == 0 else SOLVERS[::-1]
    row = {"problem": name}
    for solver in order:
        solution = solve_problem(problem, solver=solver)
        assert solution.proven_optimal
        row[solver] = (solution.seconds, solution.objective, solution.choices)
    cbc, highs = row["cbc"][1], row["highs"][1]
    row["same"] = abs(cbc - highs) <= SAME * max(abs(cbc), 1e-300)
    row["same_plan"] = row["cbc"][2] == row["highs"][2]
    return row


def exact_by_bytes(problem: Problem, sizes: list[Budget]) -> list[float]:
    """The exact least Omega at each size budget: tests/test_solver_choice.least_omega_by_bytes (a DP over bytes)."""
    from test_solver_choice import least_omega_by_bytes

    fixed = int(problem.fixed_costs["size_bytes"])
    best = least_omega_by_bytes(problem, int(max(b.limit for b in sizes)) - fixed)
    return [float(best[int(b.limit) - fixed]) for b in sizes]


def model_problems(sensitivity, prepared, budgets: list[list[Budget]], act_bits, bits=(4, 5, 6, 7, 8)) -> list[Problem]:
    layers = [s.layer for s in sensitivity.layers.values()]
    omega = lambda name, c: sensitivity.layers[name].omega(c.weight_bits, 2.0)  # noqa: E731
    return [
        build_problem(layers, sensitivity.float_bytes, b, bits, act_bits, omega, {}, prepared.graph.act_tie_groups)
        for b in budgets
    ]


def sweep_start(problem: Problem) -> float:
    """2MB, or the smallest reachable size rounded up to a kB when that is larger."""
    return max(2e6, math.ceil(smallest_cost(problem, "size_bytes") / 1e3) * 1e3)


def hawq_problems() -> list[tuple[str, Problem]]:
    from test_hawq_v3 import CONFIGS, KIND, budget_text, limit, write_table

    from mpq.solver.table import read_table

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in sorted(CONFIGS, key=lambda c: (c["network"], c["constraint"], c["budget_fraction_r"])):
            table = Path(tmp) / f"{c['network']}.csv"
            write_table(table, c["network"])
            kind = KIND[c["constraint"]]
            budget = parse_budget(budget_text(kind, limit(c["network"], kind, c["budget_fraction_r"])))
            problems.append(
                (f"HAWQ-V3 {c['network']} {c['constraint']} r={c['budget_fraction_r']}", read_table(table, [budget]))
            )
    return problems


def random_problems() -> list[tuple[str, Problem]]:
    from test_solver_choice import hard_problem

    return [(f"random {n} layers, seed {seed}", hard_problem(n, seed)) for n in (100, 300, 1000) for seed in (1, 2)]


def rows_table(rows: list[dict]) -> list[str]:
    dp = "exact" in rows[0]
    lines = [
        "| problem | CBC s | HiGHS s | HiGHS / CBC | same Ω | same plan |" + (" CBC = DP | HiGHS = DP |" if dp else ""),
        "|---|---:|---:|---:|---|---|" + ("---|---|" if dp else ""),
    ]
    yes = lambda v: "yes" if v else "NO"  # noqa: E731
    for r in rows:
        c, h = r["cbc"][0], r["highs"][0]
        line = f"| {r['problem']} | {c:.3f} | {h:.3f} | {h / c:.2f} | {yes(r['same'])} | {'yes' if r['same_plan'] else 'no'} |"
        lines.append(line + (f" {yes(r['exact']['cbc'])} | {yes(r['exact']['highs'])} |" if dp else ""))
    return lines


def summary(label: str, rows: list[dict]) -> str:
    c, h = sum(r["cbc"][0] for r in rows), sum(r["highs"][0] for r in rows)
    same = sum(r["same"] for r in rows)
    return f"| {label} | {len(rows)} | {c:.2f} | {h:.2f} | {h / c:.2f} | {same} of {len(rows)} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-verify", action="store_true", help="skip the measured Pareto sweep")
    args = parser.parse_args()
    model, data = build_model(), load_views()
    prepared = mpq.api.as_prepared(model, data)
    start = time.perf_counter()
    sensitivity = mpq.analyze(prepared, data, max_probes=PROBES, progress=False)
    sens_seconds = time.perf_counter() - start

    base = model_problems(sensitivity, prepared, [[parse_budget("6MB")]], 8)[0]
    low = sweep_start(base)
    sizes = [
        Budget("size_bytes", float(math.floor(v)), f"{math.floor(v)}B")
        for v in torch.linspace(low, 6e6, POINTS).tolist()
    ]
    sweep_rows = [
        compare(f"W4-8 A8, {b.limit / 1e6:.3f} MB", p, i)
        for i, (b, p) in enumerate(zip(sizes, model_problems(sensitivity, prepared, [[b] for b in sizes], 8)))
    ]
    start = time.perf_counter()
    exact = exact_by_bytes(base, sizes)
    dp_seconds = time.perf_counter() - start
    for row, value in zip(sweep_rows, exact):
        row["exact"] = {s: abs(row[s][1] - value) <= SAME * value for s in SOLVERS}

    both = model_problems(sensitivity, prepared, [[parse_budget("6MB")]], (4, 8), bits=(2, 3, 4, 5, 6, 7, 8))[0]
    bops_mid = (smallest_cost(both, "bops") + 8 * 8 * sum(s.layer.macs for s in sensitivity.layers.values())) / 2
    act_sizes = [
        Budget("size_bytes", float(math.floor(v)), f"{math.floor(v)}B") for v in torch.linspace(2e6, 6e6, 10).tolist()
    ]
    act_budgets = [[b, Budget("bops", bops_mid, f"{bops_mid / 1e9:.3f}GBOPs")] for b in act_sizes]
    act_rows = [
        compare(f"W2-8 A4/8, {b[0].limit / 1e6:.2f} MB + {bops_mid / 1e9:.1f} GBOPs", p, i)
        for i, (b, p) in enumerate(
            zip(act_budgets, model_problems(sensitivity, prepared, act_budgets, (4, 8), bits=(2, 3, 4, 5, 6, 7, 8)))
        )
    ]
    hawq_rows = [compare(name, p, i) for i, (name, p) in enumerate(hawq_problems())]
    random_rows = [compare(name, p, i) for i, (name, p) in enumerate(random_problems())]

    lines = [
        "# Integer-program solvers: CBC against HiGHS, and the Pareto front of the default model",
        "",
        f"Measured by `python reports/bench_solver.py` on {platform.machine()} ({platform.python_version()}, "
        f"PuLP {__import__('pulp').__version__}, highspy {importlib.metadata.version('highspy')}), "
        "a machine shared with other jobs: read the ratios, measured side by side (the two solvers interleaved problem by problem), not the absolute seconds.",
        f"Seconds are those of `mpq.solver.problem.solve_problem` (building the PuLP model and solving it to a proven optimum; CBC runs as a subprocess, "
        f"HiGHS in process, one thread each). The default model's sensitivity is a cheap cached one: {PROBES} Hutchinson probes "
        f"(`max_probes={PROBES}`, not the default 32); it took {sens_seconds:.1f} s here{' (read from cache)' if sensitivity.from_cache else ''}.",
        "",
        "## Summary",
        "",
        "| problems | count | CBC s (total) | HiGHS s (total) | HiGHS / CBC | same optimum |",
        "|---|---:|---:|---:|---:|---|",
        summary(
            f"EfficientNet-Lite0 per-layer, {POINTS}-point size sweep {low / 1e6:.3f}–6 MB (W4..8, A8)", sweep_rows
        ),
        summary("EfficientNet-Lite0, W2..8 × A4/8 (act ties, two stages), size + BOPs", act_rows),
        summary("HAWQ-V3 published problems (ResNet18/50; size, BOPs, latency)", hawq_rows),
        summary("random, 100–1000 layers × 7 widths, size + BOPs", random_rows),
        "",
        f"Default solver: `{DEFAULT_SOLVER}`. Same optimum: total Ω equal to {SAME:g} relative; 'same plan' compares the widths "
        "(several plans can share the least Ω).",
        "",
        f"## {POINTS}-point per-layer sweep of the default model",
        "",
        f"Total seconds of the {POINTS} solves: CBC {sum(r['cbc'][0] for r in sweep_rows):.2f} s, HiGHS {sum(r['highs'][0] for r in sweep_rows):.2f} s. "
        f"Every optimum is checked against the exact least Ω of a dynamic program over bytes (multiple-choice knapsack, "
        f"`least_omega_by_bytes` in tests/test_solver_choice.py; {dp_seconds:.1f} s for all {POINTS} sizes): "
        f"CBC equals it at {sum(r['exact']['cbc'] for r in sweep_rows)} of {POINTS}, HiGHS at {sum(r['exact']['highs'] for r in sweep_rows)} of {POINTS}.",
        "",
        *rows_table(sweep_rows),
        "",
        "## Activation widths 4 or 8, size and BOPs budgets",
        "",
        *rows_table(act_rows),
        "",
        "## HAWQ-V3 problems",
        "",
        *rows_table(hawq_rows),
        "",
        "## Random larger problems",
        "",
        *rows_table(random_rows),
        "",
        *per_channel_section(sensitivity),
    ]
    if not args.no_verify:
        lines += verified_sweep(model, data, low)
    (HERE / "solver.md").write_text("\n".join(lines))
    print("\n".join(lines))


def per_channel_section(sensitivity) -> list[str]:
    """The default model's per-channel 4 MB problem (from this run's sensitivity) and a synthetic ResNet50-sized one,
    each through mpq's presolve and then each solver, interleaved, to the proven optimum."""
    sys.path.insert(0, str(HERE))
    from bench_perchannel import BITS, synthetic_resnet50_problem

    from mpq.solver.channels import build_channel_problem, channel_omega
    from mpq.solver.presolve import binary_variables, solve_presolved

    layers = [s.layer for s in sensitivity.layers.values()]
    default = build_channel_problem(
        layers, sensitivity.float_bytes, [parse_budget("4MB")], BITS, (8,), channel_omega(sensitivity, 2.0), 1
    ).problem
    synthetic_text, synthetic = synthetic_resnet50_problem()
    rows = []
    for i, (name, problem) in enumerate(
        [
            ("EfficientNet-Lite0 per channel, W4-8, 4 MB", default),
            ("synthetic ResNet50 per channel, W2/4/6/8", synthetic),
        ]
    ):
        seconds, objective, after = {}, {}, None
        for solver in SOLVERS if i % 2 == 0 else SOLVERS[::-1]:
            start = time.perf_counter()
            solution, reduction = solve_presolved(problem, solver=solver)
            seconds[solver], objective[solver] = time.perf_counter() - start, solution.objective
            after = binary_variables(reduction.problem) if reduction else binary_variables(problem)
        same = abs(objective["cbc"] - objective["highs"]) <= SAME * abs(objective["highs"])
        rows.append(
            f"| {name} | {binary_variables(problem):,} | {after:,} | {seconds['cbc']:.1f} | {seconds['highs']:.1f} | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    return [
        "## Per-channel problems",
        "",
        "Seconds to the proven optimum through `mpq.solver.presolve.solve_presolved` (exact dominance and Lagrangian reduced-cost",
        "fixing, then the solver on what is left), each solver on the same program, interleaved. The default model's problem",
        f"uses this run's per-channel traces (trace margin 2); the synthetic one: {synthetic_text}.",
        "CBC and HiGHS alone on the whole programs, without the presolve: `reports/perchannel.md` (`python reports/bench_perchannel.py`).",
        "",
        "| problem | binaries | after presolve | CBC s | HiGHS s | same optimum |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


def verified_sweep(model, data, low: float) -> list[str]:
    """The real `mpq.pareto` sweep on the default model, VERIFY points and the uniform widths measured."""
    work = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        result = mpq.pareto(
            model, data, f"{low / 1e6:.3f}MB:6MB:{POINTS}", verify_points=VERIFY, max_probes=PROBES, progress=False
        )
        seconds = time.perf_counter() - start
        paths = write_pareto(work, result)
        shutil.copy(paths[2], HERE / "pareto-efficientnet-lite0.png")
        shutil.copy(paths[1], HERE / "pareto-efficientnet-lite0.csv")
    finally:
        shutil.rmtree(work)
    verified = [p for p in result.feasible_points if p.measured]
    lines = [
        "## The Pareto front of the default model, measured",
        "",
        f'`mpq.pareto(model, data, "{low / 1e6:.3f}MB:6MB:{POINTS}", verify_points={VERIFY}, max_probes={PROBES})` — the same as '
        f"`mpq pareto --budget {low / 1e6:.3f}MB:6MB:{POINTS} --verify-points {VERIFY} --max-probes {PROBES}`: {seconds:.0f} s in all "
        f"(sensitivity {result.timings_s['sensitivity']:.1f} s, {POINTS} solves {result.timings_s['solve']:.1f} s, "
        f"{VERIFY} points and {len(result.uniform)} uniform widths measured on 200 views {result.timings_s['verify']:.0f} s).",
        "",
        "![Pareto front](pareto-efficientnet-lite0.png)",
        "",
        "Measured points, and for each the uniform width of the largest size that still fits its budget:",
        "",
        "| budget | mpq size | mpq agreement | mpq KL | uniform that fits | its size | its agreement | its KL |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for p in verified:
        fitting = [u for u in result.uniform if u.measured.size_bytes <= p.budget.limit]
        u = max(fitting, key=lambda u: u.measured.size_bytes) if fitting else None
        ucells = (
            f"{u.name} | {u.measured.size_bytes / 1e6:.3f} MB | {100 * u.measured.fp32_agreement:.1f}% | {u.measured.kl_to_fp32:.4f}"
            if u
            else "none | | |"
        )
        lines.append(
            f"| {p.budget.text} | {p.measured.size_bytes / 1e6:.3f} MB | {100 * p.measured.fp32_agreement:.1f}% | {p.measured.kl_to_fp32:.4f} | {ucells} |"
        )
    zero = [n for n, s in result.sensitivity.layers.items() if s.bounded_trace(2.0) == 0]
    if zero:
        lines += [
            "",
            f"Layers whose bounded trace max(Tr + 2·stderr, 0) is 0 at {PROBES} probes, so that Ω is the same at every width "
            f": {', '.join(zero)}. Among plans of least Ω the solver's last stage takes the most weight bits, so they get "
            "the widest width the budget leaves over.",
        ]
    lines += [
        "",
        "All points (pareto.csv of this run: [pareto-efficientnet-lite0.csv](pareto-efficientnet-lite0.csv)):",
        "",
        pareto_table(result),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
