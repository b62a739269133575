"""Benchmark: per-channel widths (`--granularity channel`): size of the integer program, seconds to its
proven optimum with and without mpq.solver.presolve, and the verified plan against the layer-wise one.

    python reports/bench_perchannel.py [--max-probes 8] [--cbc-limit 300]

(a) the default model (EfficientNet-Lite0), budget 4MB, widths 4-8, channel groups of 1, 8 and 16;
(b) a synthetic ResNet50-sized problem: ResNet50's 54 conv/linear layers (27,560 output channels),
    widths 2/4/6/8, Omega_c(b) = t_c * 4^-b with t_c lognormal (seed 0), budget 5 bits per weight;
(c) the default model at 4MB: the layer-wise plan and the per-channel plan, measured by the verifier.
Writes reports/perchannel.md. Every number is measured in this one run, on this machine; wall seconds
and CPU seconds (this process plus the CBC processes it waits for) are both given, since the machine is
shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import mpq
from mpq.cost.budget import parse_budget
from mpq.inputs.graph import LayerInfo
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.solver.channels import build_channel_problem, channel_omega
from mpq.solver.presolve import binary_variables, solve_presolved
from mpq.solver.problem import solve_problem

HERE = Path(__file__).parent
BITS = (4, 5, 6, 7, 8)


class Clock:
    """Wall seconds and CPU seconds of this process and its finished children (CBC runs as a child)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def solve_both(problem, cbc_limit: float) -> dict:
    """Presolve + CBC, then CBC alone on the whole program (time-limited), side by side."""
    row = {"binaries": binary_variables(problem)}
    with Clock() as t:
        solution, reduction = solve_presolved(problem)
    row.update(
        presolved=solution.objective,
        presolve_wall=t.wall,
        presolve_cpu=t.cpu,
        lower_bound=reduction.lower_bound,
        after_presolve=binary_variables(reduction.problem),
        costs=solution.costs,
    )
    with Clock() as t:
        try:
            full = solve_problem(problem, time_limit_s=cbc_limit).objective
        except RuntimeError:
            full = None
    row.update(cbc=full, cbc_wall=t.wall, cbc_cpu=t.cpu)
    return row


def resnet50_layers() -> list[LayerInfo]:
    """ResNet50's conv and linear layers at 224x224 (torchvision's layout), shapes per sample."""
    layers = []

    def conv(name, cin, cout, k, hw):
        params = cout * cin * k * k
        layers.append(
            LayerInfo(name, "conv2d", (cout, cin, k, k), (cin, hw, hw), (cout, hw, hw), params, cout, params * hw * hw)
        )

    conv("conv1", 3, 64, 7, 112)
    cin = 64
    for stage, (width, blocks, hw) in enumerate([(64, 3, 56), (128, 4, 28), (256, 6, 14), (512, 3, 7)], start=1):
        for b in range(blocks):
            name = f"layer{stage}.{b}"
            conv(f"{name}.conv1", cin, width, 1, hw)
            conv(f"{name}.conv2", width, width, 3, hw)
            conv(f"{name}.conv3", width, 4 * width, 1, hw)
            if b == 0:
                conv(f"{name}.downsample", cin, 4 * width, 1, hw)
            cin = 4 * width
    layers.append(LayerInfo("fc", "linear", (1000, 2048), (2048,), (1000,), 2048 * 1000, 1000, 2048 * 1000))
    return layers


def synthetic_resnet50_problem():
    """(description, problem): ResNet50's layers, per-channel traces drawn lognormal (seeded), 4 widths, 5 bits average."""
    layers = resnet50_layers()
    channels, params = sum(l.out_channels for l in layers), sum(l.params for l in layers)
    rng = np.random.default_rng(0)
    t = {l.name: rng.lognormal(0.0, 2.0, l.out_channels) for l in layers}
    omega = lambda g, b: float(t[g.layer][g.start : g.stop].sum()) * 4.0**-b  # noqa: E731
    budget = parse_budget(f"{int(params * 5 / 8 + 8 * channels + 8 * len(layers))}B")
    with Clock() as build:
        problem = build_channel_problem(layers, 0, [budget], (2, 4, 6, 8), (8,), omega, 1).problem
    text = f"{len(layers)} layers, {channels:,} output channels, {params:,} weights; budget {budget.text}; building the program {build.wall:.1f} s"
    return text, problem


def synthetic_resnet50(cbc_limit: float) -> tuple[str, dict]:
    text, problem = synthetic_resnet50_problem()
    return text, solve_both(problem, cbc_limit)


