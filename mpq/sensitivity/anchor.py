"""The `kl_anchored` metric: kl_quadratic's Ω scaled, per layer, to one measured point.

kl_quadratic's ½E[δᵀMδ] takes the network as linear in a layer's weights, δ = J ΔW. Downstream of the first
layers of a ReLU6 network, 4-bit errors move many units across a kink, and the measured one-layer KL departs
from the quadratic term by a factor that differs from layer to layer (on EfficientNet-Lite0 r_l below runs from 0.37
to 2.1); a plan's Ω sums those errors, so kl_quadratic ranked random plans at Spearman 0.28 on held-out views and
0.47 on its own (reports/objective.md).
One measurement per layer corrects the factor:

    r_l = KL_l(ANCHOR_BITS) / Ω_quad,l(ANCHOR_BITS),     Ω_l(b) = r_l · Ω_quad,l(b)   (and each channel's the same)

KL_l(b) is measured with only layer l quantized by the plan's quantizer (clipping, corrected bias), the rest FP32
(mpq.sensitivity.output_error), on `anchor_samples` samples (mpq.sensitivity.settings.ProbeSettings, default 48)
spread evenly over the data. A layer whose quadratic term is 0 keeps r_l = 1. Cost: one forward pass per layer
over those samples.
"""

from __future__ import annotations

import math

import torch

ANCHOR_BITS = 4  # the narrowest default width: where the quadratic term errs most and a plan's Ω is decided


def anchor_indices(samples: int, count: int) -> torch.Tensor:
    """`count` sample indices spread evenly from the first to the last (all of them when there are fewer)."""
    if samples <= count:
        return torch.arange(samples)
    return torch.linspace(0, samples - 1, count).round().long().unique()


def anchor_ratio(measured_kl: float, quadratic: float) -> float:
    """r = measured / quadratic at the anchor width; 1 where either is not a positive finite number."""
    if not (math.isfinite(measured_kl) and math.isfinite(quadratic)) or quadratic <= 0 or measured_kl < 0:
        return 1.0
    return measured_kl / quadratic
