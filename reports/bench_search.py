"""Benchmark: cold and warm `mpq search` on the default model, old code beside new, and one HVP against one forward+backward.

Run:  python reports/bench_search.py [--old REF]
Writes reports/bench_search.md. Every number is measured in this one run, on this machine: the same three
commands with the code of git REF (a temporary worktree; default OLD_REF, the last commit before the
Gauss-Newton engine became the default) and with this checkout's, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

HERE = Path(__file__).parent
ROOT = HERE.parent
OLD_REF = "d21f035"  # per-layer Hutchinson (hessian) the default


def timed_search(code: Path, budget: str, cache: Path, out: Path) -> float:
    """Seconds of `mpq search --budget BUDGET` run with the mpq package of the checkout `code`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mpq.cli",
            "search",
            "--budget",
            budget,
            "--cache-dir",
            str(cache),
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
        capture_output=True,
        cwd=code,
        env=env,
    )
    return time.perf_counter() - start


def three_runs(code: Path, work: Path) -> tuple[tuple[float, float, float], list[dict]]:
    """The seconds of the three runs, and the 4 MB and 3.5 MB runs' report.json."""
    cache = work / "cache"
    seconds = (
        timed_search(code, "4MB", cache, work / "cold"),
        timed_search(code, "4MB", cache, work / "warm"),
        timed_search(code, "3.5MB", cache, work / "other"),
    )
    return seconds, [json.loads((work / name / "report.json").read_text()) for name in ("cold", "other")]


def plan_rows(label: str, reports: list[dict]) -> list[str]:
    rows = []
    for budget, report in zip(("4MB", "3.5MB"), reports):
        m, metric = report["measured"], report["metrics"]
        rows.append(
            f"| {label} | {budget} | {m['size_bytes']:,} | {metric['kl_to_fp32']:.4f} | {100 * metric['fp32_agreement']:.1f}% | {100 * metric['top1']:.1f}% |"
        )
    fitting = [b for b in reports[0]["baselines"] if b["size_bytes"] <= 4_000_000]
    best = min(fitting, key=lambda b: b["kl_to_fp32"])
    rows.append(
        f"| {label}: best uniform that fits 4 MB ({best['name']}) | 4MB | {best['size_bytes']:,} | {best['kl_to_fp32']:.4f} | {100 * best['fp32_agreement']:.1f}% | {100 * best['top1']:.1f}% |"
    )
    return rows


def hvp_over_forward_backward(repeats: int = 5, batch_size: int = 8) -> tuple[float, float]:
    from mpq.inputs.graph import prepare_model
    from mpq.models.efficientnet_lite0 import build_model, load_views

    data = load_views()
    prepared = prepare_model(build_model(), data.x[:2])
    model = prepared.folded
    weights = [model.get_submodule(layer.name).weight for layer in prepared.graph.layers]
    x, y = data.x[:batch_size], data.y[:batch_size]

    def forward_backward():
        torch.autograd.grad(F.cross_entropy(model(x), y), weights)

    def hvp():
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, create_graph=True)
        torch.autograd.grad(grads, weights, grad_outputs=[torch.ones_like(w) for w in weights])

    times = {}
    for name, fn in (("forward_backward", forward_backward), ("hvp", hvp)):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times[name] = (time.perf_counter() - start) / repeats
    return times["hvp"], times["forward_backward"]


def metric_of(report: dict) -> str:
    """The sensitivity metric a search used, from its report.json's notes ("sensitivity metric: NAME ...")."""
    note = next(n for n in report["notes"] if n.startswith("sensitivity metric: "))
    return note.removeprefix("sensitivity metric: ").split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default=OLD_REF, help=f"the git ref of the old code (default {OLD_REF})")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    old_tree = work / "old-code"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.old],
        check=True,
        capture_output=True,
    )
    try:
        old, old_reports = three_runs(old_tree, work / "old")
        new, new_reports = three_runs(ROOT, work / "new")
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False, capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)
    hvp, fb = hvp_over_forward_backward()
    names = (
        "cold `mpq search --budget 4MB` (empty cache)",
        "warm `mpq search --budget 4MB` (same cache)",
        "`mpq search --budget 3.5MB` after the 4MB run",
    )
    text = [
        "# mpq search: cold and warm, old code beside new, and the cost of a Hessian-vector product",
        "",
        f"Measured by `python reports/bench_search.py --old {args.old}` on {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        "nothing else running. Default model (EfficientNet-Lite0, the 200 built-in views: 150 fit, 50 held out), default settings. "
        f"Old: the code of `{args.old}` (per-layer Hutchinson, 32 probes of batch 8, the default then); new: this checkout "
        f"(its default metric, {metric_of(new_reports[0])}: reports/objective.md).",
        "",
        "| run | old | new | new / old |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {o:.1f} s | {n:.1f} s | {n / o:.2f} |" for name, o, n in zip(names, old, new)],
        "",
        "The plans of the 4 MB and 3.5 MB runs, measured on the 50 held-out views (report.json):",
        "",
        "| code | budget | size (B) | KL(FP32‖q) | agreement | top-1 |",
        "|---|---|---:|---:|---:|---:|",
        *plan_rows("old", old_reports),
        *plan_rows("new", new_reports),
        "",
        "| batch 8, folded EfficientNet-Lite0, all 50 layer weights | seconds | ratio |",
        "|---|---:|---:|",
        f"| forward + backward | {fb:.3f} | 1.00 |",
        f"| Hessian-vector product (reverse over reverse) | {hvp:.3f} | {hvp / fb:.2f} |",
        "",
    ]
    (HERE / "bench_search.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
