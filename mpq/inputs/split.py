"""Holding part of the data out for measurement when no evaluation data is given: sensitivity and
calibration fit on the rest, and verification measures on what was held out."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpq.inputs.data import Dataset

EVAL_SPLIT = 0.25  # the share of --data held out for measurement when no --eval-data is given
MIN_SPLIT_GROUPS = 4  # fewer samples (or groups) than this: no split, measured in-sample


def held_out_split(data: "Dataset", fraction: float = EVAL_SPLIT, seed: int = 0) -> "tuple[Dataset, Dataset] | None":
    """(fit, held out): a seeded `fraction` of the samples held out for measurement, whole groups at a time
    (the views of one photo stay together); None when `fraction` is 0 or the data is too small to split."""
    import torch  # here, not above: the CLI's parser reads EVAL_SPLIT without importing torch

    groups = data.groups if data.groups is not None else torch.arange(len(data))
    ids = torch.unique(groups)
    held = max(1, round(fraction * len(ids))) if fraction > 0 else 0
    if held == 0 or len(ids) < MIN_SPLIT_GROUPS or held >= len(ids):
        return None
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    is_held = torch.isin(groups, order[:held])
    what = "groups" if data.groups is not None else "samples"
    fit = data.subset(
        torch.nonzero(~is_held).flatten(), f"{data.description}, {len(ids) - held} of {len(ids)} {what} (fit)"
    )
    measured = data.subset(
        torch.nonzero(is_held).flatten(),
        f"{data.description}, {held} of {len(ids)} {what} held out (seed {seed})",
        seed,
    )
    return fit, measured
