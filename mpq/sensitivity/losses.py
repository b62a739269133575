"""The loss whose Hessian measures sensitivity: `labels`, `fp32`, `mse`, `kl`, or `module:callable`.

Every loss is `loss(output, target) -> scalar tensor`, averaged over the batch. The target is what
`targets_for` returns for the whole data set (and is sliced per batch like the inputs):

    labels  cross-entropy with the integer labels y (default when the data has labels)
    fp32    cross-entropy against the FP32 model's own predicted classes (default without labels)
    mse     mean squared error to the FP32 model's outputs (any output shape: embeddings, regressions;
            the default for a model whose outputs are embeddings, mpq.inputs.adapter)
    kl      KL(softmax(FP32 logits) || softmax(output)) along dim 1
    module:callable or path/file.py:callable
            your function loss(output, target); the target is y when the data has labels, else the
            FP32 model's outputs
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from mpq.errors import MpqError, first_line
from mpq.inputs.data import Dataset

BUILT_IN = ("labels", "fp32", "mse", "kl")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kl_to_fp32(output: torch.Tensor, fp32_output: torch.Tensor) -> torch.Tensor:
    return F.kl_div(
        F.log_softmax(output, dim=1), F.log_softmax(fp32_output, dim=1), log_target=True, reduction="batchmean"
    )


def _mean_squared_error(output: torch.Tensor, fp32_output: torch.Tensor) -> torch.Tensor:
    """F.mse_loss written out: torch.func's forward-over-reverse fails on F.mse_loss (torch 2.13)."""
    return (output - fp32_output).pow(2).mean()


@dataclass(frozen=True)
class Loss:
    """A named loss and what its target is: "labels", "fp32_classes" or "fp32_outputs"."""

    name: str
    fn: LossFn
    target: str

    def targets_for(self, model: torch.nn.Module, data: Dataset, batch_size: int = 25) -> torch.Tensor:
        """The target of every sample, in data order."""
        if self.target == "labels":
            return data.y
        outputs = fp32_outputs(model, data.x, batch_size)
        return outputs.argmax(dim=1) if self.target == "fp32_classes" else outputs

    def check(self, model: torch.nn.Module, data: Dataset, samples: int = 8) -> None:
        """MpqError unless the loss gives one finite number on the first samples (before any expensive work)."""
        x = data.x[:samples]
        with torch.no_grad():
            output = model(x)
            target = (
                data.y[:samples]
                if self.target == "labels"
                else output.argmax(dim=1)
                if self.target == "fp32_classes"
                else output
            )
            try:
                value = self.fn(output, target)
            except Exception as exc:  # the user's function, or a built-in one on data it cannot take
                first = first_line(exc)
                raise MpqError(
                    f"the loss {self.name} raised {type(exc).__name__} on the data ({first}): give a loss(output, "
                    "target) that returns a scalar tensor"
                ) from None
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MpqError(
                f"the loss {self.name} returned {shape}, not one number: reduce it over the batch (e.g. .mean())"
            )
        if not torch.isfinite(value).all():
            raise MpqError(
                f"the loss {self.name} is {float(value)} on the first {len(x)} samples: check the loss and the "
                "data's scale"
            )


def fp32_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 25) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float()


SOFTMAX_LOSSES = ("labels", "fp32", "kl")


def resolve_loss(loss: "str | LossFn | None", has_labels: bool, embeddings: bool = False) -> Loss:
    """The Loss named by `loss` (None: `labels` with labels, `fp32` without; `mse` for a model whose outputs
    are embeddings, whatever its labels: cross-entropy over hidden dimensions means nothing); MpqError on a bad name."""
    if embeddings and loss in SOFTMAX_LOSSES:
        raise MpqError(
            f"the model outputs embeddings (hidden states), over which --loss {loss} means nothing: use --loss "
            "mse, or a model with a classifier head"
        )
    if loss is None:
        loss = "mse" if embeddings else "labels" if has_labels else "fp32"
    if callable(loss):
        name = f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__name__)}"
        return Loss(name, loss, "labels" if has_labels else "fp32_outputs")
    if not isinstance(loss, str):
        raise MpqError(
            f"loss must be one of {', '.join(BUILT_IN)}, module:callable, or a function, not {type(loss).__name__}"
        )
    if loss == "labels":
        if not has_labels:
            raise MpqError("loss 'labels' needs integer labels y in the data: add y, or use --loss fp32 (or mse/kl)")
        return Loss("labels", F.cross_entropy, "labels")
    if loss == "fp32":
        return Loss("fp32", F.cross_entropy, "fp32_classes")
    if loss == "mse":
        return Loss("mse", _mean_squared_error, "fp32_outputs")
    if loss == "kl":
        return Loss("kl", _kl_to_fp32, "fp32_outputs")
    if ":" in loss:
        from mpq.inputs.specs import import_attr

        fn = import_attr(loss, "loss")
        if not callable(fn):
            raise MpqError(f"{loss} is a {type(fn).__name__}, not a function loss(output, target)")
        return Loss(loss, fn, "labels" if has_labels else "fp32_outputs")
    raise MpqError(f"unknown loss {loss!r}: use labels, fp32, mse, kl, or module:callable")
