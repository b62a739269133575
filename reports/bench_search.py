"""Benchmark: cold and warm `mpq search` on the default model, and one HVP against one forward+backward.

Run:  python reports/bench_search.py
Writes reports/bench_search.md. Every number is measured in this one run, on this machine.
"""

from __future__ import annotations

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
MPQ = str(Path(sys.executable).parent / "mpq")


def timed_search(budget: str, cache: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([MPQ, "search", "--budget", budget, "--cache-dir", str(cache), "--out", str(out), "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - start


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


def main() -> None:
    work = Path(tempfile.mkdtemp())
    try:
        cache = work / "cache"
        cold = timed_search("4MB", cache, work / "cold")
        warm = timed_search("4MB", cache, work / "warm")
        other = timed_search("3.5MB", cache, work / "other")
    finally:
        shutil.rmtree(work)
    hvp, fb = hvp_over_forward_backward()
    rows = [
        ("cold `mpq search --budget 4MB` (empty cache)", f"{cold:.1f} s", "1.00"),
        ("warm `mpq search --budget 4MB` (same cache)", f"{warm:.1f} s", f"{warm / cold:.3f}"),
        ("`mpq search --budget 3.5MB` after the 4MB run", f"{other:.1f} s", f"{other / cold:.3f}"),
    ]
    text = [
        "# mpq search: cold and warm, and the cost of a Hessian-vector product",
        "",
        f"Measured by `python reports/bench_search.py` on {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "Default model (EfficientNet-Lite0, 200 views), default settings (32 probes of batch 8).",
        "",
        "| run | wall time | ratio to cold |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
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
