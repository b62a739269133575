"""A quantizer fitted to a model and its calibration data: everything needed to quantize any plan.

    weight clip ratios   per layer, per width 2-8, per weight scale: per output channel, or [channel, group]
                         with the quantizer's group size (mpq.quant.observers weight clips, each group
                         clipped on its own); from the weights alone, cached by model
    input histograms     per layer, over the FP32 model's inputs to it (mpq.observers.InputHistogram);
                         one pass over the data, only for observers other than min-max; cached
    bias shifts          per layer with a bias, per width: E[Q(W) x - W x] (mpq.quant.bias_correction);
                         one pass over the data, only with bias correction; cached

    equalization         with `equalize`, all of the above is fitted to an equalized copy of the folded model
                         (mpq.quant.equalize; `Calibration.model`), whose FP32 input ranges are measured again
    learned rounding     with rounding "adaround", each (layer, width)'s codes and bias shift, learned on first use
                         (mpq.quant.adaround); cached

`Calibration.act_params` / `weight` / `bias` give a layer's quantizers at given widths; pack_plan
(mpq.verify) builds the exported tensors from them and from `Calibration.model`, so the evaluator and every
export use the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, quantizable_modules
from mpq.quant.affine import (
    ActQuantParams,
    QuantizedWeight,
    affine_params,
    grouped,
)
from mpq.quant.adaround import LearnedRounding
from mpq.quant.hooks import pass_inputs
from mpq.quant.bias_correction import MeanInputPatch, corrected_bias, output_shift
from mpq.quant.observers import ACT_OBSERVERS, HISTOGRAM_BINS, WEIGHT_CLIPS, InputHistogram
from mpq.quant.equalize import equalized
from mpq.quant.formats import PER_CHANNEL_INT, WeightFormat
from mpq.quant.quantizer import DEFAULT_QUANTIZER, Quantizer
from mpq.quant.reference import fp32_reference
from mpq.progress import bar


def weight_clip_ratios(
    prepared: PreparedModel,
    clip: str,
    cache: Cache = Cache(None),
    fmt: WeightFormat = PER_CHANNEL_INT,
    progress: bool | None = None,
) -> dict[str, dict[int, torch.Tensor]]:
    """{layer: {bits: clip ratio per scale}} for every width 2-8: [out_channels], or [out_channels, groups] with
    a group size, each group's ratio chosen on its own weights (min-max: all ones, not cached); the search shown
    as a bar per layer."""
    names = [layer.name for layer in prepared.graph.layers]
    modules = quantizable_modules(prepared.folded, embeddings=True)
    clipper = WEIGHT_CLIPS[clip if fmt.clipped else "minmax"]
    group_size = fmt.group_size

    def ratios(name: str, bits: int) -> torch.Tensor:
        weight = modules[name].weight
        per_scale = clipper.ratios(grouped(weight, group_size), bits).cpu()  # kept on the CPU, as when cached
        return per_scale if group_size is None else per_scale.reshape(weight.shape[0], -1)

    if clip == "minmax" or not fmt.clipped:
        return {n: {b: ratios(n, b) for b in fmt.widths} for n in names}
    key = {"model": prepared.fingerprint, "layers": names, "clip": clip, "clipper": repr(clipper)} | fmt.cache_fields()
    cached = cache.load("weight-clip", key)
    if cached is None:
        cached = {}
        with bar(len(names), f"{clip} weight clipping", progress, unit="layer") as shown:
            for n in names:
                cached[n] = {str(b): ratios(n, b).tolist() for b in fmt.widths}
                shown.update(1)
        cache.save("weight-clip", key, cached)
    return {
        n: {int(b): torch.tensor(r, dtype=torch.float32) for b, r in per_bits.items()} for n, per_bits in cached.items()
    }


def input_histograms(
    prepared: PreparedModel,
    data: Dataset,
    input_ranges: dict[str, tuple[float, float]],
    batch_size: int,
    cache: Cache = Cache(None),
) -> dict[str, InputHistogram]:
    """Each layer's input histogram over the data, HISTOGRAM_BINS equal bins over its min-max range."""
    names = list(input_ranges)
    key = {"model": prepared.fingerprint, "data": data.fingerprint(), "layers": names, "bins": HISTOGRAM_BINS}
    cached = cache.load("input-histograms", key)
    if cached is not None:
        return {n: InputHistogram.from_json(h) for n, h in cached.items()}
    hists = {n: InputHistogram(lo, hi, np.zeros(HISTOGRAM_BINS), 0.0) for n, (lo, hi) in input_ranges.items()}

    def adding(name):
        def add(x):
            hists[name] = hists[name].add(x)

        return add

    pass_inputs(prepared.folded, {n: adding(n) for n in names}, data, batch_size)
    cache.save("input-histograms", key, {n: h.to_json() for n, h in hists.items()})
    return hists


