"""The ranks of a torch.distributed job (started by torchrun), or one process.

    torchrun --nproc-per-node 2 -m mpq.cli.main sensitivity ...

Each rank runs the same command; `Ranks` gathers per-probe values from all ranks (gloo: mpq runs
its models on the CPU) and sends rank 0's reads to the others, so that all ranks hold the same
state. Only rank 0 prints, reads and writes the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import distributed as dist


@dataclass(frozen=True)
class Ranks:
    size: int = 1
    rank: int = 0

    @classmethod
    def current(cls) -> "Ranks":
        """The ranks of the initialized process group, else one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), dist.get_rank())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, values: np.ndarray) -> list[np.ndarray]:
        """Every rank's float64 vector (all the same length), in rank order, on every rank."""
        if self.size == 1:
            return [values]
        mine = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine)
        return [t.numpy() for t in everyone]

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join_from_environment() -> Ranks:
    """Joins the gloo process group that torchrun describes (WORLD_SIZE > 1), else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
    return Ranks.current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
