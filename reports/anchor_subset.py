"""kl_anchored on causal LMs: a few anchored layers per role (mpq.sensitivity.anchor.anchored_layers) against every
layer anchored (the metric before issue 23), on GPT-2 and LLaMA shapes built from configs (random weights, seeded):
the plans' held-out KL to FP32 at the same budgets, and the sensitivity time.

Run:  python reports/anchor_subset.py [--layers 8] [--budgets 4.5bpw,5bpw,6bpw] [--kinds gpt2,llama]
Prints a markdown table (copied into reports/scale.md).
"""

from __future__ import annotations

import argparse
import time

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


def run(kind: str, layers: int, budgets: list[str], every_layer: bool) -> dict:
    ids = torch.randint(0, VOCAB, (SAMPLES + HELD_OUT, SEQ), generator=torch.Generator().manual_seed(1))
    data, held_out = {"input_ids": ids[:SAMPLES]}, {"input_ids": ids[SAMPLES:]}
    model = build(kind, layers)
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
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    print("| shape | budget | held-out KL, every layer anchored | held-out KL, 3 per role | ratio |")
    print("|---|---|---:|---:|---:|")
    for kind in args.kinds.split(","):
        full = run(kind, args.layers, budgets, every_layer=True)
        subset = run(kind, args.layers, budgets, every_layer=False)
        for budget in budgets:
            a, b = full["kls"][budget], subset["kls"][budget]
            print(f"| {kind} {args.layers} blocks | {budget} | {a:.4g} | {b:.4g} | {b / a:.3f} |")
        print(
            f"| {kind} sensitivity | | {full['seconds']:.1f} s ({full['anchored']} of {full['layers']} anchored) "
            f"| {subset['seconds']:.1f} s ({subset['anchored']} anchored) | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
