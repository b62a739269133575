"""`mpq export`: a plan applied to its model and written in a deployable format.

Every format starts from the same tensors the evaluator measures (mpq.verify.measure.pack_plan): weights
quantized as the plan says, with the plan's quantizer (plan.quantizer: weight clip
ratios, activation ranges observed on the FP32 model over the data, bias-corrected biases).

    packed   mpq.export.packed_file  one file: bit-packed codes, scales, biases, float remainder
    onnx     mpq.export.onnx_qdq     ONNX with QuantizeLinear/DequantizeLinear, INT4/INT8 weights; a model read
             mpq.export.onnx_user    from an .onnx file: the user's own graph, the plan applied in QDQ form
    torchao  mpq.export.torchao_config  the packed tensors as JSON, read into a torchao FqnToConfig
                                        (one config per layer)
    gguf     mpq.export.gguf_model   a GGUF file llama.cpp loads (a plan searched with --target gguf)
    compressed-tensors  mpq.export.compressed_tensors  a save_pretrained folder transformers and vLLM load
             (a plan searched with --target compressed-tensors)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mpq.errors import MpqError
from mpq.inputs.prepare import as_dataset
from mpq.inputs.split import EVAL_SPLIT
from mpq.plan import Plan
from mpq.plan.keywords import checks_keywords
from mpq.quant.quantizer import Quantizer
from mpq.verify.measure import packed_for

FORMATS = ("packed", "onnx", "torchao", "gguf", "compressed-tensors")


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its size, and the plan's counted size (the packed tensors' bytes)."""

    format: str
    path: Path
    file_bytes: int
    counted_bytes: int
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [
            (
                f"wrote {self.path} ({self.format}): {self.file_bytes:,} bytes on disk; the plan counts "
                f"{self.counted_bytes:,} bytes"
            )
        ]
        return "\n".join(lines + list(self.notes))


@checks_keywords("path", "format", "batch_size", "cache_dir", "eval_split")
def export_plan(  # noqa: PLR0913  (the public keywords of mpq.export_plan, docs/exports.md)
    model,
    plan: Plan,
    data,
    path: "str | Path",
    *,
    format: str = "packed",
    batch_size: int = 25,
    cache_dir=None,
    quantizer: "str | Quantizer | None" = None,
    device=None,
    eval_split: float = EVAL_SPLIT,
    gguf_metadata: "str | Path | None" = None,
) -> ExportResult:
    """Write `plan` applied to `model` to `path` in `format` (one of FORMATS); `data` calibrates the
    quantizer (the plan's, or `quantizer` when given, as in mpq.verify) on `device` (as in mpq.verify; None:
    where the model's parameters are), on the part of `data` verification fits on: all of it less the seeded
    `eval_split` that mpq.verify and mpq.search hold out (0: all of it). The file is written from the CPU
    whatever the device. `gguf_metadata`: a GGUF file whose tokenizer metadata the gguf format copies (None:
    the plan's, else built from the model folder's tokenizer)."""
    _check_format(plan, format)
    if format == "onnx" and plan.group_size is not None:
        raise MpqError(
            "the ONNX export stores one weight scale per output channel, and this plan has one per group of "
            f"{plan.group_size} weights: export it with --format packed or --format torchao"
        )
    data = as_dataset(data)  # the packed file and ONNX record its input shape
    prepared, packed = packed_for(model, plan, data, batch_size, cache_dir, quantizer, device, eval_split)
    path = Path(path)
    if format == "packed":
        from mpq.export.packed_file import ModelInputs, save_packed

        stored = save_packed(packed, path, prepared.fingerprint, ModelInputs.of(prepared, data))
        note = f"container overhead {stored.header_bytes:,} bytes (header); tensors {stored.tensor_bytes:,} bytes"
        return ExportResult(
            format, path, stored.file_bytes, packed.size_bytes, (note, *_over_budget(plan, stored.file_bytes))
        )
    if format == "gguf":
        return _export_gguf(prepared, plan, packed, path, gguf_metadata)
    if format == "compressed-tensors":
        return _export_compressed_tensors(prepared, plan, packed, path)
    if format == "onnx":
        written = _export_onnx(prepared, packed, data, path)
        storage = ", ".join(f"{n} layers as {t}" for t, n in written.layers_by_storage.items())
        note = f"weights: {storage}; activations UINT8 (narrower widths clipped)"
        return ExportResult(format, path, written.file_bytes, packed.size_bytes, (note,))
    from mpq.export.torchao_config import save_torchao_config

    written = save_torchao_config(prepared.folded, packed, path)
    return ExportResult(format, path, written.file_bytes, packed.size_bytes, written.notes)


