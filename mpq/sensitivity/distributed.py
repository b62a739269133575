"""The ranks of a torch.distributed job (started by torchrun), or one process.

    torchrun --nproc-per-node 2 -m mpq.cli.main sensitivity ...  [--device cuda]

Each rank runs the same command; `Ranks` gathers per-probe values from all ranks and sends rank 0's
reads to the others, so that all ranks hold the same state. Only rank 0 prints, reads and writes the
cache. The process group is gloo on the CPU, nccl with --device cuda (rank r's model on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import atexit
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
        mine = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(_collective_device())
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine)
        return [t.cpu().numpy() for t in everyone]

    def sum_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Each float64 array summed over the ranks (element-wise), on every rank."""
        if self.size == 1:
            return [np.asarray(a, dtype=np.float64) for a in arrays]
        sizes = [np.size(a) for a in arrays]
        flat = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])
        total = torch.from_numpy(flat).to(_collective_device())
        dist.all_reduce(total)
        parts = np.split(total.cpu().numpy(), np.cumsum(sizes)[:-1])
        return [part.reshape(np.shape(a)) for part, a in zip(parts, arrays)]

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _collective_device() -> torch.device:
    """Where the process group's tensors must be: this rank's GPU under nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def local_device(device: torch.device) -> torch.device:
    """This rank's device under torchrun: cuda:LOCAL_RANK when `device` is CUDA, else `device`."""
    if device.type != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        from mpq.errors import MpqError

        raise MpqError(
            f"torchrun's LOCAL_RANK {local} has no GPU: {torch.cuda.device_count()} visible; start at most that "
            "many processes per node"
        )
    return torch.device("cuda", local)


def join_from_environment(device: torch.device | None = None) -> Ranks:
    """Joins the process group that torchrun describes (WORLD_SIZE > 1): nccl when `device` is CUDA (this
    rank's GPU made the current one), gloo on the CPU; else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        # left to the interpreter's exit, gloo's threads can abort a rank that ends first ("terminate called
        # without an active exception"); leave, not destroy_process_group, which raises when the CLI has left
        atexit.register(leave)
    return Ranks.current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
