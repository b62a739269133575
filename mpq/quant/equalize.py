"""Cross-layer weight equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.1), applied to a copy of the BatchNorm-folded model before calibration.

A pair is two quantizable layers A -> B where B's input is A's output, passed only through Identity (a folded
BatchNorm), ReLU or ReLU6 modules that nothing else reads, and B is a dense conv/linear or a depthwise conv. Scaling
A's output channel i by 1/S_i (its weights and bias) and B's input channel i by S_i leaves the float model unchanged
for Identity and ReLU (positive scaling commutes with them). With

    r1_i = max|A row i|,  r2_i = max|B column i|,  S_i = sqrt(r1_i / r2_i)

both become sqrt(r1_i r2_i): the product rule; a depthwise A -> pointwise B pair (MobileNet, EfficientNet) is where
the per-channel ranges differ most. Pairs are swept SWEEPS times in execution order (a layer in two pairs moves twice).

ReLU6 does not commute with scaling: relu6(z / S) = relu6(z) / S only where z never reaches 6 (S >= 1) or 6 S (S <= 1).
So a ReLU6 pair scales only the channels whose largest pre-activation on the calibration data stays below
6 / RELU6_HEADROOM, and only so far that it still does after scaling; any other channel keeps S_i = 1. The model is then
unchanged on the calibration data, and on other inputs until a channel exceeds RELU6_HEADROOM times its calibration
maximum (the held-out measurement in reports/rounding.md includes what that changes). On the default model the
equalized FP32 model's KL to the original on the 50 held-out views was 0.0121 with no headroom (1), 0.0051 with 2,
0.00024 with 4 (the setting); scaling ReLU6 channels only down (S >= 1) gave 0.0097 (1) and 0.0078 (2).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from mpq.cache import Cache
from mpq.errors import MpqError
from mpq.inputs.data import Dataset
from mpq.inputs.graph import QUANTIZABLE_TYPES, PreparedModel, module_calls_visible, record_calls

ELEMENTWISE = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
SWEEPS = 4
RELU6_TOP = 6.0
RELU6_HEADROOM = 4.0  # a ReLU6 channel is scaled only while its calibration maximum stays below 6 / RELU6_HEADROOM
VERSION = 2  # in the equalized model's fingerprint: a change of the rule never reads old caches


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    activation: str  # identity | relu | relu6


def _calls(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, list[int], int]]:
    """(name, module, input ids, output id) per module call of one forward pass, the children of quantizable layers
    (e.g. a conv's own padding module) left out."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    inside = {child for name, m in layers for child, _ in m.named_modules(prefix=name)} - {n for n, _ in layers}
    # nn.Identity (a folded BatchNorm) returns its input itself: not a reader
    hooked = lambda name, module: name not in inside and not isinstance(module, nn.Identity)  # noqa: E731
    return [call[:4] for call in record_calls(model, example, hooked)]


def _second_fits(module: nn.Module, channels: int) -> bool:
    if isinstance(module, nn.Linear):
        return module.in_features == channels
    dense = module.groups == 1 and module.in_channels == channels
    return dense or module.groups == module.in_channels == module.out_channels == channels


def equalization_pairs(model: nn.Module, example: torch.Tensor) -> list[Pair]:
    """Every pair A -> B (see the module docstring) of `model`, in execution order."""
    calls = _calls(model, example)
    readers: dict[int, list] = {}
    count: dict[str, int] = {}
    for call in calls:
        count[call[0]] = count.get(call[0], 0) + 1
        for i in call[2]:
            readers.setdefault(i, []).append(call)
    pairs = []
    for name, module, _, out in calls:
        if not isinstance(module, QUANTIZABLE_TYPES) or count[name] != 1:
            continue
        activation, tensor = "identity", out
        while len(readers.get(tensor, [])) == 1:
            reader, mod, ids, reader_out = readers[tensor][0]
            kind = ELEMENTWISE.get(type(mod))
            if isinstance(mod, QUANTIZABLE_TYPES):
                if count[reader] == 1 and len(ids) == 1 and _second_fits(mod, module.weight.shape[0]):
                    pairs.append(Pair(name, reader, activation))
                break
            if kind is None or len(ids) != 1:
                break
            if activation != "identity":
                break  # two activations in a row: the cap's rule below assumes one clamp
            activation, tensor = kind, reader_out
    return pairs


def _output_maxima(model: nn.Module, names: list[str], data: Dataset, batch_size: int) -> dict[str, torch.Tensor]:
    """Per output channel, the largest output of each named layer over the data."""
    maxima: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args, output):
            dim = output.dim() - 1 if isinstance(module, nn.Linear) else 1
            top = output.detach().transpose(0, dim).reshape(output.shape[dim], -1).amax(dim=1).cpu().double()
            maxima[name] = top if name not in maxima else torch.maximum(maxima[name], top)

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad(), module_calls_visible():
            for x, _ in data.batches(batch_size):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return maxima


