"""torch.export programs (`.pt2`) as models mpq can measure: aten linear/conv calls become modules.

`torch.export.load(path).module()` is a GraphModule whose layers are calls of `aten.linear` and
`aten.conv1d/2d` on weights held as attributes, so no nn.Linear or nn.Conv2d is left to find. Each
such call whose weight (and bias) are attributes of one submodule is rewritten into a call of a
real nn.Linear / nn.Conv2d holding those same tensors, under the submodule's original name.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import torch
from torch import fx, nn

from mpq.errors import MpqError, first_line

_aten = torch.ops.aten
_LINEAR = {_aten.linear.default}
_CONV = {_aten.conv1d.default: nn.Conv1d, _aten.conv2d.default: nn.Conv2d}


def _owner(node) -> str | None:
    """'fc1' for a get_attr node of 'fc1.weight'."""
    if isinstance(node, fx.Node) and node.op == "get_attr" and "." in node.target:
        return node.target.rpartition(".")[0]
    return None


def _as_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    args = list(node.args) + [None] * 7
    weight = gm.get_parameter(node.args[1].target) if _owner(args[1]) else None
    if weight is None or (args[2] is not None and _owner(args[2]) != _owner(args[1])):
        return None
    bias = gm.get_parameter(args[2].target) if args[2] is not None else None
    if node.target in _LINEAR:
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        stride, padding, dilation, groups = (args[3] or 1), (args[4] or 0), (args[5] or 1), (args[6] or 1)
        if isinstance(padding, str):
            return None
        kernel = tuple(weight.shape[2:])
        module = _CONV[node.target](
            weight.shape[1] * groups,
            weight.shape[0],
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
    module.weight = weight
    if bias is not None:
        module.bias = bias
    return module


def modules_from_calls(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite aten linear/conv calls whose weights are attributes into nn.Linear/nn.Conv modules."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or (node.target not in _LINEAR and node.target not in _CONV):
            continue
        module = _as_module(gm, node)
        if module is None:
            continue
        name = _owner(node.args[1])
        parent, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return fx.GraphModule(gm, gm.graph)  # a plain GraphModule: the exported one refuses .eval()/.train()


_TENSOR_PREFIX = "tensor_"  # constants saved as raw bytes (torch.export.pt2_archive.constants)


def _config_entries(archive: zipfile.ZipFile, config: str) -> list[tuple[str, dict]]:
    try:
        entries = json.loads(archive.read(config)).get("config", {})
    except (ValueError, RecursionError, AttributeError):
        raise ValueError(f"{config} is not a JSON object") from None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ValueError(f"{config} does not map names to entries")
    return list(entries.items())


def _objects(archive: zipfile.ZipFile) -> list[str]:
    """The weights and constants torch.export.load would build as Python objects rather than read as raw
    tensor bytes: anything it unpickles (use_pickle, opaque objects with pickle.loads, TorchScript objects)."""
    found = []
    for config in (n for n in archive.namelist() if n.endswith(("_weights_config.json", "_constants_config.json"))):
        constants = config.endswith("_constants_config.json")
        for name, entry in _config_entries(archive, config):
            path_name = str(entry.get("path_name", ""))
            if entry.get("use_pickle") or (constants and not path_name.startswith(_TENSOR_PREFIX)):
                found.append(f"{name} ({path_name})")
    return found


def _refusal(path: Path, what: str) -> MpqError:
    return MpqError(
        f"{path} holds {what}, which would be unpickled (running any code a crafted file holds), so mpq does not "
        "load it: export a model whose weights and constants are plain tensors, or give the Python model as "
        "--model file.py:factory --weights state_dict.pth"
    )


def check_only_tensors(path: Path, content: bytes) -> None:
    """MpqError unless the `.pt2` archive `content` holds only plain tensors: no weight or constant that
    torch.export.load would unpickle with weights_only=False or pickle.loads, and `.pt` members (sample
    inputs, legacy weights) that load with weights_only=True, the way torch.export.load tries first."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            objects = _objects(archive)
            if objects:
                raise _refusal(path, f"{objects[0]}, a Python object")
            for member in (n for n in archive.namelist() if n.endswith(".pt")):
                try:
                    torch.load(io.BytesIO(archive.read(member)), weights_only=True)
                except Exception:
                    raise _refusal(path, f"{member}, pickled data beyond plain tensors") from None
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, RuntimeError) as exc:
        raise MpqError(
            f"cannot read {path} as a torch.export archive ({first_line(exc)[:120]}): save it with torch.export.save"
        ) from None


def load_exported(path: Path) -> nn.Module:
    if not path.is_file():
        raise MpqError(f"model file {path} is not a regular file: give a .pt2 written by torch.export.save")
    try:
        content = path.read_bytes()  # checked and loaded from one read: the file cannot change in between
    except OSError as exc:
        raise MpqError(f"cannot read {path} ({exc.strerror}): check the path and its permissions") from None
    check_only_tensors(path, content)
    # copying an exported graph (mpq works on copies) trips a deprecation inside torch's pytree
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
    try:
        program = torch.export.load(io.BytesIO(content))
        module = modules_from_calls(program.module())
    except Exception as exc:
        raise MpqError(
            f"cannot load {path} as a torch.export program ({type(exc).__name__}): save it with torch.export.save"
        ) from None
    _check_dynamic_batch(path, program)
    return module


def _check_dynamic_batch(path: Path, program) -> None:
    """mpq runs the model on batches of many sizes (probes, calibration, the last batch): a program exported with
    a fixed batch size fails on every other ("Guard failed"), so it is refused here, in one line."""
    inputs = {s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    for node in program.graph.nodes:
        shape = getattr(node.meta.get("val"), "shape", None) if node.op == "placeholder" else None
        if node.name in inputs and shape is not None and len(shape) and isinstance(shape[0], int):
            raise MpqError(
                f"{path} was exported with a fixed batch of {shape[0]} (input {node.name}), and mpq runs it on "
                "batches of other sizes: export it with a dynamic batch dimension, e.g. torch.export.export(model, "
                "args, dynamic_shapes=({0: torch.export.Dim('batch')},))"
            )