def table(rows: list[tuple[str, dict]], cbc_limit: float) -> list[str]:
    lines = [
        "| problem | binaries | after presolve | presolve + CBC: wall s (CPU s) | CBC alone: wall s (CPU s) | Ω presolve + CBC | Lagrangian lower bound | (Ω − bound) / Ω | Ω CBC alone (its excess) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        excess = None if r["cbc"] is None else (r["cbc"] - r["presolved"]) / r["presolved"]
        cbc = f"{r['cbc']:.10g} ({excess:+.2g})" if r["cbc"] is not None else f"no optimum in {cbc_limit:.0f} s"
        lines.append(
            f"| {name} | {r['binaries']:,} | {r['after_presolve']:,} | {r['presolve_wall']:.1f} ({r['presolve_cpu']:.1f}) | "
            f"{r['cbc_wall']:.1f} ({r['cbc_cpu']:.1f}) | {r['presolved']:.10g} | {r['lower_bound']:.10g} | "
            f"{(r['presolved'] - r['lower_bound']) / r['presolved']:.1e} | {cbc} |"
        )
    return lines


def measured_row(name: str, plan, report) -> str:
    m = report.plan
    top1 = "-" if m.top1 is None else f"{m.top1:.1%}"
    return (
        f"| {name} | {plan.predicted['size_bytes']:,} | {m.size_bytes:,} | {m.bops / 1e9:.2f} | {top1} | {m.fp32_agreement:.1%} | "
        f"{m.kl_to_fp32:.4f} | {plan.predicted['omega']:.4g} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--budget", default="4MB")
    parser.add_argument(
        "--cbc-limit", type=float, default=300.0, help="seconds CBC alone may take on each whole program"
    )
    parser.add_argument(
        "--cache-dir", default=os.environ.get("MPQ_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "mpq-bench-cache")
    )
    args = parser.parse_args()

    model, data = build_model(), load_views()
    with Clock() as analyze:
        sensitivity = mpq.analyze(
            model,
            data,
            max_probes=args.max_probes,
            min_probes=args.max_probes,
            cache_dir=args.cache_dir,
            progress=False,
        )
    probes = max(s.probes for s in sensitivity.layers.values())
    layers = [s.layer for s in sensitivity.layers.values()]
    budget = parse_budget(args.budget)
    omega = channel_omega(sensitivity, 2.0)
    rows = []
    for group in (1, 8, 16):
        problem = build_channel_problem(layers, sensitivity.float_bytes, [budget], BITS, (8,), omega, group).problem
        rows.append(
            (
                f"EfficientNet-Lite0, {args.budget}, groups of {group} ({len(problem.layers):,} groups)",
                solve_both(problem, args.cbc_limit),
            )
        )
        print(rows[-1])
    synthetic_text, synthetic = synthetic_resnet50(args.cbc_limit)
    rows.append(("synthetic ResNet50, 27,560 channels x 4 widths", synthetic))
    print(rows[-1])

    with Clock() as layer_clock:
        layer_plan = mpq.solve(sensitivity, budget, bits=BITS)
    with Clock() as channel_clock:
        channel_plan = mpq.solve(sensitivity, budget, bits=BITS, granularity="channel")
    group_plan = mpq.solve(sensitivity, budget, bits=BITS, granularity="channel", channel_group=8)
    layer_report = mpq.verify(model, layer_plan, data, baseline_bits=(), cache_dir=args.cache_dir)
    channel_report = mpq.verify(model, channel_plan, data, baseline_bits=(), cache_dir=args.cache_dir)
    group_report = mpq.verify(model, group_plan, data, baseline_bits=(), cache_dir=args.cache_dir)
    mixed = sum(1 for lp in channel_plan.layers.values() if len({r.weight_bits for r in lp.channel_bits}) > 1)

    lines = [
        "# Per-channel weight widths: program size, solve time, verified plans",
        "",
        f"Measured by `python reports/bench_perchannel.py --max-probes {args.max_probes} --cbc-limit {args.cbc_limit:.0f}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other work while it ran; "
        "wall and CPU seconds, CPU including the CBC subprocess). Omega uses trace_margin 2.",
        "",
        f"Sensitivity of the default model: {probes} Hutchinson probes per layer (`mpq.analyze(..., max_probes={args.max_probes})`, "
        f"stopped by {sensitivity.stop_reason}; {analyze.wall:.0f} s{' reading the cache' if sensitivity.from_cache else ''}).",
        "",
        "## (a), (b) The integer program: binaries and seconds to the proven optimum",
        "",
        "Binaries: one per channel group and width, after dropping dominated choices; after presolve: what CBC still sees "
        "after Lagrangian reduced-cost fixing (mpq.solver.presolve). 'presolve + CBC' is what `mpq.solve(..., granularity=\"channel\")` "
        "runs; 'CBC alone' the same program handed whole to CBC (gap 0) with a time limit. Synthetic: "
        + synthetic_text
        + ".",
        "",
        *table(rows, args.cbc_limit),
        "",
        "No plan has less Ω than the Lagrangian lower bound, so the presolved plan is within (Ω − bound)/Ω of the optimum "
        "whatever CBC's tolerances. 'CBC alone' reports 'Optimal' for the whole program; its excess over the presolved "
        "plan is what CBC's default tolerances lose on objectives spanning many orders of magnitude.",
        "",
        "## (c) Verified at " + args.budget + ": layer-wise against per-channel widths",
        "",
        f"All three plans from the same sensitivity; widths {', '.join(map(str, BITS))}; 8-bit activations; 200 views. "
        f"Solve time: layer-wise {layer_clock.wall:.1f} s, per-channel {channel_clock.wall:.1f} s (wall, incl. building). "
        f"The per-channel plan mixes widths inside {mixed} of {len(channel_plan.layers)} layers. "
        "Ω is each plan's own objective (per-channel traces for the per-channel plan), so the two are not comparable.",
        "",
        "| plan | predicted bytes | measured bytes | GBOPs | top-1 | agreement with FP32 | KL(FP32‖q) | Ω |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        measured_row("layer-wise", layer_plan, layer_report),
        measured_row("per-channel (groups of 1)", channel_plan, channel_report),
        measured_row("per-channel (groups of 8)", group_plan, group_report),
        "",
    ]
    (HERE / "perchannel.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
