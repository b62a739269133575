"""Search targets: the file a plan is made for, whose bytes the budget counts.

    packed  mpq's own packed file (mpq.export.packed_file): the default, as before targets existed
    gguf    a GGUF file llama.cpp loads (mpq.export.gguf_model): the candidates are GGUF types
            (mpq.quant.formats.gguf; the quantizer's format "gguf" unless it names "gguf-legacy"), weight-only,
            one type per layer; plan.predicted.size_bytes is the file's exact size
    compressed-tensors  a save_pretrained folder transformers and vLLM load (mpq.export.compressed_tensors): the
            candidates are its symmetric int schemes (mpq.quant.formats.compressed_tensors; bfloat16 scales, or
            float16 with the quantizer's format "compressed-tensors-fp16"), a scale per output channel or per
            group of --group-size, weight-only, one scheme per layer and one for the layers that read one input
            (q/k/v, gate/up); plan.predicted.size_bytes is its model.safetensors file's exact size

A GGUF file's bytes beside the quantized weights (header, metadata with the tokenizer, tensor infos, float
tensors, alignment) do not depend on the types chosen (a tensor info holds its type in 4 bytes, and the
weights' padding is counted in the format's bytes), so they are one constant per model: the size budget is
lowered by it before solving, and every measured size (the plan's and the baselines') adds it. A
compressed-tensors file's header holds each tensor's shape and offsets, whose digits change with the widths by a
few bytes: its overhead is computed for the plan solved (and the baselines' sizes take the plan's).
"""

from __future__ import annotations

from dataclasses import replace

from mpq.cost.budget import within_budgets
from mpq.errors import MpqError
from mpq.inputs.graph import PreparedModel
from mpq.plan import Plan
from mpq.plan.settings import SearchSpace
from mpq.quant.formats import weight_format
from mpq.quant.quantizer import Quantizer
from mpq.verify.report import Report

TARGETS = ("packed", "gguf", "compressed-tensors")
GGUF_FORMATS = ("gguf", "gguf-legacy")
CT_FORMATS = ("compressed-tensors", "compressed-tensors-fp16")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise MpqError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    return target


def target_search(target: str, quantizer: Quantizer, space: SearchSpace) -> tuple[Quantizer, SearchSpace]:
    """The quantizer and search space of a search for `target`: for gguf, the GGUF format, its widths (the
    space's widths when given: each must be one of the format's), float inputs, one type per layer."""
    if check_target(target) == "packed":
        return quantizer, space
    if target == "compressed-tensors":
        return _ct_search(quantizer, space)
    if quantizer.group_size is not None:
        raise MpqError("GGUF blocks hold their own scales: leave out --group-size with --target gguf")
    name = quantizer.weight_format if quantizer.weight_format in GGUF_FORMATS else "gguf"
    widths = weight_format(name).widths
    if space.granularity != "layer":
        raise MpqError("a GGUF file holds one type per tensor: leave out --granularity channel with --target gguf")
    bits = widths if space.bits == SearchSpace().bits else space.bits
    missing = [b for b in bits if b not in widths]
    if missing:
        types = ", ".join(f"{b} ({t})" for b, t in weight_format(name).types.items())
        raise MpqError(f"the {name} target has no {missing[0]}-bit type: choose --bits from {types}")
    return replace(quantizer, weight_format=name), replace(space, bits=tuple(bits), act_bits=(None,))


def _ct_search(quantizer: Quantizer, space: SearchSpace) -> tuple[Quantizer, SearchSpace]:
    name = quantizer.weight_format if quantizer.weight_format in CT_FORMATS else "compressed-tensors"
    widths = weight_format(name).widths
    if space.granularity != "layer":
        raise MpqError(
            "compressed-tensors gives a layer one scheme: leave out --granularity channel with "
            "--target compressed-tensors"
        )
    missing = [b for b in space.bits if b not in widths]
    if missing:
        raise MpqError(f"compressed-tensors has no {missing[0]}-bit int scheme: choose --bits from 2 to 8")
    return replace(quantizer, weight_format=name), replace(space, act_bits=(None,))