def pair_scales(first: nn.Module, second: nn.Module, activation: str, top: torch.Tensor | None) -> torch.Tensor:
    """S_i per channel of the pair (see the module docstring), float64."""
    r1 = first.weight.detach().double().reshape(first.weight.shape[0], -1).abs().amax(dim=1)
    w2 = second.weight.detach().double().abs()
    columns = w2 if second_depthwise(second) else w2.transpose(0, 1)  # [channels, ...]: what channel i multiplies
    r2 = columns.reshape(columns.shape[0], -1).amax(dim=1)
    scales = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-300)), torch.ones_like(r1))
    if activation == "relu6":
        top = top.to(scales)
        limit = RELU6_TOP / RELU6_HEADROOM
        scales = torch.where(top > 0, torch.maximum(scales, top / limit), scales)  # stays below the limit after
        scales = torch.where(top >= limit, torch.ones_like(scales), scales)
    return scales


def second_depthwise(module: nn.Module) -> bool:
    return not isinstance(module, nn.Linear) and module.groups > 1


def apply_scales(first: nn.Module, second: nn.Module, scales: torch.Tensor) -> None:
    """A's output channel i divided by S_i, B's input channel i multiplied by it."""
    with torch.no_grad():
        shape = (-1,) + (1,) * (first.weight.dim() - 1)
        first.weight.div_(scales.to(first.weight).reshape(shape))
        if getattr(first, "bias", None) is not None:
            first.bias.div_(scales.to(first.bias))
        if second_depthwise(second):
            second.weight.mul_(scales.to(second.weight).reshape((-1,) + (1,) * (second.weight.dim() - 1)))
        else:
            second.weight.mul_(scales.to(second.weight).reshape((1, -1) + (1,) * (second.weight.dim() - 2)))


def equalize_model(model: nn.Module, pairs: list[Pair], maxima: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Equalize `model` in place; the product of every pair's scales, {"A->B": [S_i]}."""
    total = {}
    maxima = {n: t.clone() for n, t in maxima.items()}
    for _ in range(SWEEPS):
        for pair in pairs:
            first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
            scales = pair_scales(first, second, pair.activation, maxima.get(pair.first))
            apply_scales(first, second, scales)
            if pair.first in maxima:
                maxima[pair.first] /= scales
            key = f"{pair.first}->{pair.second}"
            total[key] = total.get(key, torch.ones_like(scales)) * scales
    return {k: v.tolist() for k, v in total.items()}


def equalized(prepared: PreparedModel, data: Dataset, batch_size: int, cache: Cache = Cache(None)) -> PreparedModel:
    """A copy of `prepared` whose folded model is equalized (the user's model and `prepared` are untouched), with a
    fingerprint of its own so that nothing cached for the unequalized model is read for it."""
    folded = copy.deepcopy(prepared.folded)
    example = data.x[:2].to(prepared.device)
    pairs = equalization_pairs(folded, example)
    relu6 = sorted({p.first for p in pairs if p.activation == "relu6"})
    key = {"model": prepared.fingerprint, "data": data.fingerprint(), "version": VERSION, "pairs": repr(pairs)}
    cached = cache.load("equalization", key)
    if cached is None:
        cached = equalize_model(folded, pairs, _output_maxima(folded, relu6, data, batch_size))
        cache.save("equalization", key, cached)
    else:
        for pair in pairs:
            scales = torch.tensor(cached[f"{pair.first}->{pair.second}"], dtype=torch.float64)
            apply_scales(folded.get_submodule(pair.first), folded.get_submodule(pair.second), scales)
    _check_unchanged(prepared.folded, folded, data.x[:batch_size].to(prepared.device))
    digest = hashlib.sha256(f"{prepared.fingerprint}:{data.fingerprint()}:equalized/{VERSION}".encode()).hexdigest()
    return replace(prepared, folded=folded, fingerprint=digest)


def _check_unchanged(before: nn.Module, after: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad(), module_calls_visible():
        expected, got = before(x), after(x)
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        raise MpqError(
            "cross-layer equalization changed the model's outputs (an in-place operation between two layers?): "
            "quantize without it (--equalize off)"
        )
