"""The quantizable layers of a model: BatchNorm folding, shapes, parameter counts, MACs, shared inputs.

Layers are found on the real module tree (every Conv1d/Conv2d, depthwise included, and Linear,
subclasses too) and measured with one real forward pass; nothing is rebuilt from attributes.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from mpq.inputs.adapter import ModelAdapter, Outputs

QUANTIZABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


@contextmanager
def module_calls_visible():
    """Turn off PyTorch's fused transformer fast path (nn.TransformerEncoderLayer and
    nn.MultiheadAttention at inference), which computes linear1/linear2 without calling them as
    modules, so their hooks (and hence mpq's measurement and quantization) would be skipped."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer; shapes are per sample (batch dimension dropped)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    bias_params: int
    macs: int
    stride: tuple[int, ...] = ()  # a conv's stride, as set on the module; () for Linear/Embedding
    groups: int = 1  # a conv's groups (= in_channels for depthwise)

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]


@dataclass
class ModelGraph:
    """Quantizable layers in execution order, the float remainder, and the layers that read one input."""

    layers: list[LayerInfo]
    float_params: dict[str, tuple[int, ...]]
    float_bytes: int
    folded_batchnorms: list[str] = field(default_factory=list)
    # Linear/Conv modules never called as modules (e.g. nn.MultiheadAttention.out_proj, which it
    # applies functionally): they stay in float and count in float_bytes
    uncalled: list[str] = field(default_factory=list)
    act_tie_groups: list[list[str]] = field(default_factory=list)  # layers reading one input tensor

    def layer(self, name: str) -> LayerInfo:
        return self.by_name[name]

    @property
    def by_name(self) -> dict[str, LayerInfo]:
        return {layer.name: layer for layer in self.layers}


EMBEDDING_TYPES = (nn.Embedding,)  # quantized only on request (--quantize-embeddings), per row


def quantizable_modules(model: nn.Module, embeddings: bool = False) -> dict[str, nn.Module]:
    types = QUANTIZABLE_TYPES + EMBEDDING_TYPES if embeddings else QUANTIZABLE_TYPES
    return {name: m for name, m in model.named_modules() if isinstance(m, types)}


def _layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    base = "conv1d" if isinstance(module, nn.Conv1d) else "conv2d"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise_" + base
    return base


def _macs(module: nn.Module, output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates per sample (none for an embedding: a lookup)."""
    if isinstance(module, nn.Embedding):
        return 0
    weight = module.weight
    per_output = math.prod(weight.shape[1:])  # (in/groups) * kernel for convs, in_features for Linear
    return int(math.prod(output_shape) * per_output)


def _leaf_or_layer(name: str, module: nn.Module) -> bool:
    return not list(module.children()) or isinstance(module, QUANTIZABLE_TYPES)


def record_calls(
    model: nn.Module, example: torch.Tensor, hooked=_leaf_or_layer
) -> list[tuple[str, nn.Module, list[int], int, tuple, tuple]]:
    """Run one forward pass; return (name, module, input ids, output id, input shape, output shape) per call of a
    module for which `hooked(name, module)` holds (default: leaves and quantizable layers)."""
    calls, hooks = [], []
    keepalive: list[torch.Tensor] = []  # inputs and outputs alive to the end, so that no id is reused
    for name, module in model.named_modules():
        if name == "" or not hooked(name, module):
            continue

        def hook(mod, inputs, output, name=name):
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            if not isinstance(output, torch.Tensor) or not tensors:
                return
            calls.append(
                (name, mod, [id(t) for t in tensors], id(output), tuple(tensors[0].shape[1:]), tuple(output.shape[1:]))
            )
            keepalive.extend([output, *tensors])

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), module_calls_visible():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _fold_one(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    gain = (bn.weight / std) if bn.affine else 1.0 / std
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * gain
    with torch.no_grad():
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(gain.reshape(shape))
        old_bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(shift)
        layer.bias = nn.Parameter(old_bias * gain + shift)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of `model` in eval mode with each BatchNorm that directly follows a conv/linear folded in.

    A BatchNorm is folded when its input is exactly the output of a quantizable layer and nothing
    else consumes that output; it is then replaced by nn.Identity. The user's model is untouched; a model mpq
    loaded itself (`owned`, hf:) is folded in place, so that its weights are held once.
    """
    folded = model.eval() if getattr(model, "owned", False) else copy.deepcopy(model).eval()
    calls = record_calls(folded, example)
    producers = {out_id: (name, mod) for name, mod, _, out_id, _, _ in calls if isinstance(mod, QUANTIZABLE_TYPES)}
    consumers: dict[int, int] = {}
    for _, _, in_ids, _, _, _ in calls:
        for i in in_ids:
            consumers[i] = consumers.get(i, 0) + 1
    call_counts: dict[str, int] = {}
    for name, *_ in calls:
        call_counts[name] = call_counts.get(name, 0) + 1
    folded_names = []
    for name, mod, in_ids, _, _, _ in calls:
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm) or len(in_ids) != 1:
            continue
        producer = producers.get(in_ids[0])
        if producer is None or consumers[in_ids[0]] != 1 or call_counts[name] != 1 or call_counts[producer[0]] != 1:
            continue
        _fold_one(producer[1], mod)
        _set_submodule(folded, name, nn.Identity())
        folded_names.append(name)
    return folded, folded_names


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANTIZABLE_TYPES) or super().is_leaf_module(m, qualname)


