"""Skipping a stack's FP32 blocks before the one layer a one-layer error quantizes.

With only layer l quantized, every block before l's computes exactly what the FP32 model computes: its output on
the anchor samples is recorded once (a pass that stops at that block), and while l's error is measured each block
before l's returns that recording instead of computing. A layer in block d of D then costs the blocks d..D-1 and
the head, not the whole model: on a causal LM's three anchored depths (first, middle, last) about half the passes.

Blocks are the numbered children of one container (`model.layers.7`: `model.layers` a ModuleList), the block of
a layer the prefix of its name through its first number (mpq.sensitivity.anchor.role_and_depth). A replay is used
only where the model with it reproduces the FP32 logits of the first batch; otherwise the layer runs whole.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from mpq.inputs.graph import module_calls_visible
from mpq.sensitivity.anchor import role_and_depth

REPLAY_TOLERANCE = 1e-4  # of the largest FP32 logit: what other batch sizes' matmuls may move, far below a wrong replay


class _Recorded(Exception):
    """Ends a recording pass once the block's output is kept."""


class _Replay(nn.Module):
    """Returns the recorded outputs, batch after batch, whatever it is called with; reads the block's own
    attributes (a model may ask a block for its settings)."""

    def __init__(self, block: nn.Module, outputs: list) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_outputs", outputs)
        object.__setattr__(self, "_calls", 0)

    def forward(self, *args, **kwargs):
        out = self._outputs[self._calls % len(self._outputs)]
        object.__setattr__(self, "_calls", self._calls + 1)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._block, name)


def block_of(model: nn.Module, name: str) -> tuple[nn.Module, list[str]] | None:
    """(the container of layer `name`'s block, the names of the blocks before it in it), or None when the layer is
    in no numbered block, or in the first."""
    role, depth = role_and_depth(name)
    if "#" not in role or depth == 0:
        return None
    container_name = role[: role.index("#") - 1]
    try:
        container = model.get_submodule(container_name)
    except AttributeError:
        return None
    if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) <= depth:
        return None
    return container, [str(i) for i in range(depth)]


class BlockReplay:
    """`with replay(layer):` the model with the blocks before `layer`'s replayed on the batches of `x` (each
    `step` samples, as the measurement takes them); nothing changes for a layer it cannot replay."""

    def __init__(self, model: nn.Module, x: torch.Tensor, step: int, reference: torch.Tensor) -> None:
        self.model, self.x, self.step, self.reference = model, x, step, reference
        self._depth: tuple | None = None  # (the blocks' container, the last block's index, its outputs)

    def __call__(self, name: str):
        found = block_of(self.model, name)
        return nullcontext() if found is None else self._replayed(*found)

    def _outputs(self, container: nn.Module, before: list[str]) -> list:
        last = len(before) - 1
        if self._depth is None or self._depth[:2] != (id(container), last):
            self._depth = (id(container), last, self._record(container[last]))
        return self._depth[2]

    def _record(self, block: nn.Module) -> list:
        outputs = []

        def keep(module, args, out):
            outputs.append(out)
            raise _Recorded

        handle = block.register_forward_hook(keep)
        try:
            with torch.inference_mode(), module_calls_visible():
                for start in range(0, len(self.x), self.step):
                    try:
                        self.model(self.x[start : start + self.step])
                    except _Recorded:
                        pass
        finally:
            handle.remove()
        return outputs

    @contextmanager
    def _replayed(self, container: nn.Module, before: list[str]) -> Iterator[None]:
        outputs = self._outputs(container, before)
        blocks = {i: container[int(i)] for i in before}
        for i, block in blocks.items():
            container[int(i)] = _Replay(block, outputs)
        try:
            if not self._reproduces(container, before):
                for i, block in blocks.items():
                    container[int(i)] = block
            yield
        finally:
            for i, block in blocks.items():
                container[int(i)] = block

    def _reproduces(self, container: nn.Module, before: list[str]) -> bool:
        """Whether the replayed model gives the FP32 logits of the first batch (and leaves the replays at batch 0)."""
        with torch.inference_mode(), module_calls_visible():
            try:
                out = self.model(self.x[: self.step])
            except Exception:
                return False
            finally:
                for i in before:
                    object.__setattr__(container[int(i)], "_calls", 0)
        ref = self.reference[: self.step]
        return out.shape == ref.shape and bool((out - ref).abs().max() <= REPLAY_TOLERANCE * ref.abs().max())
