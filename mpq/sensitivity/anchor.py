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
over those samples, which grows with layers × model on a deep network. For causal LMs (a stack of repeated
blocks) only ANCHOR_DEPTHS layers of each role (the same name but for the block number: `layers.#.mlp.down_proj`)
are measured, the first, middle and last, and every other layer of the role takes log r interpolated in its depth
between the two measured ones around it (`spread_ratios`): a fixed number of passes per architecture, so the
cost grows with the model's parameters only (reports/scale.md compares the plans).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch

ANCHOR_DEPTHS = 3  # layers measured per role in a causal LM: the first, middle and last block's
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


def role_and_depth(name: str) -> tuple[str, int]:
    """A layer's role (its name with the first number, the block's, as #) and that number (0 without one)."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    if match is None:
        return name, 0
    return name[: match.start(1) - 1] + "#" + name[match.end(1) - 1 :], int(match.group(1))


def _by_role(names: list[str]) -> dict[str, list[tuple[int, str]]]:
    roles = defaultdict(list)
    for name in names:
        role, depth = role_and_depth(name)
        roles[role].append((depth, name))
    return {role: sorted(members) for role, members in roles.items()}


def anchored_layers(names: list[str], per_role: int = ANCHOR_DEPTHS) -> list[str]:
    """The layers to measure: of each role, `per_role` evenly spread in depth (all when it has no more)."""
    chosen = set()
    for members in _by_role(names).values():
        picks = anchor_indices(len(members), per_role).tolist()
        chosen |= {members[i][1] for i in picks}
    return [n for n in names if n in chosen]


def spread_ratios(names: list[str], measured: dict[str, float]) -> dict[str, float]:
    """Every layer's r: its own where measured, else log r interpolated linearly in depth between the measured
    layers of its role around it (the nearest one's beyond the first or last)."""
    ratios = dict(measured)
    for members in _by_role(names).values():
        known = [(d, math.log(measured[n])) for d, n in members if n in measured and measured[n] > 0]
        for depth, name in members:
            if name in ratios:
                continue
            if not known:
                ratios[name] = 1.0
                continue
            below = [k for k in known if k[0] <= depth] or known[:1]
            above = [k for k in known if k[0] >= depth] or known[-1:]
            (d0, r0), (d1, r1) = below[-1], above[0]
            t = 0.0 if d1 == d0 else (depth - d0) / (d1 - d0)
            ratios[name] = math.exp(r0 + t * (r1 - r0))
    return ratios
