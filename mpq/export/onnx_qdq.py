"""ONNX export of a plan: integer weights of each layer's width, and each quantized input computed
in integer arithmetic exactly as mpq's evaluator computes it (mpq.verify.apply.IntegerLayer).

How it is built. The BatchNorm-folded model (weights already dequantized from the packed codes) is
exported with torch's TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, opset 20), which
names every Conv/Gemm weight initializer after its parameter (`<module name>.weight`); nothing is
rebuilt from module attributes, so convs that pad inside `forward` (EfficientNet's
Conv2dStaticSamePadding) export as Pad -> Conv. The graph is then patched with the `onnx` helper API
and its default-domain opset raised to 21, the first with INT4 in DequantizeLinear and Cast (from 20
to 21 the other ops of these models only gain element types), or to 25 (INT2) when a layer has
2-bit weights. Checked on onnxruntime 1.32 (CPU). ONNX has no 3-, 5-, 6- or 7-bit types, so those
widths are stored in the next wider type, their range clamped:

  weights, per output channel, symmetric (zero point 0), exactly the packed codes:
      b = 2: INT2;  b = 3, 4: INT4;  5 <= b <= 8: INT8 (codes of b bits lie in [-2^(b-1), 2^(b-1)-1]);
      a layer with per-channel widths takes the type of its widest channel (narrower codes fit);
      packed low bits first in raw_data.
  a layer whose input is quantized (affine per tensor, calibrated scale s_x and zero point z):
      q   = QuantizeLinear(x, s_x, z) as UINT8 (saturates to [0, 255]);
            b < 8: q = Clip(q, 0, 2^b - 1) on the UINT8 codes (the narrow range, UINT8 storage)
      w   = Cast(codes, INT8)                                  (INT2/INT4 storage only)
      acc = ConvInteger(q, w, z)  or  MatMulInteger(q, Transpose(w), z)     -> INT32, exact
      y   = Cast(acc, FLOAT) * (s_x * s_w[c]) + bias[c]         (s_x * s_w[c] stored in float32)
  a layer whose input stays float:
      W = DequantizeLinear(codes, s_w[c], 0) -> the float Conv/Gemm weight input
Where a conv pads inside `forward`, its input is the padded tensor; zero padding commutes with the
quantizer because Q(0) = z exactly. The per-layer widths are also stored as model metadata
"mpq.layers" (JSON).

Why integer nodes rather than QuantizeLinear -> DequantizeLinear -> float Conv: a float convolution's
rounding depends on the library (and, in torch, on the batch size); in a quantized network that moves
some activations across a quantization step and changes a few top-1 predictions (default model, 4 MB
plan: 3 of 200 views differed between onnxruntime and torch, and as many between torch at batch 1 and
batch 25). Integer accumulation is exact, so onnxruntime and the evaluator compute the same integers.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpq.errors import MpqError
from mpq.files import write_bytes_atomic
from mpq.inputs.graph import tied_modules
from mpq.verify.apply import PackedModel, combined_scale, unpack_codes, unpack_model

EXPORT_OPSET = 20
QDQ_OPSET = 21  # INT4 in QuantizeLinear/DequantizeLinear
INT2_OPSET = 25  # INT2 too; used only when a layer has 2-bit weights
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    file_bytes: int
    layers_by_storage: dict[str, int]  # "INT2"/"INT4"/"INT8" -> number of layers whose weights it holds


def _export_float(model: nn.Module, example: torch.Tensor):
    import onnx

    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    # no constant folding: an nn.Linear on a [batch, positions, features] input exports as Transpose(weight) ->
    # MatMul, and folding would replace its `<module name>.weight` initializer by an unnamed transposed copy
    torch.onnx.export(
        model,
        example,
        buffer,
        dynamo=False,
        opset_version=EXPORT_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        do_constant_folding=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _storage_bits(bits: int) -> int:
    """The narrowest ONNX integer type holding b-bit codes: INT2, INT4 or INT8."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def _int_tensor(name: str, values: np.ndarray, bits: int):
    """An INT2/INT4 (codes packed low bits first, 4 or 2 a byte) or INT8 initializer stored as raw bytes."""
    from onnx import TensorProto, helper

    storage = _storage_bits(bits)
    elem = {2: TensorProto.INT2, 4: TensorProto.INT4, 8: TensorProto.INT8}[storage]
    flat = values.reshape(-1).astype(np.int8)
    if storage == 8:
        return helper.make_tensor(name, elem, list(values.shape), flat.tobytes(), raw=True)
    per_byte = 8 // storage
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: flat.size] = flat.astype(np.uint8) & ((1 << storage) - 1)
    raw = (padded.reshape(-1, per_byte).astype(np.uint16) << (storage * np.arange(per_byte, dtype=np.uint16))).sum(
        axis=1
    )
    return helper.make_tensor(name, elem, list(values.shape), raw.astype(np.uint8).tobytes(), raw=True)