def _export_onnx(prepared, packed, data, path: Path):
    """The user's own graph when the model came from an ONNX file (mpq.export.onnx_user), else torch's export."""
    from mpq.inputs.onnx_model import onnx_source

    source = onnx_source(prepared.original)
    if source is not None:
        from mpq.export.onnx_user import export_user_onnx

        return export_user_onnx(source, prepared, packed, path)
    from mpq.export.onnx_qdq import export_onnx

    return export_onnx(prepared.folded, packed, data.x[:1].cpu(), path)


def _check_format(plan: Plan, format: str) -> None:
    if format not in FORMATS:
        raise MpqError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    own = plan.weight_format.own_tensors
    target = "compressed-tensors" if plan.weight_format.name.startswith("compressed-tensors") else "gguf"
    if own and format not in (target, "packed"):
        raise MpqError(
            f"this plan's weights are in {target}'s layout (--target {target}): export it with --format {target}, "
            f"not {format}"
        )
    if format in ("gguf", "compressed-tensors") and not (own and target == format):
        raise MpqError(f"--format {format} writes plans searched for it: search with --target {format}, then export")


def _export_compressed_tensors(prepared, plan: Plan, packed, path: Path) -> ExportResult:
    """The save_pretrained folder `path` (mpq.export.compressed_tensors); its model.safetensors is the file."""
    from mpq.export.compressed_tensors import WEIGHTS_FILE, check_layers, export_compressed_tensors

    check_layers(prepared.original, list(plan.layers), plan.weight_format)  # the user's layers, not folded copies
    size, written = export_compressed_tensors(prepared.folded, plan, packed, path)
    note = f"wrote {', '.join(written)}; the plan's size is {WEIGHTS_FILE}'s"
    return ExportResult("compressed-tensors", path / WEIGHTS_FILE, size, int(plan.predicted.size_bytes), (note,))


def _export_gguf(prepared, plan: Plan, packed, path: Path, gguf_metadata) -> ExportResult:
    """The GGUF file: every quantized layer in its planned type, the rest F32 (mpq.export.gguf_model)."""
    from mpq.export.gguf_file import write_gguf
    from mpq.export.gguf_model import gguf_model
    from mpq.files import atomic_path

    reference = gguf_metadata or plan.settings.gguf_metadata
    written = gguf_model(prepared.folded, plan, packed, reference)
    with atomic_path(path) as temporary:
        layout = write_gguf(temporary, written.arch, written.tensors, written.metadata)
    types = {}
    for t in written.tensors:
        types[t.ggml_type.name] = types.get(t.ggml_type.name, 0) + 1
    note = "tensors: " + ", ".join(f"{n} {name}" for name, n in sorted(types.items()))
    counted = int(plan.predicted.size_bytes)
    return ExportResult("gguf", path, layout.file_size, counted, (note, *_over_budget(plan, layout.file_size)))


def _over_budget(plan: Plan, file_bytes: int) -> tuple[str, ...]:
    limits = [b for b in plan.budgets if b.kind == "size_bytes" and file_bytes > b.limit]
    return tuple(
        (
            f"note: the file exceeds the {b.text} budget by {math.ceil(file_bytes - b.limit):,} bytes of header; "
            "search with a budget that much smaller"
        )
        for b in limits
    )
