"""The FP32 reference: the model's own logits over the data and each layer's observed input range
(min-max), in one pass; what calibration, sensitivity and verification measure against."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpq.cache import Cache
from mpq.inputs.data import Dataset
from mpq.inputs.graph import PreparedModel, float_tensors, module_calls_visible
from mpq.quant.affine import MinMaxObserver
from mpq.quant.hooks import input_hooks


MAX_LOGIT_ELEMENTS = 1 << 23  # logits per batch at most (a causal LM's samples × vocabulary × positions)


def logit_batch(batch_size: int, per_sample: int) -> int:
    """The batch size at most `batch_size` whose logits stay within MAX_LOGIT_ELEMENTS (at least 1 sample), so
    that memory does not grow with a language model's vocabulary × positions."""
    return max(1, min(batch_size, MAX_LOGIT_ELEMENTS // max(per_sample, 1)))


def batch_kl(logits: torch.Tensor, fp32: torch.Tensor, positions: bool) -> torch.Tensor:
    """KL(FP32 ‖ q) of each sample's (`positions`: each position's) softmax over dimension 1, in float64."""
    log_q = torch.log_softmax(logits.double(), dim=1)
    log_p = torch.log_softmax(fp32.double(), dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return kl if positions else kl.reshape(len(kl), -1).sum(dim=1)


@dataclass
class Fp32Reference:
    logits: torch.Tensor
    input_ranges: dict[str, tuple[float, float]]
    size_bytes: int
    top1: float | None
    perplexity: float | None = None  # a causal LM's, on the data (mpq.quant.reference.perplexity)


def top1(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    return None if labels is None else float((logits.argmax(dim=1) == labels).float().mean())


def task_top1(
    prepared: PreparedModel, data: Dataset, outputs: torch.Tensor, fp32_outputs: torch.Tensor
) -> float | None:
    """Top-1 against the data's labels (None without them). Logits: the argmax. Embeddings (one integer label
    per sample): the nearest class centroid, a classifier that needs no head: each class's centroid is the mean
    of its samples' unit-length FP32 embeddings (flattened), and a sample gets the class whose centroid is the
    most cosine-similar to its embedding, FP32's or the quantized model's against the same FP32 centroids."""
    if not prepared.outputs.embeddings:
        return top1(outputs, data.y)
    labels = data.y
    if labels is None or labels.dim() != 1 or len(labels) != len(outputs) or labels.is_floating_point():
        return None
    unit = lambda e: torch.nn.functional.normalize(e.flatten(1).double(), dim=1)  # noqa: E731
    classes, index = torch.unique(labels, return_inverse=True)
    centroids = torch.zeros(len(classes), unit(fp32_outputs[:1]).shape[1], dtype=torch.float64, device=outputs.device)
    centroids.index_add_(0, index.to(outputs.device), unit(fp32_outputs))
    nearest = (unit(outputs) @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
    return float((nearest == index.to(outputs.device)).double().mean())


def perplexity(logits: torch.Tensor, data: Dataset) -> float:
    """exp of the mean next-token cross-entropy (next_token_nll) over the data."""
    nll = next_token_nll(logits, data.x, data.input_names)
    return float(torch.exp(nll.sum() / max(len(nll), 1)))


def next_token_nll(logits: torch.Tensor, x: torch.Tensor, input_names: tuple[str, ...] | None) -> torch.Tensor:
    """The next-token cross-entropy of every predicted token of inputs `x` (float64): position t's logits (classes
    along dimension 1, as mpq.inputs.adapter gives them) against token t + 1, at the positions the attention mask
    keeps."""
    names = input_names or ("input_ids",)
    ids = x[:, names.index("input_ids")] if input_names else x
    step = logit_batch(len(logits), logits[0].numel())  # float64 copies of a few samples' logits at a time
    nll = torch.cat(
        [
            torch.nn.functional.cross_entropy(
                logits[i : i + step, :, :-1].double(), ids[i : i + step, 1:], reduction="none"
            )
            for i in range(0, len(logits), step)
        ]
    )
    if "attention_mask" in names:
        return nll[x[:, names.index("attention_mask")][:, 1:].bool()]
    return nll.flatten()


def lm_perplexity(prepared: PreparedModel, logits: torch.Tensor, data: Dataset) -> float | None:
    """The perplexity of a causal LM's `logits` on `data`; None for other models."""
    return perplexity(logits, data) if prepared.outputs.causal_lm else None


def run_batches(model: nn.Module, data: Dataset, batch_size: int) -> torch.Tensor:
    with torch.inference_mode(), module_calls_visible():
        return torch.cat([model(x) for x, _ in data.batches(batch_size)]).float()


def fp32_reference(prepared: PreparedModel, data: Dataset, batch_size: int, cache: Cache) -> Fp32Reference:
    """FP32 logits and each quantizable layer's input range (min-max), in one pass; cached."""
    names = [layer.name for layer in prepared.graph.layers]
    size = sum(t.numel() * t.element_size() for t in float_tensors(prepared.folded, []).values())
    key = {"model": prepared.fingerprint, "data": data.fingerprint(), "layers": names}
    cached = cache.load("fp32", key)
    stored = (
        None
        if not cached or "logits_sha256" not in cached
        else cache.load_array("fp32-logits", key, cached["logits_sha256"])
    )
    if stored is not None:
        logits = torch.from_numpy(stored).to(prepared.device)
        ranges = {n: tuple(r) for n, r in cached["ranges"].items()}
        return Fp32Reference(
            logits=logits,
            input_ranges=ranges,
            size_bytes=size,
            top1=task_top1(prepared, data, logits, logits),
            perplexity=lm_perplexity(prepared, logits, data),
        )
    observers = {name: MinMaxObserver() for name in names}

    def observing(obs):
        def hook(x):
            obs.observe(x)
            return x

        return hook

    with input_hooks(prepared.folded, {n: observing(o) for n, o in observers.items()}):
        logits = run_batches(prepared.folded, data, batch_size)
    ranges = {n: (o.lo, o.hi) for n, o in observers.items()}
    digest = cache.save_array("fp32-logits", key, logits.cpu().numpy())  # binary: samples × classes (× positions)
    cache.save("fp32", key, {"ranges": ranges, "logits_sha256": digest})
    return Fp32Reference(
        logits=logits,
        input_ranges=ranges,
        size_bytes=size,
        top1=task_top1(prepared, data, logits, logits),
        perplexity=lm_perplexity(prepared, logits, data),
    )
