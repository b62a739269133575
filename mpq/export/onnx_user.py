"""ONNX export of a plan made on an ONNX model (mpq.inputs.onnx_model): the user's own graph, the plan applied.

The user's ModelProto is copied and patched in QDQ form; every node keeps its name, the graph its inputs,
outputs and (where it can carry the plan) opset:

  a quantized layer's Conv/Gemm node reads its weight from DequantizeLinear(codes, s_w[c], 0) (per output
      channel, axis 0; the packed codes as INT8, or INT4/INT2 where the model's opset has them: 21/25) and
      its bias from the evaluator's (BatchNorm-folded, bias-corrected) bias; a Gemm is set to transB=1,
      alpha=beta=1, as onnx2torch folded alpha and beta into its Linear;
  a layer whose input is quantized reads DequantizeLinear(QuantizeLinear(x, s_x, z) [-> Clip to 2^b - 1], s_x, z)
      (UINT8 codes), as mpq's evaluator quantizes it;
  a Conv/Gemm kept in float reads the folded float weight and bias;
  a BatchNormalization folded into its conv becomes an Identity node of the same name.

Nodes and initializers no longer read by anything are dropped. A model below opset 13 (no per-channel
DequantizeLinear) is first converted to opset 13 with onnx's version converter. ONNX Runtime runs the float
Conv/Gemm on the dequantized tensors (or fuses QDQ into integer kernels), so its outputs equal the evaluator's
up to float rounding: a few top-1 predictions near a tie may differ, unlike mpq.export.onnx_qdq's integer nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpq.errors import MpqError
from mpq.export.onnx_qdq import OnnxExport, _input_codes, _storage_bits, _weight_nodes
from mpq.files import write_bytes_atomic
from mpq.inputs.graph import quantizable_modules
from mpq.inputs.onnx_model import OnnxSource
from mpq.verify.apply import PackedModel, unpack_codes, unpack_model

PER_AXIS_OPSET, INT4_OPSET, INT2_OPSET = 13, 21, 25


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _storage(bits: int, opset: int) -> int:
    """The bits of the ONNX type storing b-bit codes: INT2/INT4 where the opset has them, else INT8."""
    storage = _storage_bits(bits)
    if (storage == 2 and opset < INT2_OPSET) or (storage == 4 and opset < INT4_OPSET):
        return 8 if opset < INT4_OPSET else 4
    return storage


def _float_init(name: str, tensor: torch.Tensor):
    from onnx import numpy_helper

    return numpy_helper.from_array(tensor.detach().cpu().float().numpy(), name)


def _set_gemm_plain(node) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name not in ("transA", "transB", "alpha", "beta")]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("transB", 1)])


def _input_dq(name: str, node, params) -> tuple[list, list]:
    """QuantizeLinear [-> Clip] -> DequantizeLinear on the node's first input, which then reads it."""
    from onnx import helper

    inits, nodes, codes = _input_codes(name, node.input[0], params.scale, params.zero_point, params.bits)
    nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [codes, f"{name}.input_scale", f"{name}.input_zero_point"],
            [f"{name}.input_dq"],
            name=f"{name}/input/DequantizeLinear",
        )
    )
    node.input[0] = nodes[-1].output[0]
    return inits, nodes


def _patch_layer(name: str, module: nn.Module, node, packed: PackedModel, act_params, opset: int):
    """The initializers and the nodes to put before `node` (a Conv or Gemm), `node` rewired to them."""
    if node.op_type == "Gemm":
        _set_gemm_plain(node)
    inits, nodes = [], []
    if name in packed.layers:
        meta = packed.layers[name]
        codes = unpack_codes(packed.tensors[f"{name}.weight_codes"], meta).numpy()
        scale = packed.tensors[f"{name}.weight_scale"].numpy()
        inits, nodes, node.input[1] = _weight_nodes(name, codes, scale, _storage(meta["weight_bits"], opset))
    else:
        inits.append(_float_init(f"{name}.weight", module.weight))
        node.input[1] = inits[-1].name
    if getattr(module, "bias", None) is not None:
        inits.append(_float_init(f"{name}.bias", module.bias))
        if len(node.input) > 2:
            node.input[2] = inits[-1].name
        else:
            node.input.append(inits[-1].name)
    if name in act_params:
        more_inits, more_nodes = _input_dq(name, node, act_params[name])
        inits, nodes = inits + more_inits, nodes + more_nodes
    return inits, nodes