def bias_shifts(
    prepared: PreparedModel,
    data: Dataset,
    clip_ratios: dict[str, dict[int, torch.Tensor]],
    clip: str,
    batch_size: int,
    cache: Cache = Cache(None),
    fmt: WeightFormat = PER_CHANNEL_INT,
) -> dict[str, dict[int, torch.Tensor]]:
    """{layer: {bits: E[Q_b(W) x - W x] per output channel}} for every layer with a bias and every width 2-8."""
    modules = quantizable_modules(prepared.folded, embeddings=True)
    names = [
        n
        for n in clip_ratios
        if getattr(modules[n], "bias", None) is not None and not isinstance(modules[n], nn.Embedding)
    ]
    key = {
        "model": prepared.fingerprint,
        "data": data.fingerprint(),
        "layers": names,
        "clip": clip,
        "clipper": repr(WEIGHT_CLIPS[clip]),
    }
    key |= fmt.cache_fields()
    if not names:  # no layer has a bias: nothing to correct, and no pass over the data
        return {}
    cached = cache.load("bias-shift", key)
    if cached is None:
        patches = {n: MeanInputPatch(modules[n]) for n in names}
        pass_inputs(prepared.folded, {n: p.add for n, p in patches.items()}, data, batch_size)
        cached = {}
        for n in names:
            weight = modules[n].weight
            cached[n] = {
                str(b): output_shift(weight, fmt.fake_quantize(weight, b, clip_ratios[n][b]), patches[n].mean).tolist()
                for b in fmt.widths
            }
        cache.save("bias-shift", key, cached)
    return {
        n: {int(b): torch.tensor(s, dtype=torch.float64) for b, s in per_bits.items()} for n, per_bits in cached.items()
    }


