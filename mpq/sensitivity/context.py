"""The one input every metric estimates from: the prepared model, the fit data, the loss, the quantizer fitted to
the weights (clip ratios; bias shifts when first asked for), the settings, the cache and its shared key."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel
from mpq.quant.calibration import bias_shifts, weight_clip_ratios
from mpq.quant.quantizer import Quantizer
from mpq.sensitivity.kl_quadratic import parameter_deltas
from mpq.sensitivity.losses import Loss
from mpq.sensitivity.settings import ProbeSettings

REFERENCE_BATCH = 25  # samples per forward pass of the FP32 reference (ranges) and measured errors


@dataclass
class AnalysisContext:
    prepared: PreparedModel
    data: Dataset
    settings: ProbeSettings
    cache: Cache
    progress: bool | None
    loss: Loss
    quantizer: Quantizer
    key: dict  # model, data, loss, settings, layers (and the metric's own fields): every cache entry's base
    # {(layer, bits): its weight quantized in the format's compact form}, kept for a `slow` format only
    _quantized: dict = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return self.key["layers"]

    @property
    def model(self) -> torch.nn.Module:
        return self.prepared.folded

    @functools.cached_property
    def targets(self):
        """The loss's targets over the data, computed once when a metric first needs them."""
        return self.loss.targets_for(self.model, self.data)

    @functools.cached_property
    def clip_ratios(self) -> dict[str, dict[int, torch.Tensor]]:
        q = self.quantizer
        return weight_clip_ratios(self.prepared, q.weight_clip, self.cache, q.format, self.progress)

    @functools.cached_property
    def shifts(self) -> dict:
        """The quantizer's bias shifts per layer and width ({} without bias correction), computed at most once."""
        q = self.quantizer
        if not q.bias_correction:
            return {}
        args = (self.clip_ratios, q.weight_clip, REFERENCE_BATCH, self.cache, q.format)
        return bias_shifts(self.prepared, self.data, *args)

    def deltas(self, name: str, bits: tuple[int, ...]) -> dict[int, dict[str, torch.Tensor]]:
        """The quantizer's change of layer `name`'s weight and bias at each width (mpq.sensitivity.kl_quadratic)."""
        module = self.model.get_submodule(name)
        ratios, fmt = self.clip_ratios.get(name), self.quantizer.format
        kept = None
        if fmt.slow:

            def kept(b: int) -> torch.Tensor:
                if (name, b) not in self._quantized:
                    weight = module.weight.detach()
                    ratio = None if ratios is None else ratios[b]
                    self._quantized[name, b] = fmt.quantize(weight, [b] * weight.shape[0], ratio)
                return self._quantized[name, b].dequantize().to(module.weight.dtype)

        return parameter_deltas(module, bits, ratios, self.shifts.get(name), fmt, kept)