def _as_identity(node) -> None:
    del node.attribute[:]
    del node.input[1:]
    del node.output[1:]
    node.op_type, node.domain = "Identity", ""


def _without_dead_ends(graph) -> None:
    """Drop the nodes whose outputs nothing reads (the BatchNorm parameters' Identity nodes, once the BatchNorm
    is folded) and the initializers no node reads (the float weights replaced)."""
    outputs = {value.name for value in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    unused = {init.name for init in graph.initializer if init.name not in read}
    kept = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name not in unused]  # initializers listed as inputs (IR < 4)
    del graph.input[:]
    graph.input.extend(inputs)


def _user_proto(source: OnnxSource):
    import onnx
    from onnx import version_converter

    model = onnx.ModelProto()
    model.CopyFrom(source.proto)
    if _default_opset(model) < PER_AXIS_OPSET:
        try:
            model = version_converter.convert_version(model, PER_AXIS_OPSET)
        except Exception as exc:
            raise MpqError(
                f"{source.description} has opset {_default_opset(model)}, below the {PER_AXIS_OPSET} that "
                f"per-channel DequantizeLinear needs, and onnx cannot convert it ({type(exc).__name__}); export it "
                "at opset 13 or later"
            ) from None
    return model


def user_qdq_model(source: OnnxSource, folded: nn.Module, packed: PackedModel, folded_batchnorms: list[str]):
    """The user's ModelProto with the plan applied (see the module docstring)."""
    import onnx

    for name, meta in packed.layers.items():
        if meta["weight_bits"] > 8 or (meta["act_bits"] or 0) > 8:
            raise MpqError(
                f"layer {name} is wider than 8 bits, which ONNX QDQ cannot carry; make the plan with widths up to 8"
            )
    model = _user_proto(source)
    opset, graph = _default_opset(model), model.graph
    rebuilt, act_params = unpack_model(folded, packed)
    by_output = {node.output[0]: node for node in graph.node if node.output}
    before: dict[str, list] = {}
    for name, module in quantizable_modules(rebuilt).items():
        node = by_output.get(source.node_of(name).output[0])
        if node is None or node.op_type not in ("Conv", "Gemm"):
            raise MpqError(f"layer {name} does not come from a Conv or Gemm node of {source.description}")
        inits, nodes = _patch_layer(name, module, node, packed, act_params, opset)
        graph.initializer.extend(inits)
        before[node.output[0]] = nodes
    for name in folded_batchnorms:
        _as_identity(by_output[source.node_of(name).output[0]])
    ordered = [new for node in graph.node for new in before.get(node.output[0] if node.output else "", []) + [node]]
    del graph.node[:]
    graph.node.extend(ordered)
    _without_dead_ends(graph)
    storage = [_storage(meta["weight_bits"], opset) for meta in packed.layers.values()]
    model.ir_version = max(model.ir_version, 11 if 2 in storage else 10 if 4 in storage else 7)
    layers = json.dumps(packed.layers, separators=(",", ":"))
    model.metadata_props.append(onnx.StringStringEntryProto(key="mpq.layers", value=layers))
    onnx.checker.check_model(model)
    return model


def export_user_onnx(source: OnnxSource, prepared, packed: PackedModel, path: "str | Path") -> OnnxExport:
    """Write the user's graph with the plan applied atomically to `path`."""
    model = user_qdq_model(source, prepared.folded, packed, prepared.graph.folded_batchnorms)
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    opset, storage = _default_opset(model), {}
    for meta in packed.layers.values():
        key = f"INT{_storage(meta['weight_bits'], opset)}"
        storage[key] = storage.get(key, 0) + 1
    return OnnxExport(path=Path(path), file_bytes=len(data), layers_by_storage=dict(sorted(storage.items())))


def run_user_onnx(path: "str | Path", x: torch.Tensor, batch_size: int = 25) -> torch.Tensor:
    """The first output of the ONNX model in onnxruntime (CPU) over `x`, fed to its first input, in batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first_input, first_output = session.get_inputs()[0].name, session.get_outputs()[0].name
    outputs = [
        session.run([first_output], {first_input: x[i : i + batch_size].cpu().numpy()})[0]
        for i in range(0, len(x), batch_size)
    ]
    return torch.from_numpy(np.concatenate(outputs))