def _weight_nodes(layer: str, codes: np.ndarray, scale: np.ndarray, bits: int) -> tuple[list, list, str]:
    """Initializers and the DequantizeLinear node giving the layer's weight; returns its output name."""
    from onnx import helper, numpy_helper

    inits = [
        _int_tensor(f"{layer}.weight_codes", codes, bits),
        numpy_helper.from_array(scale.astype(np.float32), f"{layer}.weight_scale"),
        _int_tensor(f"{layer}.weight_zero_point", np.zeros(codes.shape[0], dtype=np.int8), bits),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [i.name for i in inits],
        [f"{layer}.weight_dq"],
        name=f"{layer}/weight/DequantizeLinear",
        axis=0,
    )
    return inits, [node], node.output[0]


def _input_codes(layer: str, source: str, scale: float, zero_point: int, bits: int) -> tuple[list, list, str]:
    """QuantizeLinear (UINT8) [-> Clip to 2^b - 1] on `source`; returns the name of the UINT8 codes."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{layer}.input_scale"),
        helper.make_tensor(f"{layer}.input_zero_point", TensorProto.UINT8, [], [zero_point]),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear",
            [source, inits[0].name, inits[1].name],
            [f"{layer}.input_q"],
            name=f"{layer}/input/QuantizeLinear",
        )
    ]
    codes = nodes[0].output[0]
    if bits < 8:
        inits += [
            helper.make_tensor(f"{layer}.input_qmin", TensorProto.UINT8, [], [0]),
            helper.make_tensor(f"{layer}.input_qmax", TensorProto.UINT8, [], [2**bits - 1]),
        ]
        nodes.append(
            helper.make_node(
                "Clip",
                [codes, f"{layer}.input_qmin", f"{layer}.input_qmax"],
                [f"{layer}.input_q_narrow"],
                name=f"{layer}/input/Clip",
            )
        )
        codes = nodes[-1].output[0]
    return inits, nodes, codes


def _integer_layer_nodes(node, layer: str, codes: np.ndarray, packed: PackedModel, params) -> tuple[list, list]:
    """The nodes replacing a Conv/Gemm (or the MatMul of a Linear on 3-D inputs, whose bias is a separate Add
    left in place) whose input is quantized: integer accumulation, then rescale."""
    from onnx import TensorProto, helper, numpy_helper

    meta = packed.layers[layer]
    inits, nodes, q = _input_codes(layer, node.input[0], params.scale, params.zero_point, params.bits)
    inits.append(_int_tensor(f"{layer}.weight_codes", codes, meta["weight_bits"]))
    weight = inits[-1].name
    if _storage_bits(meta["weight_bits"]) < 8:
        nodes.append(
            helper.make_node(
                "Cast", [weight], [f"{layer}.weight_int8"], name=f"{layer}/weight/Cast", to=TensorProto.INT8
            )
        )
        weight = nodes[-1].output[0]
    acc = f"{layer}.accumulator"
    if node.op_type == "Conv":
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(
            helper.make_node(
                "ConvInteger", [q, weight, inits[1].name], [acc], name=f"{layer}/ConvInteger", **attributes
            )
        )
        channel_shape = [1, codes.shape[0]] + [1] * (codes.ndim - 2)
    else:
        gemm = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if gemm.get("transA", 0) or gemm.get("alpha", 1.0) != 1.0 or gemm.get("beta", 1.0) != 1.0:
            raise RuntimeError(
                f"layer {layer}: the exported Gemm has transA/alpha/beta set; cannot rewrite it in integers"
            )
        if gemm.get("transB", 0) or node.op_type == "MatMul":
            nodes.append(
                helper.make_node(
                    "Transpose", [weight], [f"{layer}.weight_t"], name=f"{layer}/weight/Transpose", perm=[1, 0]
                )
            )
            weight = nodes[-1].output[0]
        nodes.append(
            helper.make_node("MatMulInteger", [q, weight, inits[1].name], [acc], name=f"{layer}/MatMulInteger")
        )
        channel_shape = [codes.shape[0]]
    scale = combined_scale(params, packed.tensors[f"{layer}.weight_scale"]).numpy().reshape(channel_shape)
    inits.append(numpy_helper.from_array(scale, f"{layer}.output_scale"))
    nodes.append(
        helper.make_node("Cast", [acc], [f"{layer}.accumulator_float"], name=f"{layer}/Cast", to=TensorProto.FLOAT)
    )
    bias = packed.tensors.get(f"{layer}.bias") if node.op_type != "MatMul" else None
    scaled = node.output[0] if bias is None else f"{layer}.scaled"
    nodes.append(helper.make_node("Mul", [f"{layer}.accumulator_float", inits[-1].name], [scaled], name=f"{layer}/Mul"))
    if bias is not None:
        inits.append(
            numpy_helper.from_array(bias.numpy().astype(np.float32).reshape(channel_shape), f"{layer}.output_bias")
        )
        nodes.append(helper.make_node("Add", [scaled, inits[-1].name], [node.output[0]], name=f"{layer}/Add"))
    return inits, nodes


def _layer_of(node, by_weight: dict[str, str], transposed: dict[str, str]) -> str | None:
    """The quantized layer a Conv/Gemm/MatMul node computes, by the weight it reads (directly or transposed)."""
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 1:
        return by_weight.get(node.input[1])
    if node.op_type == "MatMul" and len(node.input) > 1:
        return transposed.get(node.input[1])
    return None


def _patched(
    node, by_weight: dict[str, str], transposed: dict[str, str], packed: PackedModel, act_params
) -> tuple[list, list]:
    """The initializers and nodes that replace `node`: itself when it computes no quantized layer."""
    if (
        node.op_type == "Transpose" and node.input and node.input[0] in by_weight
    ):  # a Linear's weight on its way to MatMul
        layer = by_weight[node.input[0]]
        if layer in act_params:
            return [], []  # MatMulInteger transposes the codes itself
        meta = packed.layers[layer]
        codes = unpack_codes(packed.tensors[f"{layer}.weight_codes"], meta).numpy()
        inits, nodes, node.input[0] = _weight_nodes(
            layer, codes, packed.tensors[f"{layer}.weight_scale"].numpy(), meta["weight_bits"]
        )
        return inits, nodes + [node]
    layer = _layer_of(node, by_weight, transposed)
    if layer is None or (node.op_type == "MatMul" and layer not in act_params):
        return [], [node]
    meta = packed.layers[layer]
    codes = unpack_codes(
        packed.tensors[f"{layer}.weight_codes"], meta
    ).numpy()  # per-channel widths: all fit the widest
    if layer in act_params:
        return _integer_layer_nodes(node, layer, codes, packed, act_params[layer])
    inits, nodes, node.input[1] = _weight_nodes(
        layer, codes, packed.tensors[f"{layer}.weight_scale"].numpy(), meta["weight_bits"]
    )
    return inits, nodes + [node]


def _weight_names(model: nn.Module, layer: str) -> list[str]:
    """Every name of the layer's weight tensor: its own and those of modules tied to it (an embedding and an
    LM head)."""
    return [f"{module}.weight" for module in (layer, *tied_modules(model, layer))]


def _dequantized_for_other_readers(
    nodes: list, inits: list, float_weights: set[str], by_weight: dict[str, str], packed: PackedModel
) -> tuple[list, list]:
    """DequantizeLinear nodes for the nodes that still read a quantized layer's float weight (a Gather of an
    embedding tied to an LM head: it reads the quantized weight, as in the evaluator), those nodes rewired to them."""
    from onnx import helper, numpy_helper

    readers = [(node, i) for node in nodes for i, name in enumerate(node.input) if name in float_weights]
    existing = {init.name for init in inits}
    new_inits, new_nodes, outputs = [], [], {}
    for node, i in readers:
        layer = by_weight[node.input[i]]
        if layer not in outputs:
            meta = packed.layers[layer]
            codes = unpack_codes(packed.tensors[f"{layer}.weight_codes"], meta).numpy()
            if f"{layer}.weight_codes" not in existing:
                new_inits.append(_int_tensor(f"{layer}.weight_codes", codes, meta["weight_bits"]))
            new_inits.append(
                numpy_helper.from_array(
                    packed.tensors[f"{layer}.weight_scale"].numpy().astype(np.float32), f"{layer}.shared_weight_scale"
                )
            )
            new_inits.append(
                _int_tensor(
                    f"{layer}.shared_weight_zero_point", np.zeros(codes.shape[0], dtype=np.int8), meta["weight_bits"]
                )
            )
            outputs[layer] = f"{layer}.shared_weight_dq"
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{layer}.weight_codes", f"{layer}.shared_weight_scale", f"{layer}.shared_weight_zero_point"],
                    [outputs[layer]],
                    name=f"{layer}/shared_weight/DequantizeLinear",
                    axis=0,
                )
            )
        node.input[i] = outputs[layer]
    return new_inits, new_nodes


def qdq_model(folded: nn.Module, packed: PackedModel, example: torch.Tensor):
    """The onnx.ModelProto: the folded model exported in float, patched into QDQ form as the plan says."""
    import onnx
    from onnx import helper

    for name, meta in packed.layers.items():
        if meta["weight_bits"] > 8 or (meta["act_bits"] or 0) > 8:
            raise MpqError(
                f"layer {name} is wider than 8 bits, which ONNX QDQ cannot carry; make the plan with widths up to 8"
            )
    embeddings = [n for n in packed.layers if isinstance(folded.get_submodule(n), nn.Embedding)]
    if embeddings:
        raise MpqError(
            f"ONNX export of quantized embeddings ({embeddings[0]}) is not built yet; make the plan without "
            "--quantize-embeddings"
        )
    rebuilt, act_params = unpack_model(folded, packed)
    model = _export_float(rebuilt.eval().cpu(), example.cpu())  # traced on the CPU, whatever device the model ran on
    graph = model.graph
    by_weight = {name: layer for layer in packed.layers for name in _weight_names(rebuilt, layer)}
    float_weights = {init.name for init in graph.initializer if init.name in by_weight}
    transposed = {
        n.output[0]: by_weight[n.input[0]]
        for n in graph.node
        if n.op_type == "Transpose" and n.input and n.input[0] in by_weight
    }
    new_inits, new_nodes = [], []
    for node in graph.node:
        inits, nodes = _patched(node, by_weight, transposed, packed, act_params)
        new_inits += inits
        new_nodes += nodes
    inits, nodes = _dequantized_for_other_readers(new_nodes, new_inits, float_weights, by_weight, packed)
    new_inits, new_nodes = new_inits + inits, nodes + new_nodes
    used = {name for node in new_nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name not in float_weights and init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    int2 = any(meta["weight_bits"] <= 2 for meta in packed.layers.values())
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = INT2_OPSET if int2 else QDQ_OPSET
    model.ir_version = max(model.ir_version, 11 if int2 else 10)
    helper.set_model_props(model, {"mpq.layers": json.dumps(packed.layers, separators=(",", ":"))})
    onnx.checker.check_model(model)
    return model


def export_onnx(folded: nn.Module, packed: PackedModel, example: torch.Tensor, path: "str | Path") -> OnnxExport:
    """Write the QDQ model atomically to `path`."""
    model = qdq_model(folded, packed, example[:1])
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    storage: dict[str, int] = {}
    for meta in packed.layers.values():
        key = f"INT{_storage_bits(meta['weight_bits'])}"
        storage[key] = storage.get(key, 0) + 1
    return OnnxExport(path=Path(path), file_bytes=len(data), layers_by_storage=dict(sorted(storage.items())))


def run_onnx(path: "str | Path", x: torch.Tensor, batch_size: int = 25) -> torch.Tensor:
    """Logits of the ONNX model in onnxruntime (CPU) over `x`, in batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size].numpy()})[0] for i in range(0, len(x), batch_size)
    ]
    return torch.from_numpy(np.concatenate(outputs))
