"""The default trace engine against HAWQ-V2's per-layer Hutchinson probing and PyHessian, at equal error (issue 13).

Run (quiet machine; writes reports/hessian.md):
    PYTHONPATH=$PWD python reports/bench_engine.py [--probes 8] [--pyhessian-iters 8]
Needs PyHessian (`pip install pyhessian==0.1`, pure Python) beside mpq's own dependencies.

Each part runs in its own process (so that its peak memory is its own), on the 150 views `mpq search` fits on
(the built-in 200 views less the 5 photos it holds out), the folded EfficientNet-Lite0's 50 layer weights, the
labels' cross-entropy:
- forward+backward: one pass over the 150 views in batches of 8, gradients of the 50 weights (the unit of cost);
- gauss_newton: `mpq.analyze(metric="gauss_newton")`, the default engine, to --tol 5% on every layer;
- hessian: `mpq.analyze(metric="hessian")` (per-layer Hutchinson, HAWQ-V2) stopped at --probes probes per layer;
  from each layer's per-probe variance, the probes it needs for 5% (var / (0.05 Tr)^2, at least 8) and so the
  seconds to 5% on every layer at the run's seconds per layer-probe;
- PyHessian 0.1's `hessian(...).trace()`: Hutchinson on all 50 weights at once, --pyhessian-iters iterations;
  from its per-iteration variance, the iterations and seconds its one whole-model trace needs for 5%. It gives
  no per-layer traces, which is what a bit allocation needs, so this flatters it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
TOL = 0.05


def fit_views():
    from mpq.inputs.split import held_out_split
    from mpq.models.efficientnet_lite0 import build_model, load_views

    fit, _ = held_out_split(load_views())
    return build_model(), fit


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part_forward_backward(args) -> dict:
    import torch

    from mpq.inputs.prepare import as_prepared

    model, fit = fit_views()
    prepared = as_prepared(model, fit)
    folded = prepared.folded.eval()
    weights = [folded.get_submodule(layer.name).weight for layer in prepared.graph.layers]
    base = rss_mb()
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for start in range(0, len(fit.x), 8):
            loss = torch.nn.functional.cross_entropy(folded(fit.x[start : start + 8]), fit.y[start : start + 8])
            torch.autograd.grad(loss, weights)
        runs.append(time.perf_counter() - started)
    return {"seconds": sorted(runs)[1], "base_mb": base, "peak_mb": rss_mb()}


def part_gauss_newton(args) -> dict:
    import mpq

    model, fit = fit_views()
    base = rss_mb()
    started = time.perf_counter()
    sens = mpq.analyze(model, fit, metric="gauss_newton", cache_dir=False, progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "base_mb": base, "peak_mb": rss_mb(), **_traces(sens)}


def part_hessian(args) -> dict:
    import mpq

    model, fit = fit_views()
    base = rss_mb()
    started = time.perf_counter()
    sens = mpq.analyze(
        model,
        fit,
        metric="hessian",
        probes=mpq.ProbeSettings(min_probes=args.probes, max_probes=args.probes, max_seconds=1e6),
        cache_dir=False,
        progress=False,
    )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "base_mb": base, "peak_mb": rss_mb(), "probes": args.probes, **_traces(sens)}


def part_pyhessian(args) -> dict:
    import copy

    import numpy as np
    import torch
    from pyhessian import hessian as PyHessian

    from mpq.inputs.prepare import as_prepared

    model, fit = fit_views()
    prepared = as_prepared(model, fit)
    folded = copy.deepcopy(prepared.folded).eval()
    names = {f"{layer.name}.weight" for layer in prepared.graph.layers}
    for name, p in folded.named_parameters():
        p.requires_grad_(name in names)
    loader = [(fit.x[i : i + 8], fit.y[i : i + 8]) for i in range(0, len(fit.x), 8)]
    base = rss_mb()
    torch.manual_seed(0)
    started = time.perf_counter()
    engine = PyHessian(folded, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    samples = [engine.trace(maxIter=1)[0] for _ in range(args.pyhessian_iters)]
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "base_mb": base,
        "peak_mb": rss_mb(),
        "samples": [float(s) for s in samples],
        "mean": float(np.mean(samples)),
        "var": float(np.var(samples, ddof=1)),
    }


def _traces(sens) -> dict:
    layers = list(sens.layers.values())
    return {
        "trace": [s.hessian_trace for s in layers],
        "stderr": [s.hessian_trace_stderr for s in layers],
        "estimator": sorted({s.estimator for s in layers}),
    }


PARTS = {
    "forward_backward": part_forward_backward,
    "gauss_newton": part_gauss_newton,
    "hessian": part_hessian,
    "pyhessian": part_pyhessian,
}


def run_part(name: str, args) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--part",
            name,
            "--probes",
            str(args.probes),
            "--pyhessian-iters",
            str(args.pyhessian_iters),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(name, {k: v for k, v in result.items() if not isinstance(v, list)}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--probes",
        type=int,
        default=8,
        help="per-layer Hutchinson probes per layer, from which its seconds to 5%% are projected",
    )
    parser.add_argument("--pyhessian-iters", type=int, default=8)
    parser.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    import numpy as np
    import torch

    r = {name: run_part(name, args) for name in PARTS}
    fb = r["forward_backward"]["seconds"]
    gn, hs, ph = r["gauss_newton"], r["hessian"], r["pyhessian"]
    gn_rel = np.array(gn["stderr"]) / np.abs(gn["trace"])
    h_trace, h_se = np.abs(np.array(hs["trace"])), np.array(hs["stderr"])
    var = h_se**2 * hs["probes"]
    needed = np.maximum(8, np.ceil(var / (TOL * h_trace) ** 2))
    per_layer_probe = hs["seconds"] / (hs["probes"] * len(h_trace))
    hs_seconds = float(needed.sum() * per_layer_probe)
    ph_iter = ph["seconds"] / len(ph["samples"])
    ph_needed = max(2.0, float(np.ceil(ph["var"] / (TOL * ph["mean"]) ** 2)))
    ph_seconds = ph_needed * ph_iter
    gn_sum, gn_sum_se = float(np.sum(gn["trace"])), float(np.sqrt(np.sum(np.square(gn["stderr"]))))

    def mb(p):
        return f"{p['peak_mb']:,.0f} MB ({p['peak_mb'] - p['base_mb']:+,.0f} MB over the loaded model and data)"

    lines = [
        "# The Hessian engine: every layer's trace to 5%, against HAWQ-V2's probing and PyHessian",
        "",
        f"`PYTHONPATH=$PWD python reports/bench_engine.py --probes {args.probes} --pyhessian-iters {args.pyhessian_iters}` on {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, nothing else running. EfficientNet-Lite0 (BatchNorm folded, 50 layers), "
        "the 150 views `mpq search` fits on (5 of the 20 photos held out), labels' cross-entropy; each engine in its own process.",
        "",
        "| engine | what it gives | seconds to 5% relative standard error | × one forward+backward | × gauss_newton | peak memory (RSS) |",
        "|---|---|---:|---:|---:|---|",
        f"| forward+backward, batches of 8 (the unit) | gradients | {fb:.1f} (median of 3) | 1 | — | {mb(r['forward_backward'])} |",
        f"| **gauss_newton** (the default: Gauss-Newton + residual test) | Tr(H_l) of every layer and channel | **{gn['seconds']:.1f}** measured: "
        f"{int((gn_rel < TOL).sum())} of {len(gn_rel)} layers under 5%, max {100 * gn_rel.max():.1f}%, median {100 * np.median(gn_rel):.1f}% | "
        f"{gn['seconds'] / fb:.1f} | 1 | {mb(gn)} |",
        f"| hessian (per-layer Hutchinson, HAWQ-V2) | Tr(H_l) of every layer and channel | {hs_seconds:,.0f} projected from {hs['probes']} probes per layer "
        f"({hs['seconds']:.0f} s; {int(needed.min())}-{int(needed.max())} probes per layer needed, median {int(np.median(needed))}) | {hs_seconds / fb:,.0f} | "
        f"{hs_seconds / gn['seconds']:,.0f} | {mb(hs)} |",
        f"| PyHessian 0.1 `trace()` | Tr(H) of the whole model, one number | {ph_seconds:,.0f} projected from {len(ph['samples'])} iterations "
        f"({ph['seconds']:.0f} s; {ph_iter:.1f} s each, {ph_needed:.0f} needed) | {ph_seconds / fb:,.0f} | {ph_seconds / gn['seconds']:,.0f} | {mb(ph)} |",
        "",
        f"- The whole-model sum: gauss_newton {gn_sum:.4g} ± {100 * gn_sum_se / gn_sum:.2f}%, PyHessian {ph['mean']:.4g} ± "
        f"{100 * np.sqrt(ph['var'] / len(ph['samples'])) / ph['mean']:.1f}% ({len(ph['samples'])} iterations), per-layer Hutchinson "
        f"{float(np.sum(hs['trace'])):.4g} ± {100 * float(np.sqrt(np.sum(h_se**2))) / float(np.sum(hs['trace'])):.1f}% ({hs['probes']} probes per layer).",
        f"- At gauss_newton's error on that sum ({100 * gn_sum_se / gn_sum:.2f}%), PyHessian would need about "
        f"{ph['var'] / (gn_sum_se / gn_sum * ph['mean']) ** 2:,.0f} iterations, {ph['var'] / (gn_sum_se / gn_sum * ph['mean']) ** 2 * ph_iter:,.0f} s "
        f"({ph['var'] / (gn_sum_se / gn_sum * ph['mean']) ** 2 * ph_iter / gn['seconds']:,.0f}× gauss_newton's time), and still no per-layer trace.",
        f"- gauss_newton's estimators: {', '.join(gn['estimator'])}. Its standard error is that of the drawn classes on these 150 views "
        "(every view is used); Hutchinson's and PyHessian's are those of their probes (and batches) on the same views.",
        "- Projections assume each further probe costs what the measured ones did and has their variance.",
        "",
        "Earlier measurements of the Hutchinson engine (HVP cost, all-layer probing, chunks, torchrun ranks): "
        "[hessian-hutchinson.md](hessian-hutchinson.md) (`python reports/bench_hessian.py`).",
    ]
    (HERE / "hessian.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
