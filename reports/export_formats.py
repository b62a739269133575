"""Measure `mpq export` on the default model: file sizes and how each format's predictions compare.

    python reports/export_formats.py [--budget 4MB] [--max-probes 8] [--cache-dir DIR]

writes reports/export_formats.md: the packed file's bytes (tensors + header) and whether load_packed
reproduces the evaluator's logits exactly; the ONNX QDQ file in onnxruntime (CPU) and the torchao
config applied with quantize_, each against mpq's evaluator and against FP32 on the 200 views.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import mpq
from mpq.cache import Cache
from mpq.inputs.graph import prepare_model
from mpq.models.efficientnet_lite0 import build_model, load_views
from mpq.quant.reference import fp32_reference
from mpq.verify.measure import pack_plan, packed_logits, plan_calibration

BATCH = 25


def _run(model, data) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x) for x, _ in data.batches(BATCH)]).float()


def _compare(name: str, logits, evaluator, reference, labels, seconds: float) -> str:
    agree_eval = float((logits.argmax(1) == evaluator.argmax(1)).float().mean())
    agree_fp32 = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    top1 = float((logits.argmax(1) == labels).float().mean())
    diff = float((logits - evaluator).abs().max())
    return f"| {name} | {agree_eval:.1%} | {agree_fp32:.1%} | {top1:.1%} | {diff:.3g} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", default="4MB")
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "mpq-cache-export"))
    parser.add_argument("--out", default=str(Path(__file__).with_name("export_formats.md")))
    args = parser.parse_args()
    model, data = build_model(), load_views()
    result = mpq.search(model, data, args.budget, max_probes=args.max_probes, cache_dir=args.cache_dir, progress=False)
    prepared = prepare_model(model, data.x[:2])
    reference = fp32_reference(prepared, data, BATCH, Cache(Path(args.cache_dir)))
    calibration = plan_calibration(prepared, result.plan, data, reference, BATCH, Cache(Path(args.cache_dir)))
    evaluator = packed_logits(prepared, pack_plan(prepared, result.plan, calibration), data, BATCH)
    work = Path(tempfile.mkdtemp(prefix="mpq-export-"))
    lines = [f"# `mpq export` of the default model's {args.budget} plan ({args.max_probes} probes)", ""]

    packed = mpq.export_plan(model, result.plan, data, work / "plan.mpqpack", cache_dir=args.cache_dir)
    start = time.perf_counter()
    loaded = _run(mpq.load_packed(work / "plan.mpqpack", model), data)
    packed_s = time.perf_counter() - start
    onnx_file = mpq.export_plan(model, result.plan, data, work / "plan.onnx", format="onnx", cache_dir=args.cache_dir)
    from mpq.export.onnx_qdq import run_onnx

    start = time.perf_counter()
    onnx_logits = run_onnx(work / "plan.onnx", data.x, BATCH)
    onnx_s = time.perf_counter() - start
    ao_file = mpq.export_plan(
        model, result.plan, data, work / "plan.torchao.json", format="torchao", cache_dir=args.cache_dir
    )
    from torchao.quantization import quantize_

    from mpq.export.torchao_config import load_torchao_config

    ao_model = prepare_model(model, data.x[:2]).folded
    quantize_(ao_model, load_torchao_config(work / "plan.torchao.json"), filter_fn=None)
    start = time.perf_counter()
    ao_logits = _run(ao_model, data)
    ao_s = time.perf_counter() - start

    lines += [
        "| file | bytes on disk | plan's counted bytes | difference |",
        "|---|---:|---:|---:|",
        f"| packed (`--format packed`) | {packed.file_bytes:,} | {packed.counted_bytes:,} | {packed.file_bytes - packed.counted_bytes:,} (header) |",
        f"| ONNX QDQ (`--format onnx`) | {onnx_file.file_bytes:,} | {onnx_file.counted_bytes:,} | {onnx_file.file_bytes - onnx_file.counted_bytes:,} |",
        f"| torchao config (`--format torchao`) | {ao_file.file_bytes:,} | - | - |",
        "",
        f"Evaluator (`mpq verify`): agreement with FP32 {result.report.plan.fp32_agreement:.1%}, top-1 {result.report.plan.top1:.1%}.",
        "",
        "| run | agreement with evaluator | agreement with FP32 | top-1 | max abs logit diff vs evaluator | seconds (200 views) |",
        "|---|---:|---:|---:|---:|---:|",
        _compare("mpq.load_packed (torch)", loaded, evaluator, reference.logits, data.y, packed_s),
        _compare("ONNX QDQ in onnxruntime (CPU)", onnx_logits, evaluator, reference.logits, data.y, onnx_s),
        _compare("torchao quantize_ with the config", ao_logits, evaluator, reference.logits, data.y, ao_s),
        "",
        f"load_packed logits bit-identical to the evaluator's: {torch.equal(loaded, evaluator)}.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
