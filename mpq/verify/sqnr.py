"""Per-layer signal-to-quantization-noise ratios of a plan (as ONNX Runtime's QDQ debugging reports them).

For a signal s and its quantized counterpart s', SQNR = 10 log10(sum s^2 / sum (s - s')^2) dB
(infinite when they are equal). Per quantized layer:
    weight_sqnr_db   W against Q_b(W) (the exported weights)
    input_sqnr_db    the layer's input in the quantized model, before and after its own activation
                     quantizer: the error this quantizer adds (None for a float input)
    output_sqnr_db   the layer's output in the quantized model against the FP32 model's: the error
                     accumulated from the model's input up to this layer
Sums run over every element of every sample given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpq.inputs.graph import PreparedModel, module_calls_visible, quantizable_modules
from mpq.quant.affine import sqnr_db
from mpq.verify.apply import PackedModel, input_quantizers
from mpq.verify.in_place import InPlace

SQNR_BATCH = 5  # samples per pass at most: every layer's FP32 output of a batch is held at once
WEIGHT_CHUNK_ELEMENTS = 1 << 22  # a weight's SQNR is summed over this many elements at a time
CAPTURE_BYTES = 1 << 28  # the FP32 and quantized outputs of every layer held for a batch at most (one sample at least)


@dataclass(frozen=True)
class LayerSqnr:
    name: str
    weight_bits: int
    act_bits: int | None
    weight_sqnr_db: float
    input_sqnr_db: float | None
    output_sqnr_db: float

    def to_json(self) -> dict:
        """JSON has no infinity: an exact signal (no noise) is written as null."""
        return {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, row: dict) -> "LayerSqnr":
        """The row to_json wrote; a null SQNR is an exact signal (infinite), except a float input's (no quantizer:
        None)."""
        exact = lambda v: math.inf if v is None else float(v)  # noqa: E731
        return cls(
            row["name"],
            row["weight_bits"],
            row["act_bits"],
            exact(row["weight_sqnr_db"]),
            None if not row["act_bits"] else exact(row["input_sqnr_db"]),
            exact(row["output_sqnr_db"]),
        )


class _Energies:
    """Running sum s^2 and sum (s - s')^2 per layer: float32 temporaries, float64 sums."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, s: torch.Tensor, s_quantized: torch.Tensor) -> None:
        s, s_quantized = s.float(), s_quantized.float()
        self.signal[name] = self.signal.get(name, 0.0) + float(s.square().sum(dtype=torch.float64))
        self.noise[name] = self.noise.get(name, 0.0) + float((s - s_quantized).square_().sum(dtype=torch.float64))

    def db(self, name: str) -> float:
        return sqnr_db(self.signal[name], self.noise[name])


def _capture_outputs(model: nn.Module, names, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs, modules = {}, quantizable_modules(model, embeddings=True)
    handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: outputs.__setitem__(n, out)) for n in names]
    try:
        with torch.inference_mode(), module_calls_visible():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _weight_sqnr_db(w: torch.Tensor, w_q: torch.Tensor) -> float:
    """SQNR of W against Q(W), summed a few rows at a time: no temporaries the size of an LM head's weight."""
    energies, rows = _Energies(), max(1, WEIGHT_CHUNK_ELEMENTS // max(w[0].numel(), 1))
    for chunk, chunk_q in zip(w.detach().split(rows), w_q.split(rows)):
        energies.add("weight", chunk, chunk_q.to(chunk.device))
    return energies.db("weight")


def _per_sample_bytes(outputs: dict[str, torch.Tensor], samples: int) -> int:
    return sum(t.numel() * t.element_size() for t in outputs.values()) // max(samples, 1)


def layer_sqnr(prepared: PreparedModel, packed: PackedModel, x: torch.Tensor, batch_size: int = 25) -> list[LayerSqnr]:
    """SQNR of every quantized layer's weights, input quantizer and output, over the inputs `x`
    (in batches of at most SQNR_BATCH: every layer's FP32 and quantized outputs of a batch are held at once, so after
    a first batch of one sample, as many as keep them within CAPTURE_BYTES)."""
    model, in_place = prepared.folded, InPlace(prepared.folded, packed)
    act_params = input_quantizers(packed)
    names = list(packed.layers)
    modules = quantizable_modules(model, embeddings=True)
    inputs, outputs = _Energies(), _Energies()

    def input_noise(name: str):
        def hook(module, args):
            inputs.add(name, args[0], act_params[name].fake_quantize(args[0]))

        return hook

    start, step = 0, 1
    while start < len(x):
        batch = x[start : start + step]
        reference = _capture_outputs(model, names, batch)
        held = max(2 * _per_sample_bytes(reference, len(batch)), 1)
        start, step = start + len(batch), max(1, min(batch_size, SQNR_BATCH, CAPTURE_BYTES // held))
        with in_place.active():
            # prepended, so it sees the layer's input before the layer's own quantizer
            hooks = [
                modules[n].register_forward_pre_hook(input_noise(n), prepend=True) for n in names if n in act_params
            ]
            try:
                quantized = _capture_outputs(model, names, batch)
            finally:
                for h in hooks:
                    h.remove()
        for n, out in quantized.items():
            outputs.add(n, reference[n], out)
        del reference, quantized  # a batch's outputs: freed before the next batch and the weights' SQNR
    return [
        LayerSqnr(
            name=n,
            weight_bits=meta["weight_bits"],
            act_bits=meta["act_bits"],
            weight_sqnr_db=_weight_sqnr_db(prepared.folded.get_submodule(n).weight, in_place.weight(n)),
            input_sqnr_db=inputs.db(n) if meta["act_bits"] else None,
            output_sqnr_db=outputs.db(n),
        )
        for n, meta in packed.layers.items()
    ]