@dataclass
class Calibration:
    """A quantizer fitted to one model and its data (see the module docstring)."""

    quantizer: Quantizer
    clip_ratios: dict[str, dict[int, torch.Tensor]]
    input_ranges: dict[str, tuple[float, float]]
    histograms: dict[str, InputHistogram] = field(default_factory=dict)
    shifts: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    data_fingerprint: str = ""  # of the calibration data
    rounding: LearnedRounding | None = None  # AdaRound's codes, with rounding "adaround"
    equalized: PreparedModel | None = None  # the equalized model it was fitted to, with `equalize`
    _ranges: dict = field(default_factory=dict, repr=False)  # (layer, bits) -> clip range, computed once

    def act_range(self, name: str, bits: int) -> tuple[float, float]:
        if (name, bits) not in self._ranges:
            lo, hi = self.input_ranges[name]
            hist = self.histograms.get(name, InputHistogram(lo, hi, np.zeros(1), 0.0))
            self._ranges[name, bits] = ACT_OBSERVERS[self.quantizer.act_observer].clip_range(hist, bits)
        return self._ranges[name, bits]

    def act_params(self, name: str, bits: int) -> ActQuantParams:
        return affine_params(*self.act_range(name, bits), bits)

    @property
    def group_size(self) -> int | None:
        return self.quantizer.group_size

    def clip_ratio(self, name: str, widths: list[int]) -> torch.Tensor:
        """Per output channel c, the clip ratio(s) of channel c at width widths[c]."""
        return _per_channel_pick(self.clip_ratios[name], widths)

    def model(self, prepared: PreparedModel) -> PreparedModel:
        """The model it was fitted to: `prepared`, or its equalized copy (what is packed, exported and measured)."""
        return self.equalized if self.equalized is not None else prepared

    def _learned(self, name: str, widths: list[int]) -> list[int]:
        return [b for b in sorted(set(widths)) if self.rounding is not None and self.rounding.learns(name, b)]

    def weight(self, name: str, weight: torch.Tensor, widths: list[int]) -> QuantizedWeight:
        """The layer's weight quantized with output channel c at width widths[c] (with AdaRound, the learned codes of
        the model's layer `name`: channel c's depend on its own weights only, so mixed widths pick per channel)."""
        q = self.quantizer.format.quantize(weight, widths, self.clip_ratio(name, widths))
        learned = self._learned(name, widths)
        if not learned:  # formats with their own block layout (GGUF) have no integer codes to replace
            return q
        at = torch.tensor(widths, device=q.codes.device)
        for b in learned:
            q.codes[at == b] = self.rounding.codes(name, b, self.clip_ratios[name][b]).to(q.codes.device)[at == b]
        return q

    def bias(self, name: str, bias: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """The exported bias: corrected for the weight quantization's mean output shift when bias correction is on
        (channel c's shift depends on its own weights only, so mixed widths take each channel's shift at its width)."""
        if name not in self.shifts:
            return bias.detach().to(torch.float32).clone()
        shift, at = _per_channel_pick(self.shifts[name], widths), torch.tensor(widths)
        for b in self._learned(name, widths):
            shift[at == b] = self.rounding.shift(name, b, self.clip_ratios[name][b]).to(shift)[at == b]
        return corrected_bias(bias, shift)


def _per_channel_pick(per_width: dict[int, torch.Tensor], widths: list[int]) -> torch.Tensor:
    """[per_width[widths[c]][c] for every channel c], as one tensor."""
    at = torch.tensor(widths)
    picked = per_width[widths[0]].clone()
    for b in set(widths):
        picked[at == b] = per_width[b][at == b]
    return picked


def calibrate(
    prepared: PreparedModel,
    data: Dataset,
    input_ranges: dict[str, tuple[float, float]],
    quantizer: Quantizer = DEFAULT_QUANTIZER,
    batch_size: int = 25,
    cache: Cache = Cache(None),
    activations: bool = True,
) -> Calibration:
    """Fit `quantizer` to the model and data; `input_ranges` are the FP32 min-max input ranges
    (mpq.verify.measure.fp32_reference). `activations` False: no layer's input is quantized (a weight-only
    plan), so no input histograms are collected (a pass over the data saved)."""
    unequalized = prepared
    if quantizer.equalize:
        prepared = equalized(prepared, data, batch_size, cache)
        input_ranges = fp32_reference(prepared, data, batch_size, cache).input_ranges
    ratios = weight_clip_ratios(prepared, quantizer.weight_clip, cache, quantizer.format)
    observed = activations and quantizer.act_observer != "minmax"
    histograms = input_histograms(prepared, data, input_ranges, batch_size, cache) if observed else {}
    shifts = (
        bias_shifts(prepared, data, ratios, quantizer.weight_clip, batch_size, cache, quantizer.format)
        if quantizer.bias_correction
        else {}
    )
    return Calibration(
        quantizer=quantizer,
        clip_ratios=ratios,
        input_ranges=dict(input_ranges),
        histograms=histograms,
        shifts=shifts,
        data_fingerprint=data.fingerprint(),
        rounding=_learned_rounding(prepared, data, quantizer, batch_size, cache),
        equalized=prepared if prepared is not unequalized else None,
    )


def _learned_rounding(
    prepared: PreparedModel, data: Dataset, quantizer: Quantizer, batch_size: int, cache: Cache
) -> LearnedRounding | None:
    if quantizer.rounding != "adaround":
        return None
    key = {"clip": quantizer.weight_clip, "clipper": repr(WEIGHT_CLIPS[quantizer.weight_clip])}
    return LearnedRounding(prepared, data, batch_size, cache, quantizer.format, key)
