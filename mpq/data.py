"""Data for calibration, sensitivity and evaluation: inputs `x` and optional integer labels `y`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpq.errors import MpqError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Dataset:
    """Inputs (first dimension = samples) and, when known, integer class labels."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.x.dim() < 2:
            raise MpqError(f"data x has shape {tuple(self.x.shape)}: it needs a sample dimension first and at least one feature dimension")
        if self.x.is_floating_point() and not torch.isfinite(self.x).all():
            raise MpqError("data x contains NaN or Inf: clean or drop those samples first")
        if self.y is not None:
            if self.y.dim() != 1 or len(self.y) != len(self.x):
                raise MpqError(f"labels y have shape {tuple(self.y.shape)}: give one integer label per sample ({len(self.x)})")
            if self.y.is_floating_point():
                raise MpqError("labels y must be integers (class indices), not floats")
            self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        """(x, y or None) slices in order."""
        for start in range(0, len(self.x), batch_size):
            stop = start + batch_size
            yield self.x[start:stop], None if self.y is None else self.y[start:stop]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for t in (self.x, self.y):
            if t is not None:
                digest.update(f"{tuple(t.shape)}:{t.dtype}".encode())
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_npz(path: Path) -> Dataset:
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MpqError(f"cannot read {path} as a .npz file ({exc}): save it with numpy.savez(path, x=..., y=...)") from None
    if "x" not in arrays:
        raise MpqError(f"{path} has no array named 'x': save inputs as x (and optional integer labels as y)")
    x = torch.from_numpy(np.ascontiguousarray(arrays["x"]))
    if not x.is_floating_point():
        x = x.float()
    y = torch.from_numpy(np.ascontiguousarray(arrays["y"])) if "y" in arrays else None
    return Dataset(x=x.float(), y=y, description=f"{path} ({len(x)} samples)")


def preprocess_imagenet(image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """Resize the short side to `resize` (bicubic), centre crop `size`, (x - 127) / 128, CHW."""
    return five_crops(image, size, resize, crops="centre")[0]


def five_crops(image, size: int = 224, resize: int = 256, crops: str = "five") -> list[torch.Tensor]:
    """The centre (and, with crops="five", the four corner) crops of the resized image, CHW floats."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    corners = [((w - size) // 2, (h - size) // 2)]
    if crops == "five":
        corners += [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
    views = []
    for left, top in corners:
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
        views.append(torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1).contiguous())
    return views


def load_image_folder(path: Path) -> Dataset:
    """Images directly in `path` (unlabelled) or in class subfolders (labels = sorted folder index)."""
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if classes:
        files = [(f, label) for label, d in enumerate(classes) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MpqError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {path}")
    x = torch.stack([preprocess_imagenet(Image.open(f)) for f, _ in files])
    y = torch.tensor([label for _, label in files]) if classes else None
    return Dataset(x=x, y=y, description=f"{path} ({len(x)} images)")
