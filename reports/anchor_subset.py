"""kl_anchored on causal LMs: a few anchored layers per role (mpq.sensitivity.anchor.anchored_layers) against every
layer anchored (the metric before issue 23), on GPT-2 and LLaMA shapes built from configs (random weights, seeded):
the plans' held-out KL to FP32 at the same budgets, and the sensitivity time.

Run:  python reports/anchor_subset.py [--layers 8] [--budgets 4.5bpw,5bpw,6bpw] [--kinds gpt2,llama]
      python reports/anchor_subset.py --shapes gpt2,smollm2-135m   (reports/bench_scale.py's full-size shapes and
                                                                   data: 8 windows of 128 tokens, 4 held out)
Prints a markdown table (copied into reports/scale.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import mpq
import mpq.sensitivity.quadratic as quadratic
from mpq.inputs.prepare import as_dataset, as_prepared

VOCAB, SEQ, SAMPLES, HELD_OUT = 2048, 32, 24, 8


def build(kind: str, layers: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(n_embd=128, n_layer=layers, n_head=4, vocab_size=VOCAB, n_positions=SEQ)
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config).eval()


def bench_shape(name: str) -> tuple[torch.nn.Module, torch.Tensor, int]:
    """reports/bench_scale.py's shape `name` and its token ids: 8 windows to fit on, then the held-out ones."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import shape_model, token_ids

    return shape_model(name), token_ids(name, 8), 8


def run(case: str, layers: int, budgets: list[str], every_layer: bool) -> dict:
    """`case`: "gpt2"/"llama" (`layers` blocks, 128 wide) or "shape:NAME" (bench_scale's full-size shape)."""
    if case.startswith("shape:"):
        model, ids, fit = bench_shape(case.removeprefix("shape:"))
    else:
        ids = torch.randint(0, VOCAB, (SAMPLES + HELD_OUT, SEQ), generator=torch.Generator().manual_seed(1))
        model, fit = build(case, layers), SAMPLES
    data, held_out = {"input_ids": ids[:fit]}, {"input_ids": ids[fit:]}
    prepared = as_prepared(model, as_dataset(data))
    chosen = quadratic.anchored_layers
    if every_layer:
        quadratic.anchored_layers = lambda names: list(names)
    try:
        start = time.perf_counter()
        sensitivity = mpq.analyze(prepared, data, metric="kl_anchored", cache_dir=False, progress=False)
        seconds = time.perf_counter() - start
    finally:
        quadratic.anchored_layers = chosen
    kls = {}
    for budget in budgets:
        plan = mpq.solve(sensitivity, budget)
        report = mpq.verify(prepared, plan, data, eval_data=held_out, cache_dir=False, progress=False)
        kls[budget] = report.plan.kl_to_fp32
    anchored = sum("anchor_kl" in s.details for s in sensitivity.layers.values())
    return {"seconds": seconds, "kls": kls, "anchored": anchored, "layers": len(sensitivity.layers)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--budgets", default="4.5bpw,5bpw,6bpw")
    parser.add_argument("--kinds", default="gpt2,llama")
    parser.add_argument("--shapes", default=None, help="bench_scale.py's shapes at full size instead of --kinds")
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    cases = [f"shape:{name}" for name in args.shapes.split(",")] if args.shapes else args.kinds.split(",")
    print("| shape | budget | held-out KL, every layer anchored | held-out KL, 3 per role | ratio |")
    print("|---|---|---:|---:|---:|")
    for case in cases:
        label = case.removeprefix("shape:") if case.startswith("shape:") else f"{case} {args.layers} blocks"
        full = run(case, args.layers, budgets, every_layer=True)
        subset = run(case, args.layers, budgets, every_layer=False)
        for budget in budgets:
            a, b = full["kls"][budget], subset["kls"][budget]
            print(f"| {label} | {budget} | {a:.4g} | {b:.4g} | {b / a:.3f} |")
        print(
            f"| {label} sensitivity | | {full['seconds']:.1f} s ({full['anchored']} of {full['layers']} anchored) "
            f"| {subset['seconds']:.1f} s ({subset['anchored']} anchored) | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
