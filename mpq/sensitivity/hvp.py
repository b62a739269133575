"""Hessian-vector products w.r.t. a model's quantized weights, by two methods and in chunks.

For the batch-mean loss L(W) = 1/n sum_i loss(f(x_i; W), t_i) and a vector v over all weights,
H v = d/de grad L(W + e v) at e = 0:

    rev-rev  reverse over reverse: g = grad L with create_graph, then H v = grad (g . v)
    fwd-rev  forward over reverse: H v = the tangent of grad L pushed forward along v
             (torch.func.jvp over torch.func.grad of functional_call); the loss must be a
             torch.func-traceable function (no .item(), no in-place changes of its inputs)

Chunks: with chunk_size k the batch is split into chunks B_j of at most k samples and
H v = sum_j (|B_j| / n) H_j v, H_j the Hessian of the mean loss over B_j; the same v for every
chunk, so only one chunk's activations are held at a time.

Some models have no second derivatives at all (an op whose backward has no derivative of its own, e.g.
PyTorch's CPU flash attention behind Hugging Face's default SDPA attention): both methods then raise
NoSecondDerivative, one sentence saying so and what to do, while first derivatives (the fisher and
gauss_newton metrics) still work.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from mpq.errors import MpqError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rev_rev(
    model: nn.Module, names: list[str], weights: list[torch.Tensor], x, target, loss_fn: LossFn, vs
) -> list[torch.Tensor]:
    """grad_W (grad_W L . v), the weights requiring grad (and nothing else in the model)."""
    loss = loss_fn(model(x), target)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    if not any(g.requires_grad for g in grads):  # the gradient does not depend on the weights: H = 0
        return [torch.zeros_like(w) for w in weights]
    return list(torch.autograd.grad(grads, weights, grad_outputs=vs, allow_unused=True, materialize_grads=True))


def fwd_rev(
    model: nn.Module, names: list[str], weights: list[torch.Tensor], x, target, loss_fn: LossFn, vs
) -> list[torch.Tensor]:
    """The jvp of W -> grad_W L along v, L evaluated by functional_call with W in place of the weights."""

    def loss_of(ws: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return loss_fn(functional_call(model, dict(zip(names, ws)), (x,)), target)

    primals = tuple(w.detach() for w in weights)
    _, hv = jvp(grad(loss_of), (primals,), (tuple(vs),))
    return list(hv)


METHODS = {"rev-rev": rev_rev, "fwd-rev": fwd_rev}

NO_SECOND_DERIVATIVE = ("derivative for", "is not implemented")  # autograd's words for an op without double backward


class NoSecondDerivative(MpqError):
    """The model has an op whose backward cannot be differentiated: no Hessian-vector product exists."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"this model has no second derivatives ({detail}): load a Hugging Face model with "
            'attn_implementation="eager" '
            "(or avoid the op), or use --metric gauss_newton or fisher, which need first derivatives only"
        )

    @classmethod
    def of(cls, exc: BaseException) -> "NoSecondDerivative | None":
        """The error autograd raises for an op without double backward, as a NoSecondDerivative; None for any other."""
        first = (str(exc).strip().splitlines() or [""])[0]
        return cls(first) if all(words in first for words in NO_SECOND_DERIVATIVE) else None


def hessian_vector_product(
    model: nn.Module,
    names: list[str],
    weights: list[torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: LossFn,
    vs: list[torch.Tensor],
    method: str = "fwd-rev",
    chunk_size: int = 0,
) -> list[torch.Tensor]:
    """H v of the batch-mean loss over `batch` (x, target), summed over chunks of `chunk_size` (0: one chunk).

    `names` are the weights' keys in model.state_dict() (for functional_call).
    """
    product = METHODS[method]
    try:
        return _chunked(product, model, names, weights, batch, loss_fn, vs, chunk_size)
    except (RuntimeError, NotImplementedError) as exc:
        missing = (
            NoSecondDerivative.of(exc) if method == "rev-rev" else None
        )  # fwd-rev's failures fall back to rev-rev (ProbeProblem)
        if missing is None:
            raise
        raise missing from None


def _chunked(product, model, names, weights, batch, loss_fn: LossFn, vs, chunk_size: int) -> list[torch.Tensor]:
    x, target = batch
    n = len(x)
    size = chunk_size if 0 < chunk_size < n else n
    total: list[torch.Tensor] | None = None
    for start in range(0, n, size):
        part = product(model, names, weights, x[start : start + size], target[start : start + size], loss_fn, vs)
        share = min(size, n - start) / n
        if total is None:
            total = [p.mul(share) if share != 1 else p for p in part]
        else:
            for t, p in zip(total, part):
                t.add_(p, alpha=share)
    return total
