"""Models with several named inputs or a structured output (Hugging Face transformers, dict outputs), seen
as mpq sees every model: one tensor in, one tensor out.

In:  a Dataset with `input_names` ("input_ids", "attention_mask", ...) holds them stacked along
     dimension 1 (x[:, i] is input i); the adapter calls model(**{name_i: x[:, i]}).
Out: the tensor of the output's field (a ModelOutput's or dict's `logits`, else `last_hidden_state`, else
     the first tensor). Logits shaped [batch, positions, classes] are returned as [batch, classes, positions]:
     classes along dimension 1, PyTorch's convention for cross-entropy, which every loss and measurement of
     mpq follows (a causal LM's KL, agreement and perplexity are then per token). Hidden states are
     embeddings, pooled as asked: "none" (every position), "cls" (the first) or "mean" (over the attention mask).

The adapter shares the model's module tree (its `_modules`, `_parameters` and `_buffers` are the model's
own), so layer names, state-dict keys and the fingerprint are the model's: a plan names `bert.encoder...`,
not `model.bert.encoder...`, and the quantized copy's `inner` is the user's model type.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mpq.errors import MpqError

POOLINGS = ("none", "cls", "mean")
OUTPUT_KINDS = ("logits", "embeddings")
LOGIT_FIELDS = ("logits",)
HIDDEN_FIELDS = ("last_hidden_state", "pooler_output")


@dataclass(frozen=True)
class Outputs:
    """What a model's output tensor is: `kind` "logits" (classes along dimension 1) or "embeddings";
    `causal_lm` when position t's logits predict token t + 1 (then verification reports perplexity)."""

    kind: str = "logits"
    field: str | None = None  # the ModelOutput attribute or dict key it comes from; None: a tensor (or a tuple's first)
    pooling: str = "none"
    causal_lm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise MpqError(f"output kind {self.kind!r} is not one of {', '.join(OUTPUT_KINDS)}")
        check_pooling(self.pooling)

    @property
    def embeddings(self) -> bool:
        return self.kind == "embeddings"

    def to_json(self) -> dict:
        return dict(self.__dict__)


def check_pooling(pooling: str | None) -> None:
    if pooling is not None and pooling not in POOLINGS:
        raise MpqError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}: use pooling=cls, mean or none")


def _field(output, name: str):
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def _tensor_of(output, field: str | None) -> torch.Tensor:
    if field is not None:
        return _field(output, field)
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def choose_outputs(model: nn.Module, output, pooling: str | None = None, field: str | None = None) -> Outputs:
    """The Outputs of a model from one forward pass's `output` (a tensor, tuple, dict or ModelOutput)."""
    if field is not None and not isinstance(_tensor_of(output, field), torch.Tensor):
        raise MpqError(
            f"the model's output has no tensor {field!r}: name one of "
            f"{', '.join(_tensor_fields(output)) or 'its fields'}"
        )
    if field is None and not isinstance(output, torch.Tensor):
        field = next((f for f in LOGIT_FIELDS + HIDDEN_FIELDS if isinstance(_field(output, f), torch.Tensor)), None)
        if field is None and not (isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor)):
            raise MpqError(
                f"the model returns a {type(output).__name__} with no logits or last_hidden_state: return one "
                "tensor, or name its field (--model-arg output=NAME)"
            )
    kind = "embeddings" if field in HIDDEN_FIELDS else "logits"
    if pooling not in (None, "none") and kind != "embeddings":
        raise MpqError(
            f"pooling={pooling} applies to hidden states (embeddings), but the model returns "
            f"{field or 'logits'}: drop the pooling"
        )
    return Outputs(
        kind=kind, field=field, pooling=pooling or "none", causal_lm=kind == "logits" and is_causal_lm(model)
    )


def _tensor_fields(output) -> list[str]:
    items = (
        output.items() if isinstance(output, Mapping) else vars(output).items() if hasattr(output, "__dict__") else ()
    )
    return [k for k, v in items if isinstance(v, torch.Tensor)]


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers model that generates text from its own logits (GPT-2, LLaMA, ...): not an encoder-decoder."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    return bool(
        callable(can_generate)
        and can_generate()
        and config is not None
        and not getattr(config, "is_encoder_decoder", False)
    )