def shared_input_groups(model: nn.Module, layer_names: list[str]) -> list[list[str]]:
    """Layers whose input is the same fx node, in execution order: one activation quantizer feeds them
    all, so they share activation bits (e.g. a ResNet downsample conv and its block's first conv).

    A model fx cannot trace gets no groups (each layer then has its own activation quantizer).
    """
    try:
        fx_graph = _LeafTracer().trace(model)
    except Exception:  # fx cannot trace arbitrary Python control flow
        return []
    wanted = set(layer_names)
    readers: dict[torch.fx.Node, list[str]] = {}
    for node in fx_graph.nodes:
        if node.op == "call_module" and node.target in wanted and node.args and isinstance(node.args[0], torch.fx.Node):
            readers.setdefault(node.args[0], []).append(node.target)
    order = {name: i for i, name in enumerate(layer_names)}
    groups = [sorted(set(names), key=order.__getitem__) for names in readers.values()]
    return sorted((g for g in groups if len(g) > 1), key=lambda g: order[g[0]])


def analyze_graph(
    model: nn.Module, example: torch.Tensor, folded_batchnorms: list[str] | None = None, embeddings: bool = False
) -> ModelGraph:
    """Measure the quantizable layers of an (already folded) model with one forward pass."""
    modules = quantizable_modules(model, embeddings)
    calls = record_calls(model, example)
    seen: dict[str, LayerInfo] = {}
    for name, mod, _, _, in_shape, out_shape in calls:
        if name in modules and name not in seen:
            seen[name] = LayerInfo(
                name=name,
                kind=_layer_kind(mod),
                weight_shape=tuple(mod.weight.shape),
                input_shape=in_shape,
                output_shape=out_shape,
                params=mod.weight.numel(),
                bias_params=mod.bias.numel() if getattr(mod, "bias", None) is not None else 0,
                macs=_macs(mod, out_shape),
                stride=tuple(getattr(mod, "stride", ())),
                groups=getattr(mod, "groups", 1),
            )
    layers = _untied(list(seen.values()), modules)
    remainder = float_tensors(model, [layer.name for layer in layers])
    float_params = {name: tuple(t.shape) for name, t in remainder.items()}
    float_bytes = sum(t.numel() * t.element_size() for t in remainder.values())
    return ModelGraph(
        layers=layers,
        float_params=float_params,
        float_bytes=float_bytes,
        folded_batchnorms=folded_batchnorms or [],
        uncalled=[name for name in modules if name not in seen],
        act_tie_groups=shared_input_groups(model, [layer.name for layer in layers]),
    )


def _untied(layers: list[LayerInfo], modules: dict[str, nn.Module]) -> list[LayerInfo]:
    """One layer per weight tensor: of layers sharing one (an embedding tied to an LM head), the first that is
    not an embedding (its input can be quantized), else the first. The others compute with its quantized weight."""
    keep: dict[int, LayerInfo] = {}
    for layer in layers:
        key = id(modules[layer.name].weight)
        if key not in keep or (keep[key].kind == "embedding" and layer.kind != "embedding"):
            keep[key] = layer
    kept = {layer.name for layer in keep.values()}
    return [layer for layer in layers if layer.name in kept]


def tied_modules(model: nn.Module, layer: str) -> list[str]:
    """The other modules whose weight is layer's tensor (an embedding tied to an LM head)."""
    weight = model.get_submodule(layer).weight
    return [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if name != layer and getattr(module, "weight", None) is weight
    ]


def float_tensors(model: nn.Module, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """The floating-point parameters and buffers that stay in float: all but the named layers' weights and
    biases, each tensor once (by identity: a weight tied to a quantized layer's is quantized with it)."""
    quantized = set()
    for name in layer_names:
        module = model.get_submodule(name)
        quantized |= {id(t) for t in (module.weight, getattr(module, "bias", None)) if t is not None}
    remainder: dict[str, torch.Tensor] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and id(t) not in quantized:
            quantized.add(id(t))
            remainder[name] = t
    return remainder


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, values)."""
    import hashlib

    digest = hashlib.sha256()
    for name, t in sorted(list(model.state_dict().items())):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.detach().float().cpu().numpy().tobytes()
        )
    return digest.hexdigest()


@dataclass
class PreparedModel:
    """The user's model, its BatchNorm-folded copy (what is measured and quantized), and its layers."""

    original: nn.Module
    folded: nn.Module
    graph: ModelGraph
    fingerprint: str
    outputs: Outputs = Outputs()
    input_names: tuple[str, ...] = ()  # the data's named inputs (mpq.inputs.adapter); () for one tensor

    @property
    def device(self) -> torch.device:
        """Where the model runs (mpq.device): the data is moved here, and every stage runs here."""
        from mpq.device import model_device

        return model_device(self.folded)


def prepare_model(model: nn.Module, example: torch.Tensor, embeddings: bool = False) -> PreparedModel:
    """Fold BatchNorm into a copy and measure its layers; `example` is a small batch of real inputs.

    With `embeddings`, nn.Embedding tables are quantizable layers too (per row, no input quantizer).
    """
    folded, folded_names = fold_batchnorm(model, example)
    graph = analyze_graph(folded, example, folded_names, embeddings)
    adapted = isinstance(model, ModelAdapter)
    return PreparedModel(
        original=model,
        folded=folded,
        graph=graph,
        fingerprint=model_fingerprint(model),
        outputs=model.outputs if adapted else Outputs(),
        input_names=model.input_names if adapted else (),
    )
