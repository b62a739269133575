"""A plan applied to a LLaMA-family or GPT-2 transformers model, as the tensors of a GGUF file llama.cpp loads.

Tensor names are llama.cpp's (token_embd, blk.N.attn_q/k/v/output, ffn_gate/up/down, attn_norm, ffn_norm,
output_norm, output; GPT-2: position_embd, attn_qkv); a quantized layer's tensor holds its packed block bytes in
its planned type (mpq.quant.formats.gguf), everything else stays float32 (F32), as the evaluator computes it.
As convert_hf_to_gguf.py does for LLaMA, the rows of Q and K (and their biases) are permuted from the
half-split rotary order of transformers to llama.cpp's interleaved order: per head, rows [0, h/2) and
[h/2, h) are interleaved. GGUF rows are quantized independently, so permuting the quantized rows is the same
as quantizing the permuted weight. A tied LM head is the token embedding (no output tensor).
The hparams are the keys llama.cpp reads for the architecture; the tokenizer metadata is copied from a
reference GGUF (its tokenizer.* keys) or built from the model folder's BPE tokenizer (mpq.export.gguf_vocab).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpq.errors import MpqError
from mpq.export.gguf_file import GGUFTensor
from mpq.export.gguf_vocab import reference_metadata, tokenizer_metadata
from mpq.inputs.graph import float_tensors, quantizable_modules
from mpq.plan import Plan
from mpq.quant.formats.gguf import GGUFTypes, matrix_shape
from mpq.quant.gguf import GGMLType

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
_BLOCK = r"(?:model\.layers|transformer\.h)\.(\d+)\."
NAMES = {
    "llama": [
        (r"model\.embed_tokens\.weight", "token_embd.weight"),
        (_BLOCK + r"input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
        (_BLOCK + r"self_attn\.([qkv])_proj\.(weight|bias)", r"blk.\1.attn_\2.\3"),
        (_BLOCK + r"self_attn\.o_proj\.(weight|bias)", r"blk.\1.attn_output.\2"),
        (_BLOCK + r"post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
        (_BLOCK + r"mlp\.(gate|up|down)_proj\.weight", r"blk.\1.ffn_\2.weight"),
        (r"model\.norm\.weight", "output_norm.weight"),
        (r"lm_head\.weight", "output.weight"),
    ],
    "gpt2": [
        (r"transformer\.wte\.weight", "token_embd.weight"),
        (r"transformer\.wpe\.weight", "position_embd.weight"),
        (_BLOCK + r"ln_1\.(weight|bias)", r"blk.\1.attn_norm.\2"),
        (_BLOCK + r"attn\.c_attn\.(weight|bias)", r"blk.\1.attn_qkv.\2"),
        (_BLOCK + r"attn\.c_proj\.(weight|bias)", r"blk.\1.attn_output.\2"),
        (_BLOCK + r"ln_2\.(weight|bias)", r"blk.\1.ffn_norm.\2"),
        (_BLOCK + r"mlp\.c_fc\.(weight|bias)", r"blk.\1.ffn_up.\2"),
        (_BLOCK + r"mlp\.c_proj\.(weight|bias)", r"blk.\1.ffn_down.\2"),
        (r"transformer\.ln_f\.(weight|bias)", r"output_norm.\1"),
        (r"lm_head\.weight", "output.weight"),
    ],
}
RECOMPUTED = ("inv_freq", ".attn.bias", ".attn.masked_bias")  # buffers llama.cpp computes itself


@dataclass(frozen=True)
class GGUFModel:
    """What a GGUF file of the plan holds: architecture, tensors (with data when packed) and metadata."""

    arch: str
    tensors: list[GGUFTensor]
    metadata: dict


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside mpq's adapter (Conv1D layers already the nn.Linear they compute)."""
    return getattr(model, "inner", model)


def architecture(model: nn.Module) -> str:
    name = type(transformers_model(model)).__name__
    if name not in ARCHITECTURES:
        raise MpqError(
            f"the GGUF export writes LLaMA-family and GPT-2 causal LMs ({', '.join(ARCHITECTURES)}), not {name}: "
            "export this model with --format packed, onnx or torchao"
        )
    return ARCHITECTURES[name]


def gguf_name(arch: str, name: str, tied: bool) -> str | None:
    """llama.cpp's name of a transformers tensor (None: not stored); a tied LM head is the token embedding."""
    name = name.removeprefix("inner.")
    for pattern, replacement in NAMES[arch]:
        if re.fullmatch(pattern, name):
            mapped = re.sub(pattern, replacement, name)
            return "token_embd.weight" if tied and mapped == "output.weight" else mapped
    return None


def _tied(model: nn.Module) -> bool:
    inner = transformers_model(model)
    head, table = inner.get_output_embeddings(), inner.get_input_embeddings()
    return head is not None and table is not None and head.weight is table.weight


def _rope_permuted(arch: str, name: str, rows: np.ndarray, config) -> np.ndarray:
    """convert_hf_to_gguf's LLaMA permutation of Q and K rows (dim 0), on float values or quantized row bytes."""
    kind = re.fullmatch(r"blk\.\d+\.attn_([qk])\.(weight|bias)", name)
    if arch != "llama" or kind is None:
        return rows
    heads = config.num_attention_heads if kind.group(1) == "q" else config.num_key_value_heads
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _float_tensor(arch: str, name: str, shape, value, config) -> GGUFTensor:
    """A tensor kept in float, as float32 (F32); `value` None: no data."""
    shape = tuple(int(s) for s in shape)
    if value is None:
        return GGUFTensor(name, GGMLType.F32, shape)
    values = _rope_permuted(arch, name, value.detach().cpu().to(torch.float32).numpy(), config)
    return GGUFTensor(name, GGMLType.F32, shape, np.ascontiguousarray(values).view(np.uint8).reshape(-1))


