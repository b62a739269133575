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
from mpq.verify.apply import PackedModel, fake_quant_model, unpack_model


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



class _Energies:
    """Running sum s^2 and sum (s - s')^2 per layer."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, s: torch.Tensor, s_quantized: torch.Tensor) -> None:
        self.signal[name] = self.signal.get(name, 0.0) + float(s.double().pow(2).sum())
        self.noise[name] = self.noise.get(name, 0.0) + float((s.double() - s_quantized.double()).pow(2).sum())

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


def layer_sqnr(prepared: PreparedModel, packed: PackedModel, x: torch.Tensor, batch_size: int = 25) -> list[LayerSqnr]:
    """SQNR of every quantized layer's weights, input quantizer and output, over the inputs `x`."""
    quantized = fake_quant_model(prepared.folded, packed)
    dequantized, act_params = unpack_model(prepared.folded, packed)
    names = list(packed.layers)
    modules = quantizable_modules(quantized, embeddings=True)
    inputs, outputs = _Energies(), _Energies()

    def input_noise(name: str):
        def hook(module, args):
            inputs.add(name, args[0], act_params[name].fake_quantize(args[0]))

        return hook

    # prepended, so it sees the layer's input before the layer's own quantizer
    handles = [modules[n].register_forward_pre_hook(input_noise(n), prepend=True) for n in names if n in act_params]
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            reference = _capture_outputs(prepared.folded, names, batch)
            for n, out in _capture_outputs(quantized, names, batch).items():
                outputs.add(n, reference[n], out)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for n, meta in packed.layers.items():
        w = prepared.folded.get_submodule(n).weight.detach()
        w_q = dequantized.get_submodule(n).weight.detach()
        rows.append(
            LayerSqnr(
                name=n,
                weight_bits=meta["weight_bits"],
                act_bits=meta["act_bits"],
                weight_sqnr_db=sqnr_db(float(w.double().pow(2).sum()), float((w.double() - w_q.double()).pow(2).sum())),
                input_sqnr_db=inputs.db(n) if meta["act_bits"] else None,
                output_sqnr_db=outputs.db(n),
            )
        )
    return rows
