"""Benchmark: how sensitivity, solve and verify grow with the model, on GPT-2-shaped causal LMs from 1M to
GPT-2-small's 124M parameters (built from configs with random weights: the cost does not depend on the values).

Each size runs in its own process, so its peak resident memory (ru_maxrss) is its own. Every run uses the same
data shape (8 sequences of 64 tokens), the same probe count (`--probes`, fixed: every layer gets exactly that
many, so the time is per probe and not per convergence) and one byte budget at 6 bits per weight.

Run:  python reports/bench_scale.py [--probes 4] [--metrics default,hessian] [--sizes tiny,small,medium,gpt2]
(`default`: the metric mpq.analyze picks when none is named, for these models kl_anchored.)
Writes reports/scale.md. Every number is measured in this one run, on this machine; time no benchmark while
other work runs on it.
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
SIZES = {  # name: (n_embd, n_layer, n_head, vocab)
    "tiny": (128, 2, 4, 8192),
    "small": (256, 4, 4, 8192),
    "medium": (512, 6, 8, 16384),
    "gpt2": (768, 12, 12, 50257),
}
SAMPLES, SEQ = 8, 64


def one(name: str, probes: int, metric: str) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import mpq
    from mpq.inputs.prepare import as_prepared

    d, layers, heads, vocab = SIZES[name]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_embd=d, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=SEQ, bos_token_id=0, eos_token_id=0
        )
    ).eval()
    data = {"input_ids": torch.randint(0, vocab, (SAMPLES, SEQ), generator=torch.Generator().manual_seed(1))}
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    prepared = as_prepared(model, mpq.inputs.prepare.as_dataset(data))
    prepare_s = time.perf_counter() - start
    quantized = sum(layer.params for layer in prepared.graph.layers)
    settings = mpq.ProbeSettings(max_probes=probes, min_probes=probes, batch_size=SAMPLES, max_seconds=100_000)
    start = time.perf_counter()
    sensitivity = mpq.analyze(
        prepared, data, probes=settings, metric=None if metric == "default" else metric, cache_dir=False, progress=False
    )
    sensitivity_s = time.perf_counter() - start
    budget = f"{int(prepared.graph.float_bytes + quantized * 6 / 8 + 8 * quantized / 100)}B"
    start = time.perf_counter()
    plan = mpq.solve(sensitivity, budget)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    report = mpq.verify(prepared, plan, data, cache_dir=False, progress=False)
    verify_s = time.perf_counter() - start
    return {
        "name": name,
        "metric": sensitivity.metric,
        "params": params,
        "quantized_params": quantized,
        "layers": len(prepared.graph.layers),
        "prepare_s": prepare_s,
        "sensitivity_s": sensitivity_s,
        "solve_s": solve_s,
        "verify_s": verify_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "perplexity_fp32": report.fp32.perplexity,
        "perplexity_plan": report.plan.perplexity,
    }


def table(rows: list[dict], probes: int, metric: str) -> str:
    base = rows[0]
    lines = [
        f"Metric `{metric}`" + (f" (mpq's default here: `{base['metric']}`)" if metric == "default" else "") + ":",
        "",
        "| model | parameters | quantized layers | sensitivity | per M params | solve | verify | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_m = r["sensitivity_s"] / (r["params"] / 1e6)
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['layers']} | {r['sensitivity_s']:.1f} s | {per_m:.2f} s | {r['solve_s']:.2f} s | "
            f"{r['verify_s']:.1f} s | {r['peak_rss_mb']:,.0f} MB |"
        )
    last = rows[-1]
    growth = (last["sensitivity_s"] / base["sensitivity_s"]) / (last["params"] / base["params"])
    lines += [
        "",
        f"Sensitivity time grew {last['sensitivity_s'] / base['sensitivity_s']:.1f}× for {last['params'] / base['params']:.0f}× the parameters "
        f"(ratio {growth:.2f}; 1 is linear). {SAMPLES} sequences of {SEQ} tokens"
        + (f", {probes} probes per layer." if base["metric"] == "hessian" else "."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument(
        "--metrics", default="default,hessian", help="metrics to time, each over every size; default: the one mpq picks"
    )
    parser.add_argument("--metric", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.probes, args.metric)))
        return
    tables = []
    for metric in args.metrics.split(","):
        rows = []
        for name in args.sizes.split(","):
            result = subprocess.run(
                [sys.executable, __file__, "--one", name, "--probes", str(args.probes), "--metric", metric],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"size {name} failed")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        tables += [table(rows, args.probes, metric), ""]
    text = "\n".join(
        [
            "# Scale: sensitivity, solve and verify against parameter count (CPU)",
            "",
            f"`python reports/bench_scale.py --probes {args.probes} --metrics {args.metrics} --sizes {args.sizes}` on {platform.processor() or platform.machine()}, "
            f"{__import__('os').cpu_count()} cores, torch {__import__('torch').__version__}.",
            "",
            "GPT-2-shaped causal LMs built from configs (random weights), through mpq.analyze, mpq.solve and mpq.verify in one process each.",
            "",
            *tables,
        ]
    )
    (HERE / "scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