def check_target_model(target: str, prepared: PreparedModel, metadata: "str | None", fmt) -> None:
    """MpqError before the sensitivity work when the model cannot be written as the target's file."""
    if target == "gguf":
        check_gguf_model(prepared, metadata)
    elif target == "compressed-tensors":
        from mpq.export.compressed_tensors import check_layers

        check_layers(prepared.original, [layer.name for layer in prepared.graph.layers], fmt)  # before Conv1D -> Linear


def target_overhead(target: str, prepared: PreparedModel, metadata: "str | None"):
    """plan -> the target file's bytes less plan.predicted.size_bytes (None for the packed target)."""
    if target == "gguf":
        return lambda plan: gguf_overhead(prepared, plan, metadata)
    if target == "compressed-tensors":
        from mpq.export.compressed_tensors import checkpoint_specs, file_size

        return lambda plan: file_size(checkpoint_specs(prepared.folded, plan)) - int(plan.predicted.size_bytes)
    return None


def target_plan(target: str, prepared: PreparedModel, plan: Plan, overhead, metadata: "str | None") -> Plan:
    """The plan as the target's file holds it (gguf_plan, ct_plan); the packed target's as it is."""
    if target == "gguf":
        return gguf_plan(prepared, plan, overhead(plan), metadata)
    if target == "compressed-tensors":
        return ct_plan(plan, overhead(plan))
    return plan


def ct_plan(plan: Plan, overhead: int) -> Plan:
    """The plan as its compressed-tensors folder holds it: each layer's scheme ("format": "int4-g128-sym"), the
    model.safetensors file's size as its predicted size."""
    fmt = plan.weight_format
    layers = {name: replace(lp, format=fmt.scheme(lp.weight_bits)) for name, lp in plan.layers.items()}
    predicted = replace(plan.predicted, size_bytes=int(plan.predicted.size_bytes) + overhead)
    settings = replace(plan.settings, container_reserve_bytes=overhead)
    return replace(plan, layers=layers, predicted=predicted, settings=settings)


def check_gguf_model(prepared: PreparedModel, metadata: "str | None") -> None:
    """MpqError before the sensitivity work when the model has no GGUF file (architecture, tokenizer)."""
    from mpq.export.gguf_model import file_metadata

    file_metadata(prepared.folded, metadata)


def gguf_overhead(prepared: PreparedModel, plan: Plan, metadata: "str | None") -> int:
    """The GGUF file's bytes less the plan's predicted bytes: the same for every plan of this model."""
    from mpq.export.gguf_file import predict_gguf_size
    from mpq.export.gguf_model import gguf_model

    planned = gguf_model(prepared.folded, plan, None, metadata)
    return predict_gguf_size(planned.arch, planned.tensors, planned.metadata) - int(plan.predicted.size_bytes)


def gguf_plan(prepared: PreparedModel, plan: Plan, overhead: int, metadata: "str | None") -> Plan:
    """The plan as the GGUF file holds it: each layer's type ("format"), the file's size as its predicted size."""
    fmt = plan.weight_format
    layers = {}
    for name, lp in plan.layers.items():
        weight = prepared.folded.get_submodule(name).weight
        row = weight[0].numel()
        layers[name] = replace(lp, format=fmt.ggml_type(lp.weight_bits, row).name)
    predicted = replace(plan.predicted, size_bytes=int(plan.predicted.size_bytes) + overhead)
    settings = replace(plan.settings, container_reserve_bytes=overhead, gguf_metadata=metadata)
    return replace(plan, layers=layers, predicted=predicted, settings=settings)


def with_file_sizes(report: Report, overhead: int, plan: Plan, latency) -> Report:
    """Every measured size as its GGUF file's (`overhead` added), fits_budget judged again on it."""
    measured = [report.plan, *report.baselines] + ([report.weight_only] if report.weight_only is not None else [])
    for m in measured:
        m.size_bytes += overhead
        m.fits_budget = within_budgets(m.costs, plan.budgets, latency is not None)
    if plan.weight_format.name in CT_FORMATS:
        report.notes.append(
            f"sizes are the compressed-tensors folders' model.safetensors files': tensors plus {overhead:,} bytes "
            "of header, weight shapes and float tensors (the plan's; a baseline's header may differ by a few bytes)"
        )
        return report
    report.notes.append(
        f"sizes are the GGUF files' (llama.cpp's bytes): tensors plus {overhead:,} bytes of header, metadata, "
        "float tensors and alignment"
    )
    return report