def _layer_tensor(arch: str, name: str, module: nn.Module, bits: int, fmt: GGUFTypes, codes, config) -> GGUFTensor:
    """A quantized layer's weight in its planned type; `codes` its packed block bytes (None: no data)."""
    rows = matrix_shape(module.weight.shape)
    ggml_type = fmt.ggml_type(bits, rows[1])
    if codes is None:
        return GGUFTensor(name, ggml_type, rows)
    nbytes = GGUFTensor(name, ggml_type, rows).nbytes
    blocks = codes.numpy()[:nbytes].reshape(rows[0], -1)
    return GGUFTensor(
        name, ggml_type, rows, np.ascontiguousarray(_rope_permuted(arch, name, blocks, config)).reshape(-1)
    )


def plan_tensors(model: nn.Module, plan: Plan, packed=None) -> list[GGUFTensor]:
    """Every tensor of the plan's GGUF file, in llama.cpp's names; with data from `packed` (PackedModel) when
    given, else shapes and types alone (for the size)."""
    arch, tied, config = architecture(model), _tied(model), transformers_model(model).config
    fmt = plan.weight_format
    if not isinstance(fmt, GGUFTypes):
        raise MpqError("this plan was not searched for GGUF: search it with --target gguf, then export it")
    modules = quantizable_modules(model, embeddings=True)
    tensors = {}
    for name, lp in plan.layers.items():
        target = _stored_name(arch, f"{name}.weight", tied)
        codes = None if packed is None else packed.tensors[f"{name}.weight_codes"]
        tensors[target] = _layer_tensor(arch, target, modules[name], lp.weight_bits, fmt, codes, config)
        bias = getattr(modules[name], "bias", None)
        if bias is not None:
            target = _stored_name(arch, f"{name}.bias", tied)
            value = None if packed is None else packed.tensors[f"{name}.bias"]
            tensors[target] = _float_tensor(arch, target, bias.shape, value, config)
    remainder = float_tensors(model, list(plan.layers)) if packed is None else _packed_floats(packed)
    for name, value in remainder.items():
        if name.endswith(RECOMPUTED):
            continue
        target = _stored_name(arch, name, tied)
        tensors[target] = _float_tensor(arch, target, value.shape, value if packed is not None else None, config)
    return [tensors[k] for k in sorted(tensors, key=_file_order)]


def _stored_name(arch: str, name: str, tied: bool) -> str:
    target = gguf_name(arch, name, tied)
    if target is None:
        raise MpqError(f"the GGUF export has no llama.cpp name for {name}: export this model with --format packed")
    return target


def _packed_floats(packed) -> dict:
    layer_parts = {f"{n}.{p}" for n in packed.layers for p in ("weight_codes", "weight_scale", "bias")}
    return {k: t for k, t in packed.tensors.items() if k not in layer_parts}


def _file_order(name: str) -> tuple:
    block = re.match(r"blk\.(\d+)\.", name)
    if block:
        return (1, int(block.group(1)), name)
    return (0 if name.startswith(("token_embd", "position_embd")) else 2, 0, name)


def hparams(model: nn.Module) -> dict:
    """The architecture's hyperparameters under the keys llama.cpp reads (convert_hf_to_gguf's)."""
    arch, config = architecture(model), transformers_model(model).config
    if arch == "gpt2":
        keys = {
            "context_length": config.n_positions,
            "embedding_length": config.n_embd,
            "feed_forward_length": config.n_inner or 4 * config.n_embd,
            "block_count": config.n_layer,
            "attention.head_count": config.n_head,
            "attention.layer_norm_epsilon": float(config.layer_norm_epsilon),
        }
    else:
        heads = config.num_attention_heads
        rope = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {})["rope_theta"]
        keys = {
            "vocab_size": config.vocab_size,
            "context_length": config.max_position_embeddings,
            "embedding_length": config.hidden_size,
            "block_count": config.num_hidden_layers,
            "feed_forward_length": config.intermediate_size,
            "rope.dimension_count": getattr(config, "head_dim", None) or config.hidden_size // heads,
            "rope.freq_base": float(rope),
            "attention.head_count": heads,
            "attention.head_count_kv": config.num_key_value_heads,
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        }
    return {f"{arch}.{k}": v for k, v in keys.items()}


def file_metadata(model: nn.Module, reference: "str | Path | None" = None) -> dict:
    """The file's metadata: name, hparams, and the tokenizer's from `reference` (a GGUF file) when given, else
    built from the model folder's tokenizer. MpqError for a model the GGUF export does not write."""
    architecture(model)
    config = transformers_model(model).config
    folder = getattr(model, "folder", None)
    vocab = (
        reference_metadata(reference, config.vocab_size) if reference else tokenizer_metadata(folder, config.vocab_size)
    )
    return {"general.name": type(transformers_model(model)).__name__} | hparams(model) | vocab


def gguf_model(model: nn.Module, plan: Plan, packed=None, reference: "str | Path | None" = None) -> GGUFModel:
    """The plan's GGUF file (tensors with data when `packed` is given); metadata as file_metadata."""
    metadata = file_metadata(model, reference)
    return GGUFModel(architecture(model), plan_tensors(model, plan, packed), metadata)
