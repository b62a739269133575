"""Where the model runs: `--device cpu|cuda|cuda:N|auto` and the verbs' `device=`, checked once at the boundary.

Every stage runs where the prepared model is (mpq.inputs.prepare.as_prepared moves a copy there, and the
data with it). Tensors mpq makes itself are made on the device of the data or weights they meet;
random draws come from CPU generators and are then moved (`drawn_on`), so a CPU and a CUDA run draw
the same probes. What leaves mpq (plans, reports, caches, packed tensors) is on the CPU and does not
depend on the device beyond float tolerance; cache keys never include it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mpq.errors import MpqError

if TYPE_CHECKING:
    import torch

DEVICE_WORDS = "cpu, cuda, cuda:N or auto"
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")


def model_device(model) -> torch.device:
    """Where `model`'s parameters (else buffers) are; the CPU for a module without either."""
    import torch  # here: the CLI's parser reads DEVICE_PATTERN without importing torch

    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def resolve_device(spec, model=None, label: str = "device") -> torch.device:
    """The torch.device that `spec` names: None (where `model`'s parameters are, else the CPU), "cpu",
    "cuda", "cuda:N", "auto" (cuda when torch.cuda.is_available(), else cpu) or a torch.device.
    MpqError (one sentence, naming `label`, e.g. "--device" or "device=") for anything else or for a GPU
    that is not visible."""
    import torch

    if spec is None:
        return model_device(model) if model is not None else torch.device("cpu")
    shown = f"{label} {spec}" if label.startswith("--") else f"{label}{spec!r}"
    if isinstance(spec, torch.device):
        text = str(spec)
    elif isinstance(spec, str):
        text = spec.strip().lower()
    else:
        raise MpqError(f"{shown} is not a device to run on: use {DEVICE_WORDS}")
    if not DEVICE_PATTERN.match(text):
        raise MpqError(f"{shown} is not a device to run on: use {DEVICE_WORDS}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    cpu = "--device cpu" if label.startswith("--") else "device='cpu'"
    if not torch.cuda.is_available():
        raise MpqError(f"{shown}: no CUDA device is visible here (torch.cuda.is_available() is False); use {cpu}")
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise MpqError(
            f"{shown}: only {count} CUDA device{'s are' if count != 1 else ' is'} visible (cuda:0 to "
            f"cuda:{count - 1}); use one of them or {cpu}"
        )
    return torch.device("cuda", index)


def drawn_on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn from a CPU generator, moved to `device` (the same draws on every device)."""
    return t if t.device == device else t.to(device)
