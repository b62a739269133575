"""The `output_mse` and `output_kl` metrics: measured, not estimated. For each layer l and width b, only that layer is
quantized (everything else FP32) and the model's outputs f_q are compared with the FP32 outputs f over
the calibration inputs:

    Ω_l(b) = MSE = mean over samples and output elements of (f_q − f)²
    SQNR_l(b) = 10 log10(Σ f² / Σ (f_q − f)²) dB    (reported beside it)
    output_kl:  Ω_l(b) = KL(softmax f ‖ softmax f_q) along dimension 1, averaged over samples (as mpq.verify's)

Weights: output_mse takes Q_b(W_l) by mpq.quant.affine's min-max symmetric per-channel quantizer; output_kl the
plan's quantizer (clipping, and the corrected bias with bias correction: `deltas`). Inputs (activation sensitivity): the
layer's input through the verifier's min-max affine quantizer at b bits (ranges observed on the same
data); layers that read one tensor are quantized together, as they share one quantizer.
Cost: (layers + inputs) × widths forward passes over the data.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from mpq.inputs.graph import module_calls_visible
from mpq.memory import release_free_memory
from mpq.progress import bar
from mpq.quant.affine import ActQuantParams, fake_quantize_weight, sqnr_db
from mpq.quant.reference import batch_kl, logit_batch
from mpq.sensitivity.losses import fp32_outputs
from mpq.sensitivity.replay import BlockReplay


@dataclass(frozen=True)
class OutputError:
    mse: float
    sqnr_db: float
    kl: float = float("nan")  # KL(FP32 ‖ quantized) of the softmax outputs, per sample


def _output_error(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reference: torch.Tensor, batch_size: int
) -> OutputError:
    signal = noise = kl = 0.0
    step = _step(batch_size, reference)
    with torch.inference_mode(), module_calls_visible():
        for start in range(0, len(x), step):
            f = reference[start : start + step]
            f_q = run(x[start : start + step])
            signal += float(f.double().pow(2).sum())
            noise += float((f_q.double() - f.double()).pow(2).sum())
            kl += float(batch_kl(f_q, f, positions=False).sum())
    return OutputError(mse=noise / reference.numel(), sqnr_db=sqnr_db(signal, noise), kl=kl / len(x))


def _step(batch_size: int, reference: torch.Tensor) -> int:
    """Samples per measured batch: a few samples' float64 logits at a time (logit_batch)."""
    return logit_batch(batch_size, reference[0].numel())


def weight_output_errors(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    bits: tuple[int, ...],
    batch_size: int = 25,
    progress: bool | None = None,
    deltas=None,
    replay_blocks: bool = False,
) -> dict[str, dict[int, OutputError]]:
    """{layer: {bits: output error with only that layer's weights quantized}}; `deltas(layer)` gives
    {bits: {param: change}} (mpq.sensitivity.kl_quadratic.parameter_deltas), else min-max weights. `replay_blocks`:
    the FP32 blocks before a layer's block are not computed again (mpq.sensitivity.replay)."""
    model.eval()
    reference = fp32_outputs(model, x, batch_size)
    replay = BlockReplay(model, x, _step(batch_size, reference), reference) if replay_blocks else None
    errors: dict[str, dict[int, OutputError]] = {}
    with bar(len(layer_names), "one-layer output errors", progress, unit="layer") as shown:
        for name in layer_names:
            with replay(name) if replay is not None else nullcontext():
                errors[name] = _layer_errors(model, name, x, reference, bits, batch_size, deltas)
            release_free_memory()
            shown.update(1)
    return errors


def _layer_errors(model, name, x, reference, bits, batch_size, deltas) -> dict[int, OutputError]:
    module = model.get_submodule(name)
    weight = module.weight.detach()
    changes = deltas(name) if deltas is not None else None
    errors = {}
    for b in bits:
        if changes is None:
            replaced = {f"{name}.weight": fake_quantize_weight(weight, b)}
        else:
            replaced = {f"{name}.{k}": getattr(module, k).detach() + v for k, v in changes[b].items()}
        errors[b] = _output_error(lambda xb: functional_call(model, replaced, (xb,)), x, reference, batch_size)
    return errors


def input_output_errors(
    model: nn.Module,
    groups: list[list[str]],
    params: Callable[[str, int], ActQuantParams],
    x: torch.Tensor,
    bits: tuple[int, ...],
    batch_size: int = 25,
) -> list[dict[int, OutputError]]:
    """Per group of layers reading one input: {bits: output error with only that input quantized};
    params(layer, bits) is the layer's activation quantizer."""
    model.eval()
    reference = fp32_outputs(model, x, batch_size)
    errors = []
    for group in groups:
        errors.append({})
        for b in bits:
            quantizers = {name: params(name, b) for name in group}
            handles = [
                model.get_submodule(name).register_forward_pre_hook(
                    lambda m, args, q=q: (q.fake_quantize(args[0]), *args[1:])
                )
                for name, q in quantizers.items()
            ]
            try:
                errors[-1][b] = _output_error(model, x, reference, batch_size)
            finally:
                for h in handles:
                    h.remove()
    return errors
