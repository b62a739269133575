"""Packed weights: the plan applied to a model, as the tensors a deployer stores.

Per quantized layer: `<name>.weight_codes` (uint8, the codes in offset binary, b bits each,
least significant bit first, ceil(n*b/8) bytes; for per-channel widths, the chunks of the plan
(mpq.plan.storage_chunks) one after another, each chunk's n_k codes of b_k bits in ceil(n_k*b_k/8)
bytes), `<name>.weight_scale` (float32: [out_channels], or [out_channels, ceil(m / g)] with a group size g,
m weights per channel, mpq.quant.affine),
`<name>.bias` (float32), and for a quantized input `<name>.input_scale` (float32) and
`<name>.input_zero_point` (int32). Every other floating-point parameter and buffer is kept as is.
The bytes of these tensors are the measured size of the plan. They are on the CPU whatever device the
model runs on (the exports read them there); unpack_model and fake_quant_model put them on the model's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from mpq.inputs.graph import float_tensors, quantizable_modules
from mpq.plan import ChannelRun, Plan, storage_chunks
from mpq.quant.affine import ActQuantParams, QuantizedWeight
from mpq.quant.formats import DEFAULT_FORMAT, PER_CHANNEL_INT, WeightFormat, weight_format


def _words(bits: int) -> tuple[int, np.dtype, int]:
    """(codes per word, the word's type, bytes of each word in the stream): a byte of 8/b codes where b divides 8,
    else a little-endian 64-bit word of 8 codes, of which b bytes are kept."""
    return (8 // bits, np.dtype(np.uint8), 1) if 8 % bits == 0 else (8, np.dtype("<u8"), bits)


PACK_CHUNK = 1 << 22  # codes packed or unpacked at a time (a multiple of 8: every chunk ends on a byte)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-2^(b-1), 2^(b-1)-1] -> uint8 bytes, b bits per code, LSB first: code i at bits b*i ..
    b*i+b-1 of the stream (built a word of codes at a time, _words; PACK_CHUNK codes at a time)."""
    flat = codes.reshape(-1)
    if len(flat) > PACK_CHUNK:
        return torch.cat([_pack(flat[i : i + PACK_CHUNK], bits) for i in range(0, len(flat), PACK_CHUNK)])
    return _pack(flat, bits)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    count, (per, word, kept) = codes.numel(), _words(bits)
    unsigned = (codes.reshape(-1).to(torch.int16) + 2 ** (bits - 1)).cpu().numpy().astype(word)
    groups = np.zeros((-(-count // per), per), dtype=word)
    groups.reshape(-1)[:count] = unsigned
    words = np.zeros(len(groups), dtype=word)
    for k in range(per):
        words |= groups[:, k] << word.type(bits * k)
    stream = words.view(np.uint8).reshape(-1, word.itemsize)[:, :kept].reshape(-1)
    return torch.from_numpy(stream[: -(-count * bits // 8)].copy())


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_bits: the first `count` codes as int8 (PACK_CHUNK at a time)."""
    if count > PACK_CHUNK:
        step = PACK_CHUNK * bits // 8
        parts = [unpack_bits(packed[i * step : (i + 1) * step], bits, min(PACK_CHUNK, count - i * PACK_CHUNK))
                 for i in range(-(-count // PACK_CHUNK))]  # fmt: skip
        return torch.cat(parts)
    per, word, kept = _words(bits)
    groups = -(-count // per)
    data = np.zeros(groups * kept, dtype=np.uint8)
    given = packed.cpu().numpy()[: groups * kept]
    data[: len(given)] = given
    stream = np.zeros((groups, word.itemsize), dtype=np.uint8)
    stream[:, :kept] = data.reshape(groups, kept)
    words, mask = stream.view(word).reshape(-1), word.type((1 << bits) - 1)
    unsigned = np.stack([(words >> word.type(bits * k)) & mask for k in range(per)], axis=1).reshape(-1)[:count]
    return torch.from_numpy((unsigned.astype(np.int16) - 2 ** (bits - 1)).astype(np.int8))


def layer_chunks(meta: dict) -> list[ChannelRun]:
    """The chunks a packed layer's codes are stored in, from its metadata (one for a layer-wise plan)."""
    runs = [ChannelRun(*run) for run in meta.get("channel_bits") or [[0, meta["weight_shape"][0], meta["weight_bits"]]]]
    return storage_chunks(runs, meta.get("channel_group"))


def pack_chunks(codes: torch.Tensor, chunks: list[ChannelRun]) -> torch.Tensor:
    """Each chunk's codes (output channels start..stop-1) packed at its width, the chunks back to back."""
    return torch.cat([pack_bits(codes[c.start : c.stop], c.weight_bits) for c in chunks])


def unpack_codes(packed_codes: torch.Tensor, meta: dict) -> torch.Tensor:
    """Inverse of pack_chunks: the int8 codes shaped like the weight."""
    shape = meta["weight_shape"]
    per_channel = int(np.prod(shape[1:]))
    codes, offset = [], 0
    for c in layer_chunks(meta):
        count = (c.stop - c.start) * per_channel
        size = -(-count * c.weight_bits // 8)
        codes.append(unpack_bits(packed_codes[offset : offset + size], c.weight_bits, count))
        offset += size
    return torch.cat(codes).reshape(shape)


@dataclass
class PackedModel:
    """Exported tensors and, per quantized layer, its widths and weight shape."""

    tensors: dict[str, torch.Tensor]
    layers: dict[str, dict]

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def weight_format(self, name: str) -> WeightFormat:
        """The format layer `name`'s weights are stored in."""
        meta = self.layers[name]
        return weight_format(meta.get("weight_format", DEFAULT_FORMAT), meta.get("group_size"))

    def weight_scale(self, name: str) -> torch.Tensor:
        """Layer `name`'s weight scales as float32, whatever type its format stores them in."""
        return self.weight_format(name).scale_from_stored(self.tensors[f"{name}.weight_scale"])

    @property
    def bits_per_weight(self) -> float | None:
        """Bits of the quantized layers' codes and scales as stored, over their weight count (None: no layer
        quantized)."""
        parts = ("weight_codes", "weight_scale")
        stored = [self.tensors[f"{n}.{p}"] for n in self.layers for p in parts if f"{n}.{p}" in self.tensors]
        weights = sum(math.prod(meta["weight_shape"]) for meta in self.layers.values())
        return 8 * sum(t.numel() * t.element_size() for t in stored) / weights if weights else None


def pack_model(
    model: nn.Module,
    plan: Plan,
    act_params: dict[str, ActQuantParams] | None = None,
    clip_ratios: dict[str, torch.Tensor] | None = None,
    biases: dict[str, torch.Tensor] | None = None,
    fmt: WeightFormat = PER_CHANNEL_INT,
    weights: Callable[[str], QuantizedWeight] | None = None,
) -> PackedModel:
    """Quantize `model`'s layers as `plan` says; `act_params` holds calibrated input quantizers,
    `clip_ratios` each layer's weight clip ratio per scale at its channels' widths (absent: min-max),
    `biases` the biases to export in place of the model's (bias correction), `fmt` the weights' format
    (mpq.quant.formats: its codes and scales are what is packed), `weights(name)` a layer quantized by the caller
    (mpq.quant.calibration.Calibration.weight: learned rounding), asked for as it is packed (one layer's codes at a
    time, not the model's)."""
    clip_ratios, biases = clip_ratios or {}, biases or {}
    modules = quantizable_modules(model, embeddings=True)
    missing = sorted(set(plan.layers) - set(modules))
    if missing:
        raise ValueError(f"plan names layers the model lacks: {missing[:3]}")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    for name, lp in plan.layers.items():
        module = modules[name]
        out_channels = module.weight.shape[0]
        widths = lp.channel_widths(out_channels)
        q = weights(name) if weights is not None else fmt.quantize(module.weight, widths, clip_ratios.get(name))
        tensors |= {f"{name}.{part}": t for part, t in _weight_tensors(fmt, q, lp, out_channels).items()}
        if getattr(module, "bias", None) is not None:
            tensors[f"{name}.bias"] = (
                (biases[name] if name in biases else module.bias.detach().to(torch.float32)).cpu().clone()
            )
        if lp.act_bits:
            params = act_params[name]
            tensors[f"{name}.input_scale"] = torch.tensor([params.scale], dtype=torch.float32)
            tensors[f"{name}.input_zero_point"] = torch.tensor([params.zero_point], dtype=torch.int32)
        layers[name] = {
            "weight_bits": lp.weight_bits,
            "act_bits": lp.act_bits,
            "weight_shape": list(module.weight.shape),
        }
        if fmt.group_size is not None:
            layers[name]["group_size"] = fmt.group_size
        if fmt.name != DEFAULT_FORMAT:
            layers[name]["weight_format"] = fmt.name
        if lp.channel_bits:
            layers[name]["channel_bits"] = [[r.start, r.stop, r.weight_bits] for r in lp.channel_bits]
            layers[name]["channel_group"] = lp.channel_group
    for name, t in float_tensors(model, list(plan.layers)).items():
        tensors[name] = t.detach().cpu().clone()
    return PackedModel(tensors=tensors, layers=layers)


def _weight_tensors(fmt: WeightFormat, q, lp, out_channels: int) -> dict[str, torch.Tensor]:
    """The stored weight tensors by suffix: the codes packed chunk by chunk and the scales, or the format's own."""
    if fmt.own_tensors:
        return fmt.packed_tensors(q)
    return {
        "weight_codes": pack_chunks(q.codes, lp.chunks(out_channels)),
        "weight_scale": fmt.stored_scale(q.scale.detach().cpu()).clone(),
    }


def dequantized_weight(packed: PackedModel, name: str) -> torch.Tensor:
    """Layer `name`'s weight as the packed codes and scales give it back (dequantized on the CPU, as the exports do
    it)."""
    meta = packed.layers[name]
    fmt = packed.weight_format(name)
    if fmt.own_tensors:
        own = {k.removeprefix(f"{name}."): t for k, t in packed.tensors.items() if k.startswith(f"{name}.weight_")}
        return fmt.unpacked_weight(own, meta["weight_shape"], meta["weight_bits"])
    codes = unpack_codes(packed.tensors[f"{name}.weight_codes"], meta)
    return QuantizedWeight(codes, packed.weight_scale(name), meta["weight_bits"], meta.get("group_size")).dequantize()


def unpack_model(model: nn.Module, packed: PackedModel) -> tuple[nn.Module, dict[str, ActQuantParams]]:
    """A copy of `model` whose quantized layers hold the dequantized packed weights, and the input quantizers."""
    rebuilt = copy.deepcopy(model)
    modules = quantizable_modules(rebuilt, embeddings=True)
    with torch.no_grad():
        for name in packed.layers:
            modules[name].weight.copy_(dequantized_weight(packed, name))
            if f"{name}.bias" in packed.tensors:
                modules[name].bias.copy_(packed.tensors[f"{name}.bias"])
        state = rebuilt.state_dict()
        for name, tensor in packed.tensors.items():
            if name in state:  # the float remainder
                state[name].copy_(tensor)
    return rebuilt, input_quantizers(packed)


def input_quantizers(packed: PackedModel) -> dict[str, ActQuantParams]:
    """{layer: its input's quantizer} for every layer with a quantized input."""
    return {
        name: ActQuantParams(
            float(packed.tensors[f"{name}.input_scale"][0]),
            int(packed.tensors[f"{name}.input_zero_point"][0]),
            meta["act_bits"],
        )
        for name, meta in packed.layers.items()
        if meta["act_bits"]
    }


@dataclass(frozen=True)
class IntegerLayer:
    """A layer with quantized weights and input, computed as an integer engine computes it:

        acc = layer(q_x - z, q_w)                  exact: integer codes, accumulated in floats
        y   = float32(acc) * (s_x * s_w[c]) + bias[c]   (s_x * s_w[c] rounded to float32 once)

    with q_x = clamp(round(x / s_x) + z, 0, 2^b - 1). Every partial sum of codes is an integer of
    magnitude at most max|q_x - z| * max_c sum_k |q_w[c, k]|; below 2^24 float32 holds it exactly
    (true of every layer of the default model even at 8 bits), otherwise float64 is used (exact below
    2^53). So `acc` is exact whatever the summation order: the result does not depend on batch size,
    threads or library, and onnxruntime's ConvInteger/MatMulInteger (mpq.export.onnx_qdq) give the
    same bits. (A float32 fake-quant convolution does not: its rounding moves activations across
    quantization steps, which changes a few top-1 predictions of a deep network.)
    The module holds the weight codes (in the accumulator type) and no bias; a forward pre-hook turns its input into
    centred codes and a forward hook rescales its output.
    """

    params: ActQuantParams
    combined_scale: torch.Tensor  # float32 [out_channels]: float32(s_x) * s_w
    bias: torch.Tensor | None
    accumulator: torch.dtype  # float32 where exact (see exact_accumulator), else float64

    def centred_codes(self, module: nn.Module, args: tuple) -> tuple:
        return (self.params.codes(args[0]).sub_(self.params.zero_point).to(self.accumulator), *args[1:])

    def rescale(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        shape = (-1,) if isinstance(module, nn.Linear) else (1, -1) + (1,) * (output.dim() - 2)
        y = output.to(torch.float32) * self.combined_scale.reshape(shape)
        return y + self.bias.reshape(shape) if self.bias is not None else y


FLOAT32_EXACT_INTEGERS = 2**24


def exact_accumulator(params: ActQuantParams, codes: torch.Tensor) -> torch.dtype:
    """float32 when no partial sum of (q_x - z) * q_w can reach 2^24 in magnitude, else float64."""
    largest_input = max(params.zero_point, 2**params.bits - 1 - params.zero_point)
    # int32 holds every row's sum: |code| ≤ 128 over fewer than 2^24 inputs; a few rows at a time, not an int32 copy
    rows = codes.reshape(codes.shape[0], -1)
    step = max(1, PACK_CHUNK // max(rows.shape[1], 1))
    largest_row = max(int(chunk.to(torch.int32).abs_().sum(dim=1).max()) for chunk in rows.split(step))
    return torch.float32 if largest_input * largest_row < FLOAT32_EXACT_INTEGERS else torch.float64


def combined_scale(params: ActQuantParams, weight_scale: torch.Tensor) -> torch.Tensor:
    """float32(s_x) * s_w per output channel, in float32 (what the ONNX export stores)."""
    return torch.tensor(params.scale, dtype=torch.float32) * weight_scale.to(torch.float32)


@dataclass(frozen=True)
class FakeQuantInput:
    """Pre-hook: the input fake-quantized, (q_x - z) * s_x, for a layer computed in float."""

    params: ActQuantParams

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.params.fake_quantize(args[0]), *args[1:])


def fake_quant_model(model: nn.Module, packed: PackedModel) -> nn.Module:
    """The model the evaluator measures: unpack_model's copy in which every layer with a quantized
    input computes in integer arithmetic (IntegerLayer); layers with float inputs use the dequantized
    weights in float. A layer with group-wise weight scales has no per-channel scale to factor out of its
    integer sums: with a quantized input it computes in float32 on the fake-quantized input (FakeQuantInput)."""
    rebuilt, act_params = unpack_model(model, packed)
    modules = quantizable_modules(rebuilt, embeddings=True)
    for name, params in act_params.items():
        meta, module = packed.layers[name], modules[name]
        if meta.get("group_size") is not None:
            module.register_forward_pre_hook(FakeQuantInput(params))
            continue
        device = module.weight.device
        codes = unpack_codes(packed.tensors[f"{name}.weight_codes"], meta)
        scale = combined_scale(params, packed.weight_scale(name)).to(device)
        bias = packed.tensors.get(f"{name}.bias")
        layer = IntegerLayer(params, scale, None if bias is None else bias.to(device), exact_accumulator(params, codes))
        module.weight = nn.Parameter(codes.to(device, layer.accumulator), requires_grad=False)
        module.bias = None
        module.register_forward_pre_hook(layer.centred_codes)
        module.register_forward_hook(layer.rescale)
    return rebuilt
