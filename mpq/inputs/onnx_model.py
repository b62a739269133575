"""ONNX models (`--model model.onnx`, or an `onnx.ModelProto` in the API) as PyTorch modules mpq can measure.

The graph is converted by onnx2torch: every ONNX node becomes a module named after the node (onnx2torch's
name: the node's name with dots turned into slashes, else its op type, numbered when repeated), so a Conv
node "/features/0/Conv" is the layer "/features/0/Conv", a Gemm with an initializer weight an nn.Linear, a
BatchNormalization whose parameters are initializers an nn.BatchNorm folded as in any model. Before
converting, Constant nodes and Identity nodes of initializers (torch's exporter writes them for BatchNorm
parameters) become initializers, so weights reach their layers. Nothing in the file is executed: ONNX holds
a graph of operators and tensors, and each operator is built from onnx2torch's own converters.

The converted module keeps an `OnnxSource` (the user's ModelProto and which node each module is), with which
`mpq export --format onnx` writes the user's own graph with the plan applied (mpq.export.onnx_user).

onnx2torch imports torchvision for two operators (NonMaxSuppression, RoiAlign). Without torchvision, those two
are unavailable: a stand-in module is placed in sys.modules only while onnx2torch is imported, and a model
using them is refused with the operators named.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError, first_line

NEEDS_TORCHVISION = ("NonMaxSuppression", "RoiAlign")


@dataclass(frozen=True)
class OnnxSource:
    """The user's ONNX model and, for each module onnx2torch made from a node, that node's index in its graph."""

    proto: object  # onnx.ModelProto
    nodes: dict[str, int]
    description: str

    def __deepcopy__(self, memo):  # shared by the model's copies: nothing changes it
        return self

    def node_of(self, module_name: str):
        """The NodeProto a module (a layer "X", or "X.1" where onnx2torch padded in front of a conv) comes from."""
        return self.proto.graph.node[self.nodes[module_name.split(".")[0]]]


def _torchvision_missing(op: str):
    def call(*args, **kwargs):
        raise MpqError(f"the ONNX operator {op} needs torchvision, which is not installed: install torchvision")

    return call


def _import_onnx2torch():
    """onnx2torch, imported with a stand-in for torchvision when torchvision is absent (see the module docstring)."""
    if "onnx2torch" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return _import_converter()
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms, ops.box_convert = _torchvision_missing("NonMaxSuppression"), _torchvision_missing("NonMaxSuppression")
    ops.roi_align = _torchvision_missing("RoiAlign")
    stub.ops = ops
    sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    try:
        return _import_converter()
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]


def _import_converter():
    try:
        import onnx2torch
    except ImportError as exc:
        raise MpqError(
            f"reading an ONNX model needs onnx and onnx2torch ({first_line(exc)}): pip install onnx, then "
            "pip install --no-deps onnx2torch (its own requirements pull torchvision)"
        ) from None
    return onnx2torch


def read_onnx(model) -> tuple[object, str]:
    """The ModelProto of a path or ModelProto, with its external data, and how to name it in messages."""
    try:
        import onnx
    except ImportError:
        raise MpqError("reading an ONNX model needs the onnx package: pip install onnx") from None
    if isinstance(model, onnx.ModelProto):
        proto, description = model, "the ONNX model"
        _check_external_data(proto, description, None)
        return proto, description
    path = Path(model)
    if not path.is_file():
        raise MpqError(f"model file {path} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise MpqError(f"cannot read {path} as an ONNX model ({first_line(exc)}): give an .onnx file") from None
    _check_external_data(proto, str(path), path.parent)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise MpqError(
            f"cannot read the external data of {path} ({first_line(exc)}): keep it beside the file"
        ) from None
    return proto, str(path)


def _check_external_data(proto, description: str, folder: Path | None) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in proto.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if folder is None:
            raise MpqError(
                f"{description} keeps tensor {tensor.name} in external data ({location}): pass the .onnx file's path, "
                "or load it with onnx.load(path) first"
            )
        if not (folder / location).is_file():
            raise MpqError(
                f"{description} keeps tensor {tensor.name} in the external data file {location}, which is not in "
                f"{folder}: put it beside the .onnx file"
            )


def _unsupported(proto) -> list[str]:
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    missing = set()
    for node in proto.graph.node:
        domain = node.domain or ""
        try:
            if domain not in opsets:
                raise NotImplementedError
            get_converter(domain=domain, operation_type=node.op_type, version=opsets[domain])
        except NotImplementedError:
            missing.add(f"{domain}.{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type)
        if node.op_type in NEEDS_TORCHVISION and importlib.util.find_spec("torchvision") is None:
            missing.add(f"{node.op_type} (needs torchvision)")
    return sorted(missing)


def _as_initializers(proto):
    """A copy of `proto` whose Constant nodes and Identity nodes of initializers are initializers."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in proto.graph.node:
        value = None
        if node.op_type == "Identity" and node.input[0] in inits and node.domain in ("", "ai.onnx"):
            value = numpy_helper.to_array(inits[node.input[0]])
        elif node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            value = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
        if value is None:
            kept.append(node)
            continue
        inits[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        model.graph.initializer.append(inits[node.output[0]])
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _declared_inputs(proto) -> dict[str, tuple]:
    """{graph input name: its dims, each an int (fixed) or a str (a named or unnamed dynamic axis)}; initializers
    listed as inputs (older exporters) are not inputs. A dim_value of -1 or 0 (paddle2onnx writes -1) is dynamic."""
    inits = {t.name for t in proto.graph.initializer}
    declared = {}
    for value in proto.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else None
        declared[value.name] = (
            None if dims is None else tuple(d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in dims)
        )
    return declared


class InputCheck:
    """A forward pre-hook: the data's tensors must fix the ONNX inputs' shapes (rank, fixed axes, one size per
    named axis), else one MpqError line; a model mis-fed would otherwise fail deep inside a converted operator."""

    def __init__(self, declared: dict[str, tuple], description: str):
        self.declared, self.description = declared, description

    def __call__(self, module, args, kwargs):
        names = list(self.declared)
        given = dict(zip(names, args)) | dict(kwargs)
        unknown = [name for name in given if name not in self.declared]
        if unknown:
            raise MpqError(
                f"the data holds input {unknown[0]} but {self.description} takes {', '.join(names)}: key the .npz "
                "by the graph's input names"
            )
        sizes: dict[str, int] = {}
        for name, tensor in given.items():
            dims = self.declared[name]
            if dims is None or not isinstance(tensor, torch.Tensor):
                continue
            shape = tuple(tensor.shape)
            fits = len(shape) == len(dims) and all(
                d == s if isinstance(d, int) else sizes.setdefault(d, s) == s or d == "?" for d, s in zip(dims, shape)
            )
            if not fits:
                raise MpqError(
                    f"{self.description} takes input {name} of shape {_shape_text(dims)} and the data does not fix it "
                    f"(a batch of the data is {list(shape)}): give data of that shape, or export the model with "
                    "dynamic axes (a dynamic batch axis, as mpq runs batches)"
                )
        return None


def _shape_text(dims: tuple) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _convertible(proto, description: str):
    """`proto` with initializers for constants (_as_initializers), at its own opset when onnx2torch converts each
    of its operators there, else converted down to opset 17 or 13, the newest that onnx2torch covers."""
    from onnx import version_converter

    model = _as_initializers(proto)
    native = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    missing = _unsupported(model)
    for opset in (v for v in (17, 13) if missing and v < native):
        try:
            lowered = version_converter.convert_version(model, opset)
        except Exception:
            continue
        if not _unsupported(lowered):
            return lowered
    if missing:
        raise MpqError(
            f"{description} uses operators the ONNX converter (onnx2torch) cannot take: {', '.join(missing)}; "
            "replace them, or give the PyTorch model"
        )
    return model


def load_onnx(model) -> nn.Module:
    """The ONNX model (a path or a ModelProto) as a torch.fx GraphModule in eval mode, its OnnxSource attached."""
    proto, description = read_onnx(model)
    converter = _import_onnx2torch()
    converted = _convertible(proto, description)
    declared = _declared_inputs(converted)
    from onnx2torch.onnx_graph import OnnxGraph

    by_output = {node.output[0]: i for i, node in enumerate(proto.graph.node) if node.output}
    nodes = {
        name: by_output[node.proto.output[0]]
        for name, node in OnnxGraph(converted.graph).nodes.items()
        if node.proto.output and node.proto.output[0] in by_output
    }
    try:
        module = converter.convert(converted, save_input_names=all(n.isidentifier() for n in declared))
    except MpqError:
        raise
    except Exception as exc:
        raise MpqError(
            f"the ONNX converter (onnx2torch) cannot convert {description} ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    module.mpq_onnx = OnnxSource(proto, nodes, description)
    module.register_forward_pre_hook(InputCheck(declared, description), with_kwargs=True)
    return module.eval()


def onnx_source(model) -> OnnxSource | None:
    """The OnnxSource of a model loaded by load_onnx (or of the model an adapter wraps); None for other models."""
    for candidate in (model, getattr(model, "inner", None)):
        source = getattr(candidate, "mpq_onnx", None)
        if isinstance(source, OnnxSource):
            return source
    return None


def is_onnx(model) -> bool:
    """Whether `model` names an ONNX model: an onnx.ModelProto, or a path ending in .onnx."""
    if isinstance(model, (str, Path)):
        return str(model).endswith(".onnx")
    proto_type = getattr(sys.modules.get("onnx"), "ModelProto", None)
    return proto_type is not None and isinstance(model, proto_type)
