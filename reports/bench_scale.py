"""Benchmark: `mpq search` end to end on causal LMs from GPT-2-small to a 1.1B LLaMA shape, on this CPU.

Shapes built from their published configs with random weights (seeded; the cost does not depend on the values),
saved with save_pretrained, then searched as a user would:

    mpq search --model hf:DIR --data calib.npz --eval-data eval.npz --budget 4.5bpw --out OUT --cache-dir FRESH

(`calib.npz`: SAMPLES windows of SEQ random token ids; held-out windows in `eval.npz`). Per shape: the time of each
phase and its peak resident memory (report.json's timings_s and peak_memory_bytes["phases"]), the whole process's
peak RSS (the largest of report.json's phase peaks and /usr/bin/time's), and one forward+backward pass over the same
calibration tokens (next-token cross-entropy, batches of the search's --batch-size, the model loaded as mpq loads
it) timed in its own process: the search's time over that is the "× fwd+bwd" column. Each run is its own process, one at a time.

Run:  python reports/bench_scale.py [--shapes gpt2,smollm2-135m,smollm2-360m,tinyllama-1.1b] [--samples 8]
(`--shapes llama-smoke`: a 4-block LLaMA of 4M parameters, to try the script.)
Writes the section between the markers of reports/scale.md. Time no benchmark while other work runs on the
machine, or say that it did.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
SHAPES = {  # name: (architecture, config)
    "llama-smoke": ("llama", dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=2048, max_position_embeddings=256)),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192)),
    "smollm2-360m": ("llama", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                   num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                                   tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192)),
    "tinyllama-1.1b": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                     num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                     tie_word_embeddings=False, max_position_embeddings=2048)),
}  # fmt: skip
SEQ, HELD_OUT, BATCH, BUDGET = 128, 4, 8, "4.5bpw"
BEGIN, END = "<!-- bench_scale: begin -->", "<!-- bench_scale: end -->"


def shape_model(name: str):
    """The shape's model with random weights (seed 0), in eval mode."""
    import torch
    import transformers

    kind, config = SHAPES[name]
    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()


def token_ids(name: str, samples: int):
    """`samples` calibration windows of SEQ random token ids (seed 1), then HELD_OUT held-out ones."""
    import torch

    vocab = SHAPES[name][1]["vocab_size"]
    return torch.randint(0, vocab, (samples + HELD_OUT, SEQ), generator=torch.Generator().manual_seed(1))


def build(name: str, folder: Path, samples: int) -> dict:
    """The shape's model saved in `folder` (float32 safetensors) and its calibration and held-out token ids."""
    import numpy as np

    model = shape_model(name)
    model.save_pretrained(folder)
    ids = token_ids(name, samples)
    np.savez(folder / "calib.npz", input_ids=ids[:samples].numpy())
    np.savez(folder / "eval.npz", input_ids=ids[samples:].numpy())
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "float32_bytes": 4 * params}


def forward_backward(folder: Path) -> float:
    """Seconds of one forward+backward pass (next-token cross-entropy) over the calibration windows."""
    import numpy as np
    import torch

    from mpq.inputs.huggingface import load_pretrained

    model = load_pretrained(folder).inner
    ids = torch.from_numpy(np.load(folder / "calib.npz")["input_ids"])
    start = time.perf_counter()
    for batch in ids.split(BATCH):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
    return time.perf_counter() - start


def search(folder: Path, out: Path) -> dict:
    """`mpq search` in its own process: report.json's timings and peaks, and the process's peak RSS."""
    cache = Path(tempfile.mkdtemp(prefix="mpq-bench-cache-"))
    command = ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m", "mpq.cli.main", "search"]
    command += ["--model", f"hf:{folder}", "--data", str(folder / "calib.npz"), "--eval-data", str(folder / "eval.npz")]
    command += ["--budget", BUDGET, "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"mpq search failed:\n{run.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    # mpq resets the kernel's high-water mark at each phase (mpq.memory), so /usr/bin/time sees only the last
    # phase's peak: the run's peak is report.json's, the largest of its phases' (never below time's)
    rss = max(int(re.findall(r"maxrss_kb=(\d+)", run.stderr)[-1]) * 1024, report["peak_memory_bytes"]["ram"])
    layers = len(json.loads((out / "plan.json").read_text())["layers"])
    peaks, kl = report["peak_memory_bytes"], (report.get("plan") or report["metrics"])["kl_to_fp32"]
    return {"wall_s": wall, "timings_s": report["timings_s"], "peaks": peaks, "rss": rss, "kl": kl, "layers": layers}


def one(name: str, samples: int, work: Path) -> dict:
    folder = work / name
    step = lambda what: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, __file__, "--step", what, "--shapes", name, "--samples", str(samples), "--work", str(work)],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])  # fmt: skip
    row = {"name": name, "samples": samples, **step("build")}
    row["fwd_bwd_s"] = step("fwdbwd")["seconds"]
    row |= search(folder, work / f"{name}-out")
    return row


def table(rows: list[dict]) -> str:
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    lines = [
        "| shape | parameters | layers | fp32 weights | prepare | sensitivity | solve | verify | search | "
        "1 fwd+bwd | search / fwd+bwd | peak RSS | RSS / weights | sensitivity per M params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["timings_s"]
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.0f}M | {r['layers']} | {gb(r['float32_bytes'])} "
            f"| {t['prepare']:.0f} s "
            f"| {t['sensitivity']:.0f} s | {t['solve']:.1f} s | {t['verify']:.0f} s | {r['wall_s']:.0f} s "
            f"| {r['fwd_bwd_s']:.1f} s | {r['wall_s'] / r['fwd_bwd_s']:.1f}× | {gb(r['rss'])} "
            f"| {r['rss'] / r['float32_bytes']:.2f}× | {t['sensitivity'] / (r['params'] / 1e6):.3f} s |"
        )
    lines += ["", 'Peak resident memory per phase (report.json\'s peak_memory_bytes["phases"]):', ""]
    lines += ["| shape | prepare | sensitivity | solve | verify |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        phases = r["peaks"]["phases"]
        lines.append(f"| {r['name']} | " + " | ".join(gb(phases[p]["ram"]) for p in ("prepare", "sensitivity",
                     "solve", "verify")) + " |")  # fmt: skip
    return "\n".join(lines)


def write(rows: list[dict], args) -> str:
    text = "\n".join([
        BEGIN,
        f"`python reports/bench_scale.py --shapes {args.shapes} --samples {args.samples}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}; "
        f"`mpq search ... --budget {BUDGET}` on {args.samples} windows of {SEQ} tokens (held out: {HELD_OUT}).",
        "",
        table(rows),
        END,
    ])  # fmt: skip
    path = HERE / "scale.md"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        text = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
    path.write_text(text if BEGIN in old else text + "\n\n" + old)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=",".join(s for s in SHAPES if s != "llama-smoke"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--work", default=None, help="folder for the saved models (default: a temporary one)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="mpq-bench-"))
    if args.step:
        folder = work / args.shapes
        if args.step == "build":
            print(json.dumps(build(args.shapes, folder, args.samples)))
        else:
            print(json.dumps({"seconds": forward_backward(folder)}))
        return
    rows = []
    for name in args.shapes.split(","):
        rows.append(one(name, args.samples, work))
        print(json.dumps(rows[-1]), flush=True)
        subprocess.run(["rm", "-rf", str(work / name)], check=False)  # the saved weights: GBs
    print(write(rows, args))


if __name__ == "__main__":
    main()