class ModelAdapter(nn.Module):
    """`model` called with named inputs and reduced to one output tensor (see the module docstring).

    Wrap a model yourself to choose its output: mpq.ModelAdapter(model, pooling="mean") or field="pooler_output".
    `input_names` and `outputs` left None are taken from the data and the model's first output.
    """

    def __init__(
        self,
        model: nn.Module,
        input_names: tuple[str, ...] | None = None,
        outputs: Outputs | None = None,
        pooling: str | None = None,
        field: str | None = None,
        folder=None,
        owned: bool = False,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a child: the adapter shares its tree instead
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.input_names = None if input_names is None else tuple(input_names)
        self.outputs = outputs
        self.pooling, self.field = pooling, field
        self.folder = folder  # the save_pretrained folder it was loaded from (its tokenizer reads text data)
        self.owned = owned  # loaded by mpq itself (hf:): prepared in place, not copied (one copy of the weights)
        check_pooling(pooling)

    def __deepcopy__(self, memo) -> "ModelAdapter":
        """A copy sharing the copied model's tree: a GraphModule (ONNX, .pt2) copies into new module dicts, which
        the default deep copy would leave apart from the adapter's."""
        clone = ModelAdapter.__new__(ModelAdapter)
        memo[id(self)] = clone
        shared = ("inner", "_modules", "_parameters", "_buffers")
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in shared})
        inner = copy.deepcopy(self.inner, memo)
        clone.__dict__.update(inner=inner, _modules=inner._modules, _parameters=inner._parameters)
        clone.__dict__["_buffers"] = inner._buffers
        return clone

    @property
    def complete(self) -> bool:
        return self.input_names is not None and self.outputs is not None

    def train(self, mode: bool = True) -> "ModelAdapter":
        self.inner.train(mode)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, kwargs = _call(self.inner, x, self.input_names)
        tensor = _tensor_of(output, self.outputs.field)
        if self.outputs.embeddings:
            return self._pooled(tensor, kwargs.get("attention_mask"))
        return tensor.transpose(1, 2) if tensor.dim() == 3 else tensor

    def _pooled(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.outputs.pooling == "cls" or hidden.dim() < 3:
            return hidden[:, 0] if hidden.dim() == 3 else hidden
        if self.outputs.pooling == "mean":
            weights = (
                torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
                if mask is None
                else mask.to(hidden.dtype)
            )
            return (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
        return hidden


def _call(model: nn.Module, x: torch.Tensor, input_names: tuple[str, ...]) -> tuple[object, dict]:
    """The model's output on `x` (its named inputs stacked along dimension 1, or one tensor), and the keyword
    arguments given."""
    kwargs = {name: x[:, i] for i, name in enumerate(input_names)}
    if _has_use_cache(model):
        kwargs["use_cache"] = False
    if "input_ids" in kwargs and "attention_mask" not in kwargs and _takes(model, "attention_mask"):
        # what a tokenizer gives unpadded text; without it transformers looks for packed sequences
        # (torch.diff), which ONNX lacks
        kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
    return (model(**kwargs) if input_names else model(x, **kwargs)), kwargs


@contextmanager
def _evaluating(model: nn.Module):
    """`model` in eval mode for a probing forward pass, every module's mode put back after: a BatchNorm in
    training mode would otherwise update its running statistics, and the user's model is not to change."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def _takes(model: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def _has_use_cache(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "use_cache") and hasattr(model, "can_generate")


def is_transformers_model(model: nn.Module) -> bool:
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def conv1d_modules(model: nn.Module) -> list[str]:
    """Names of transformers' Conv1D layers (GPT-2's attention and MLP): y = x @ W + b, W shaped [in, out]."""
    return [
        name
        for name, m in model.named_modules()
        if type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers.")
    ]


def as_linear(conv1d: nn.Module) -> nn.Linear:
    """The nn.Linear that computes what a transformers Conv1D computes (its weight transposed)."""
    nx, nf = conv1d.weight.shape
    linear = nn.Linear(nx, nf, bias=conv1d.bias is not None, dtype=conv1d.weight.dtype, device=conv1d.weight.device)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.t())
        if conv1d.bias is not None:
            linear.bias.copy_(conv1d.bias)
    return linear


def _needs_eager_attention(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    return implementation not in (None, "eager") and hasattr(model, "set_attn_implementation")


def for_mpq(model: nn.Module, in_place: bool = False) -> nn.Module:
    """A transformers model as mpq measures it: eager attention (SDPA has no double backward on CPU, which the
    Hessian needs; the function is the same) and Conv1D layers as the nn.Linear they compute. A copy when
    anything changes (the user's model is left as it was), unless `in_place` (a model mpq loaded itself)."""
    convs = conv1d_modules(model)
    if not convs and not _needs_eager_attention(model):
        return model
    model = model if in_place else copy.deepcopy(model)
    if _needs_eager_attention(model):
        model.set_attn_implementation("eager")
    for name in convs:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, as_linear(model.get_submodule(name)))
    model.mpq_conv1d_layers = tuple(convs)  # what the model's own files hold as Conv1D (mpq.export.compressed_tensors)
    return model


def adapt(model: nn.Module, example: torch.Tensor, input_names: tuple[str, ...]) -> nn.Module:
    """`model` itself when it takes one tensor and returns one, else a complete ModelAdapter (module docstring)."""
    input_names = tuple(input_names)
    pooling = field = folder = None
    owned = False
    if isinstance(model, ModelAdapter):
        if model.input_names is not None and model.input_names != input_names:
            raise MpqError(
                f"the model takes inputs {', '.join(model.input_names) or 'x'} but the data holds "
                f"{', '.join(input_names) or 'one tensor x'}: give data with those inputs"
            )
        if model.complete:
            return model
        pooling, field, folder, owned, model = model.pooling, model.field, model.folder, model.owned, model.inner
    wrapped = pooling is not None or field is not None or folder is not None
    if is_transformers_model(model):
        model = for_mpq(model, in_place=owned)
    with _evaluating(model):
        output, _ = _call(model, example, input_names)
    if isinstance(output, torch.Tensor) and not input_names and not wrapped and not is_transformers_model(model):
        return model
    outputs = choose_outputs(model, output, pooling, field)
    return ModelAdapter(model, input_names, outputs, pooling, field, folder, owned)


def restore(model: nn.Module, input_names: tuple[str, ...], outputs: Outputs | None) -> nn.Module:
    """`model` wrapped as a file recorded it was when a plan was applied (`outputs` None: not wrapped)."""
    if outputs is None:
        return model
    if isinstance(model, ModelAdapter):
        model = model.inner
    if is_transformers_model(model):
        model = for_mpq(model)
    return ModelAdapter(model, tuple(input_names), outputs)
