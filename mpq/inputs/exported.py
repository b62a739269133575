"""torch.export programs (`.pt2`) as models mpq can measure: aten linear/conv calls become modules.

`torch.export.load(path).module()` is a GraphModule whose layers are calls of `aten.linear` and
`aten.conv1d/2d` on weights held as attributes, so no nn.Linear or nn.Conv2d is left to find. Each
such call whose weight (and bias) are attributes of one submodule is rewritten into a call of a
real nn.Linear / nn.Conv2d holding those same tensors, under the submodule's original name.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import fx, nn

from mpq.errors import MpqError

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


def _pickled_members(archive: zipfile.ZipFile) -> list[str]:
    """The members torch.export.load would unpickle: `.pt` files (sample inputs, legacy weights and
    constants) and the weights and constants its JSON configs mark `use_pickle`."""
    names = archive.namelist()
    pickled = [n for n in names if n.endswith(".pt")]
    for config in (n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))):
        folder = config.rpartition("/")[0]
        entries = json.loads(archive.read(config)).get("config", {})
        pickled += [
            f"{folder}/{e['path_name']}" for e in entries.values() if isinstance(e, dict) and e.get("use_pickle")
        ]
    return pickled


def check_only_tensors(path: Path) -> None:
    """MpqError unless every pickle in the `.pt2` archive loads with weights_only=True: torch.export.load
    unpickles them with weights_only=False, which would run any code a crafted file holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in _pickled_members(archive):
                try:
                    torch.load(io.BytesIO(archive.read(member)), weights_only=True)
                except (
                    pickle.UnpicklingError,
                    RuntimeError,
                    AttributeError,
                    ModuleNotFoundError,
                    TypeError,
                    ValueError,
                    EOFError,
                    KeyError,
                ):
                    raise MpqError(
                        f"{path} holds {member}, pickled data beyond plain tensors that would run code when loaded, so mpq does not load it: "
                        "save the program again with torch.export.save and tensor inputs only, or give the Python model as --model file.py:factory --weights state_dict.pth"
                    ) from None
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise MpqError(
            f"cannot read {path} as a torch.export archive ({type(exc).__name__}): save it with torch.export.save"
        ) from None


def load_exported(path: Path) -> nn.Module:
    check_only_tensors(path)
    # copying an exported graph (mpq works on copies) trips a deprecation inside torch's pytree
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise MpqError(
            f"cannot load {path} as a torch.export program ({type(exc).__name__}): save it with torch.export.save"
        ) from None
    return modules_from_calls(program.module())
