"""A small BERT-like encoder: token ids in, a pooled embedding out, no labels.

Every nn.Linear (attention q/k/v/out projections and the feed-forward layers) is a quantizable layer;
the token embedding and LayerNorms stay in float. Without labels or logits the sensitivity loss is
the mean squared error to the FP32 embeddings (`loss="mse"`), and the plan is judged by the cosine
similarity of its embeddings to the FP32 ones. A second search also quantizes the token table
(`quantize_embeddings=True`, the CLI's `--quantize-embeddings`). The encoder is trained for a few seconds to tell
token sequences that contain token 0 from those that do not, so that its embeddings carry meaning.

Run:  python examples/transformer.py
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import mpq

VOCAB, DIM, SEQ = 64, 32, 12


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.ff_in, self.ff_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff_out(F.gelu(self.ff_in(self.norm2(x))))


class Encoder(nn.Module):
    """Token + position embeddings, two blocks, mean pooling: [batch, seq] int64 -> [batch, DIM]."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, DIM)
        self.positions = nn.Parameter(0.02 * torch.randn(SEQ, DIM))
        self.blocks = nn.Sequential(*(Block(DIM) for _ in range(depth)))
        self.norm = nn.LayerNorm(DIM)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        return self.norm(self.blocks(x)).mean(dim=1)


def pretrain(encoder: Encoder, steps: int = 60) -> Encoder:
    """A few steps of a toy task through a throwaway head, so the embeddings are not random."""
    head = nn.Linear(DIM, 2)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    encoder.train()
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (32, SEQ), generator=generator)
        label = (ids == 0).any(dim=1).long()
        loss = F.cross_entropy(head(encoder(ids)), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return encoder.eval()


def main() -> None:
    torch.manual_seed(0)
    encoder = pretrain(Encoder())
    ids = torch.randint(0, VOCAB, (64, SEQ), generator=torch.Generator().manual_seed(2))  # int64 token ids

    result = mpq.search(
        encoder,
        ids,
        budget=["32KB", "16MBOPs"],
        space=mpq.SearchSpace(bits=(3, 4, 6, 8)),
        loss="mse",
        probes=mpq.ProbeSettings(max_probes=16),
        progress=False,
        cache_dir=False,
    )
    print(f"sensitivity loss: {result.sensitivity.loss}; {len(result.plan.layers)} Linear layers quantized")
    for name, layer in result.plan.layers.items():
        s = result.sensitivity.layers[name]
        print(f"  {name:<18} W{layer.weight_bits}  Omega = {s.omega(layer.weight_bits):.3g}")
    report = result.report
    print(
        f"plan: {report.plan.size_bytes:,} B, {report.plan.bops / 1e6:.1f} MBOPs, cosine similarity to FP32 embeddings {report.plan.cosine_to_fp32:.5f}"
    )
    for baseline in report.baselines:
        print(
            f"  {baseline.name}: {baseline.size_bytes:,} B, cosine {baseline.cosine_to_fp32:.5f}, fits: {baseline.fits_budget}"
        )
    print(f"FP32 (float embeddings included): {report.fp32.size_bytes:,} B")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings_s.items()))

    # The token table too (per-row widths; ids stay integers): more of the model shrinks for the same budget.
    with_table = mpq.search(
        encoder,
        ids,
        budget=["32KB", "16MBOPs"],
        space=mpq.SearchSpace(bits=(3, 4, 6, 8)),
        loss="mse",
        quantize_embeddings=True,
        probes=mpq.ProbeSettings(max_probes=16),
        progress=False,
        cache_dir=False,
    )
    print(
        f"with --quantize-embeddings: tokens W{with_table.plan.layers['tokens'].weight_bits}, "
        f"{with_table.report.plan.size_bytes:,} B, cosine {with_table.report.plan.cosine_to_fp32:.5f}"
    )


if __name__ == "__main__":
    main()
