"""Small user models, data and losses named by CLI specs in the tests (tests/user_models.py:attr)."""

import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Single-head self-attention with four nn.Linear projections (all quantizable)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(x.shape[-1])
        return self.out(scores.softmax(dim=-1) @ self.v(x))


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyEncoder(nn.Module):
    """BERT-like: token + position embeddings, `depth` blocks, mean-pooled embedding output [batch, dim]."""

    def __init__(self, vocab: int = 50, dim: int = 16, depth: int = 2, seq: int = 8) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Parameter(torch.randn(seq, dim) * 0.1)
        self.blocks = nn.Sequential(*(Block(dim, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        return self.norm(self.blocks(x)).mean(dim=1)


def tiny_encoder(depth: int = 2, dim: int = 16) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(depth=depth, dim=dim).eval()


class TorchEncoder(nn.Module):
    """nn.TransformerEncoderLayer (nn.MultiheadAttention inside) with a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(50, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.tokens(ids)).mean(dim=1))


def torch_encoder() -> TorchEncoder:
    torch.manual_seed(0)
    return TorchEncoder().eval()


def token_batches():
    """A DataLoader-like iterable of (ids, labels) batches of integer token ids."""
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 50, (8, 8), generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in range(3)
    ]


class MLP(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2, bias: bool = True) -> None:
        super().__init__()
        sizes = [6] + [width] * depth
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b, bias=bias), nn.Tanh()) for a, b in zip(sizes, sizes[1:]))
        )
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.layers(x))


def mlp(width: int = 8, depth: int = 2, bias: bool = True) -> MLP:
    torch.manual_seed(0)
    return MLP(width, depth, bias).eval()


def slow_cross_entropy(output, target):
    """Cross-entropy that takes 100 ms, so that a run can be interrupted in the middle."""
    time.sleep(0.1)
    return F.cross_entropy(output, target)


def output_norm_loss(output, target):
    """A custom loss of outputs only: half the mean squared distance to the FP32 outputs."""
    return 0.5 * (output - target).pow(2).sum(dim=1).mean()


NOT_A_MODULE = 3


class SamePadConv2d(nn.Conv2d):
    """A conv that pads its input itself, TensorFlow "same" style (the odd pixel right/bottom), as
    EfficientNet-Lite's Conv2dStaticSamePadding does: its `padding` attribute stays 0."""

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class SmallConvNet(nn.Module):
    """One layer of each kind latency is looked up by: strided "same"-padded conv (+BN), depthwise conv,
    pointwise conv, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv2d(3, 8, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 32, 1)
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.relu(self.pw(x)).mean(dim=(2, 3)))


def small_convnet() -> SmallConvNet:
    torch.manual_seed(0)
    return SmallConvNet().eval()


class GroupNet(nn.Module):
    """Layers whose weights split into groups of 32 every way: a conv of 27 weights per channel (one short group),
    a depthwise conv (9), Linear 128 -> 80 (4 whole groups), 80 -> 48 (2 whole groups + 16), 48 -> 5 (32 + 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2, self.fc3 = nn.Linear(128, 80), nn.Linear(80, 48), nn.Linear(48, 5)

    def forward(self, x):
        x = F.relu(self.depthwise(F.relu(self.conv(x))))
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def group_net() -> GroupNet:
    torch.manual_seed(0)
    return GroupNet().eval()


class LinearNet(nn.Module):
    """Linears only, every input a multiple of 32: torchao's IntxWeightOnlyConfig(PerGroup(32)) holds every layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 96), nn.Linear(96, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def linear_net() -> LinearNet:
    torch.manual_seed(0)
    return LinearNet().eval()
