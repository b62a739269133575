"""Small networks for the Gauss-Newton residual (tests/test_residual.py, reports/bench_residual.py), and the
exact Hessian, Gauss-Newton and residual blocks of their softmax cross-entropy, by torch.autograd.functional."""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F


class CurvedBlock(nn.Module):
    """A token classifier: linear embedding, LayerNorm, one softmax self-attention (q, k, v, proj), LayerNorm,
    a GELU MLP (up, down) with residual adds, the mean over tokens and a linear head. Curved after every
    layer but `down` (down → add → mean → head is linear) and `head` (its output is the logits)."""

    def __init__(self, features: int = 6, dim: int = 8, classes: int = 5, sdpa: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)
        self.sdpa = sdpa  # F.scaled_dot_product_attention (on CPU: a kernel without double backward)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.sdpa:  # [batch, heads = 1, tokens, dim]: the flash kernel on CPU
            return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return (q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])).softmax(dim=-1) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.proj(self.attend(self.norm1(h)))
        h = h + self.down(F.gelu(self.up(self.norm2(h))))
        return self.head(h.mean(dim=1))


CURVED_LAYERS = ["embed", "q", "k", "v", "proj", "up", "down", "head"]
FLAT_AFTER = {"down", "head"}  # the layers after which CurvedBlock is linear


def curved_block(seed: int = 0, samples: int = 96, tokens: int = 4, sdpa: bool = False):
    """(model, x, y): CurvedBlock with weights scaled up (so its softmax and GELU are far from linear), and
    labels from a noisy copy of its own predictions (so the loss has a gradient)."""
    torch.manual_seed(seed)
    model = CurvedBlock(sdpa=sdpa).eval()
    with torch.no_grad():
        for name in CURVED_LAYERS:
            model.get_submodule(name).weight.mul_(2.0)
    x = torch.randn(samples, tokens, 6)
    with torch.no_grad():
        y = (model(x) + torch.randn(samples, 5)).argmax(dim=1)
    return model, x, y


def curved_model(sdpa: bool = False) -> CurvedBlock:
    """The model of curved_block, for `--model tests/residual_models.py:curved_model`."""
    return curved_block(sdpa=sdpa)[0]


def sdpa_model() -> CurvedBlock:
    return curved_model(sdpa=True)


def relu_conv(seed: int = 0, samples: int = 160):
    """(model, x, y): a ReLU/ReLU6 CNN with max pooling (piecewise linear after every layer)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()
    x = torch.randn(samples, 3, 10, 10)
    with torch.no_grad():
        y = (model(x) + 0.5 * torch.randn(samples, 5)).argmax(dim=1)
    return model, x, y


def relu_mlp(seed: int = 0, samples: int = 160):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5)).eval()
    x = torch.randn(samples, 6)
    with torch.no_grad():
        y = (model(x) + 0.5 * torch.randn(samples, 5)).argmax(dim=1)
    return model, x, y


@dataclass
class ExactBlocks:
    """One layer's exact blocks over the whole data: H (of the mean cross-entropy), G = (1/N) Σ_i J_iᵀ
    (diag p_i − p_i p_iᵀ) J_i, and R = H − G, each [params, params] in the weight's flattened order."""

    hessian: torch.Tensor
    gauss_newton: torch.Tensor

    @property
    def residual(self) -> torch.Tensor:
        return self.hessian - self.gauss_newton

    def channel_traces(self, block: torch.Tensor, channels: int) -> np.ndarray:
        return block.diagonal().reshape(channels, -1).sum(dim=1).numpy()


def exact_blocks(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> ExactBlocks:
    w0 = model.get_submodule(name).weight.detach().clone().double()
    net = model.double()
    inputs = x.double() if x.is_floating_point() else x  # token ids stay integers
    logits = lambda w: functional_call(net, {f"{name}.weight": w.reshape(w0.shape)}, (inputs,))  # noqa: E731
    try:
        h = torch.autograd.functional.hessian(lambda w: F.cross_entropy(logits(w), y), w0.flatten(), vectorize=True)
        jac = jacrev(logits)(w0.flatten())  # [N, C, n]
        p = torch.softmax(logits(w0.flatten()), dim=1)
        m = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        g = torch.einsum("ica,icd,idb->ab", jac, m, jac) / len(x)
    finally:
        model.float()
    return ExactBlocks(h.detach().float(), g.detach().float())
