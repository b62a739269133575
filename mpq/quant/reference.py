"""The FP32 reference: the model's own logits over the data and each layer's observed input range
(min-max), in one pass; what calibration, sensitivity and verification measure against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, module_calls_visible
from mpq.quant.affine import MinMaxObserver
from mpq.quant.calibration import input_hooks


@dataclass
class Fp32Reference:
    logits: torch.Tensor
    input_ranges: dict[str, tuple[float, float]]
    size_bytes: int
    top1: float | None


def top1(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    return None if labels is None else float((logits.argmax(dim=1) == labels).float().mean())


def run_batches(model: nn.Module, data: Dataset, batch_size: int) -> torch.Tensor:
    with torch.inference_mode(), module_calls_visible():
        return torch.cat([model(x) for x, _ in data.batches(batch_size)]).float()


def fp32_reference(prepared: PreparedModel, data: Dataset, batch_size: int, cache: Cache) -> Fp32Reference:
    """FP32 logits and each quantizable layer's input range (min-max), in one pass; cached."""
    names = [layer.name for layer in prepared.graph.layers]
    size = sum(t.numel() * t.element_size() for t in prepared.folded.state_dict().values() if t.is_floating_point())
    key = {"model": prepared.fingerprint, "data": data.fingerprint(), "layers": names}
    cached = cache.load("fp32", key)
    if cached is not None:
        logits = torch.tensor(cached["logits"])
        ranges = {n: tuple(r) for n, r in cached["ranges"].items()}
        return Fp32Reference(logits=logits, input_ranges=ranges, size_bytes=size, top1=top1(logits, data.y))
    observers = {name: MinMaxObserver() for name in names}

    def observing(obs):
        def hook(x):
            obs.observe(x)
            return x

        return hook

    with input_hooks(prepared.folded, {n: observing(o) for n, o in observers.items()}):
        logits = run_batches(prepared.folded, data, batch_size)
    ranges = {n: (o.lo, o.hi) for n, o in observers.items()}
    cache.save("fp32", key, {"logits": logits.tolist(), "ranges": ranges})
    return Fp32Reference(logits=logits, input_ranges=ranges, size_bytes=size, top1=top1(logits, data.y))
