"""torchao export: the plan as a per-module torchao configuration (an FqnToConfig), saved as JSON.

The file is torchao's own serialization, `torchao.core.config.config_to_dict(FqnToConfig(...))`;
read it back with `load_torchao_config(path)` (torchao's `config_from_dict`) and apply it to the
BatchNorm-folded model (`mpq.graph.prepare_model(model, x).folded`, whose module names the plan uses):

    quantize_(folded, load_torchao_config("plan.torchao.json"), filter_fn=None)

One config per planned layer, keyed by its module name, weight dtype torch.int<b> for b weight bits:
    Linear, 8-bit input   -> Int8DynamicActivationIntxWeightConfig(int<b>, PerAxis(0))
    Linear, other input   -> IntxWeightOnlyConfig(int<b>, PerAxis(0))
    Conv2d                -> IntxWeightOnlyConfig(int<b>, PerAxis(0))
    depthwise Conv2d      -> left out, in float: torchao 0.18 raises on them (PerAxis(0) on a conv
                             makes blocks of (1, in/groups, 1, 1) = one weight; choose_qparams fails)
    Conv1d                -> left out (torchao's intx configs take 2-d and 4-d weights only)
weights symmetric (MappingType.SYMMETRIC_NO_CLIPPING_ERR: no weight is clipped, as in mpq).

What torchao does differently from mpq's evaluator (so its numbers are not mpq's verified numbers):
  * torchao computes its own scales: s = max(-min(W)/2^(b-1), max(W)/(2^(b-1)-1)); mpq uses
    max|W|/(2^(b-1)-1). Equal where a channel's largest magnitude is positive.
  * for Conv2d, torchao's PerAxis(0) is one scale per (output channel, kernel row, kernel column),
    finer than mpq's one scale per output channel (and more bytes than the plan counts);
  * activations: torchao has no static per-tensor activation quantizer for these configs; 8-bit
    Linear inputs become dynamic int8 (per token, asymmetric); conv inputs stay in float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError
from mpq.files import write_text_atomic
from mpq.inputs.graph import PreparedModel, quantizable_modules
from mpq.plan import Plan


@dataclass(frozen=True)
class TorchaoExport:
    path: Path
    file_bytes: int
    notes: tuple[str, ...]


def _import_torchao():
    try:
        import torchao.quantization as tq
        from torchao.quantization.granularity import PerAxis
        from torchao.quantization.quant_primitives import MappingType
    except ImportError:
        raise MpqError("the torchao export needs torchao: pip install torchao (it must not pull another torch)") from None
    return tq, PerAxis, MappingType


def layer_config(module: nn.Module, weight_bits: int, act_bits: int | None):
    """The torchao config of one layer, or None where torchao cannot quantize it."""
    tq, PerAxis, MappingType = _import_torchao()
    dtype = getattr(torch, f"int{weight_bits}")
    symmetric = MappingType.SYMMETRIC_NO_CLIPPING_ERR
    if isinstance(module, nn.Linear) and act_bits == 8:
        return tq.Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=PerAxis(0), weight_mapping_type=symmetric)
    if isinstance(module, nn.Conv2d) and module.weight.shape[1] == 1:
        return None  # depthwise: torchao's conv blocks would hold one weight each, and 0.18 fails on them
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return tq.IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0), mapping_type=symmetric)
    return None


def torchao_config(prepared: PreparedModel, plan: Plan):
    """(FqnToConfig, names of the planned layers torchao cannot take)."""
    mixed = [name for name, lp in plan.layers.items() if lp.channel_bits]
    if mixed:
        raise MpqError(f"torchao has no per-channel weight widths, and this plan gives layer {mixed[0]} per-channel widths: export it with --format packed or onnx, or search with --granularity layer")
    tq, _, _ = _import_torchao()
    modules = quantizable_modules(prepared.folded, embeddings=True)
    configs, left_out = {}, []
    for name, lp in plan.layers.items():
        config = layer_config(modules[name], lp.weight_bits, lp.act_bits)
        if config is None:
            left_out.append(name)
        else:
            configs[name] = config
    return tq.FqnToConfig(configs), left_out


def save_torchao_config(prepared: PreparedModel, plan: Plan, path: "str | Path") -> TorchaoExport:
    """Write the FqnToConfig as JSON, atomically."""
    from torchao.core.config import config_to_dict

    config, left_out = torchao_config(prepared, plan)
    text = json.dumps(config_to_dict(config), indent=1) + "\n"
    write_text_atomic(path, text)
    notes = [f"{len(plan.layers) - len(left_out)} layers configured; apply to the BatchNorm-folded model with torchao.quantization.quantize_(model, config, filter_fn=None)"]
    if left_out:
        notes.append(f"{len(left_out)} layers left in float (depthwise, Conv1d or embeddings: not mapped to torchao's intx configs): {', '.join(left_out[:3])}, ...")
    return TorchaoExport(Path(path), len(text.encode("utf-8")), tuple(notes))


def load_torchao_config(path: "str | Path"):
    """The FqnToConfig saved by save_torchao_config."""
    from torchao.core.config import config_from_dict

    _import_torchao()
    try:
        return config_from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise MpqError(f"{path} is not a torchao config written by `mpq export --format torchao` ({exc})") from None
