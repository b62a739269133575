"""A quantized model's outputs against FP32's, batch by batch, as LLM users measure it (llama.cpp's
`--kl-divergence`): per token, never per window.

Per-token outputs (logits with positions: [batch, classes, positions...], mpq.inputs.adapter) are compared at
every position the attention mask keeps: KL(FP32 ‖ q) of the softmax over the classes, and whether the two
top predictions agree. Other outputs (a classifier's [batch, classes], embeddings) are one "token" per sample
(KL summed over the rest, as before). Only the quantized model's current batch is held with its log-softmax;
what is kept of it is one float per token (the KL), one flag per token, one cosine per sample and, for a
causal LM, one next-token negative log-likelihood per predicted token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from mpq.inputs.adapter import Outputs
from mpq.inputs.data import Dataset
from mpq.inputs.graph import module_calls_visible
from mpq.quant.reference import batch_kl, logit_batch, next_token_nll, task_top1

PERCENTILES = (99.0, 99.9)  # of the per-token KL, as llama.cpp reports them


@dataclass
class Comparison:
    """What a model's outputs are, measured against FP32's over a dataset."""

    kl: torch.Tensor  # float32, one value per token (per sample when the outputs have no positions)
    same_top: torch.Tensor  # bool, one per token: the top prediction equals FP32's
    cosine: torch.Tensor  # float64, one per sample: cosine of the flattened outputs
    nll: torch.Tensor | None  # float64, one per predicted token (causal LMs), else None
    top1: float | None = None
    per_token: bool = False

    @property
    def kl_mean(self) -> float:
        return float(self.kl.double().mean()) if len(self.kl) else 0.0

    def kl_percentile(self, q: float) -> float:
        """The q-th percentile of the per-token KL (numpy's linear interpolation)."""
        return float(np.percentile(self.kl.double().cpu().numpy(), q)) if len(self.kl) else 0.0

    @property
    def perplexity(self) -> float | None:
        return None if self.nll is None else float(torch.exp(self.nll.sum() / max(len(self.nll), 1)))


def per_token(outputs: Outputs, logits: torch.Tensor) -> bool:
    """Whether `logits` are compared per position (logits with positions), not per sample."""
    return not outputs.embeddings and logits.dim() > 2


def token_mask(x: torch.Tensor, input_names: tuple[str, ...] | None) -> torch.Tensor | None:
    """The attention mask of a batch of named inputs ([batch, positions], True where a token is), or None."""
    if not input_names or "attention_mask" not in input_names:
        return None
    return x[:, input_names.index("attention_mask")].bool()


def compare(model, data: Dataset, fp32_logits: torch.Tensor, batch_size: int, prepared) -> Comparison:
    """`model`'s outputs on `data`, batch by batch, against `fp32_logits` (the FP32 model's on the same data);
    `prepared`: the model's PreparedModel (what its outputs are)."""
    outputs = prepared.outputs
    kl, same, cosine, nll, kept = [], [], [], [], []
    positions = per_token(outputs, fp32_logits)
    start = 0
    with torch.inference_mode(), module_calls_visible():
        for x, _ in data.batches(logit_batch(batch_size, fp32_logits[0].numel())):
            out = model(x).float()
            ref = fp32_logits[start : start + len(out)]
            start += len(out)
            mask = token_mask(x, data.input_names) if positions and out.dim() == 3 else None
            tokens = batch_kl(out, ref, positions)
            agree = out.argmax(1) == ref.argmax(1)
            if mask is not None:
                tokens, agree = tokens[mask.to(tokens.device)], agree[mask.to(agree.device)]
            kl.append(tokens.flatten().float().cpu())
            same.append(agree.flatten().cpu())
            cosine.append(F.cosine_similarity(out.flatten(1).double(), ref.flatten(1).double(), dim=1).cpu())
            if outputs.causal_lm:
                nll.append(next_token_nll(out, x, data.input_names).cpu())
            kept.append(out.cpu() if outputs.embeddings else out.argmax(1).cpu())
    return _comparison(kl, same, cosine, nll if outputs.causal_lm else None, kept, data, fp32_logits, prepared)


def _comparison(kl, same, cosine, nll, kept, data: Dataset, fp32_logits, prepared) -> Comparison:
    """The batches' values joined; top-1 from the kept argmaxes (logits) or the kept outputs (embeddings)."""
    joined = torch.cat(kept)
    if prepared.outputs.embeddings:
        top1 = task_top1(prepared, data, joined.to(fp32_logits.device), fp32_logits)
    else:
        top1 = None if data.y is None else float((joined == data.y.cpu()).float().mean())
    return Comparison(
        kl=torch.cat(kl),
        same_top=torch.cat(same),
        cosine=torch.cat(cosine),
        nll=None if nll is None else torch.cat(nll),
        top1=top1,
        per_token=per_token(prepared.outputs, fp32_logits),
    )
