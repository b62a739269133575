"""Data for calibration, sensitivity and evaluation: inputs `x` and optional integer labels `y`.

Several named inputs (a transformers model's input_ids, attention_mask, ...) are one tensor `x` with the
inputs stacked along dimension 1 and their names in `input_names` (mpq.inputs.adapter calls the model
with them by name); `named_inputs` builds that from a dict."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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
    input_names: tuple[str, ...] = ()  # several named inputs stacked along dimension 1 of x
    groups: torch.Tensor | None = (
        None  # per sample, what it was cut from (a photo's views): split by group, never within
    )
    held_out_seed: int | None = None  # set on the part mpq.inputs.split.held_out_split held out, with its seed
    # (tensors and their in-place versions, digest): fingerprint() hashes the data once, again only when it changed
    _digest: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or (self.y is not None and not isinstance(self.y, torch.Tensor)):
            raise MpqError(
                f"data x (and y) must be tensors, not {type(self.x).__name__}: build mpq.Dataset(x=torch.tensor(...), "
                "y=...)"
            )
        if self.x.dim() < 2:
            raise MpqError(
                f"data x has shape {tuple(self.x.shape)}: it needs a sample dimension first and at least one feature "
                "dimension"
            )
        if len(self.x) == 0:
            raise MpqError(
                "the data holds no samples: give at least a few inputs (mpq calibrates and measures on them)"
            )
        if self.x.is_floating_point() and not torch.isfinite(self.x).all():
            raise MpqError("data x contains NaN or Inf: clean or drop those samples first")
        check_magnitude(self.x)
        if self.y is not None:
            if self.y.dim() != 1 or len(self.y) != len(self.x):
                raise MpqError(
                    f"labels y have shape {tuple(self.y.shape)}: give one integer label per sample ({len(self.x)})"
                )
            if self.y.is_floating_point() or self.y.dtype == torch.bool or self.y.is_complex():
                raise MpqError(f"labels y must be integers (class indices), not {self.y.dtype}")
            if len(self.y) and int(self.y.min()) < 0:
                raise MpqError(
                    f"labels y hold {int(self.y.min())}: labels are class indices from 0 up; drop y to use the "
                    "model's own predictions"
                )
            self.y = self.y.long()
        self.input_names = tuple(self.input_names)
        if self.groups is not None and (
            not isinstance(self.groups, torch.Tensor) or self.groups.shape != (len(self.x),)
        ):
            raise MpqError(f"data groups must be a tensor of one group id per sample ({len(self.x)})")
        if self.input_names and (self.x.dim() < 2 or self.x.shape[1] != len(self.input_names)):
            raise MpqError(
                f"data x of shape {tuple(self.x.shape)} does not hold the {len(self.input_names)} named inputs "
                f"{', '.join(self.input_names)} along dimension 1: build it with mpq.inputs.data.named_inputs"
            )

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        """(x, y or None) slices in order."""
        for start in range(0, len(self.x), batch_size):
            stop = start + batch_size
            yield self.x[start:stop], None if self.y is None else self.y[start:stop]

    def subset(self, indices: torch.Tensor, description: str, held_out_seed: int | None = None) -> "Dataset":
        take = lambda t: None if t is None else t[indices.to(t.device)]  # noqa: E731
        return Dataset(
            x=self.x[indices],
            y=take(self.y),
            description=description,
            input_names=self.input_names,
            groups=take(self.groups),
            held_out_seed=held_out_seed,
        )

    def to(self, device) -> Dataset:
        """This data with x and y on `device` (itself when they are there already); groups stay on the CPU."""
        if self.x.device == device and (self.y is None or self.y.device == device):
            return self
        y = None if self.y is None else self.y.to(device)
        moved = Dataset(
            x=self.x.to(device),
            y=y,
            description=self.description,
            input_names=self.input_names,
            groups=self.groups,
            held_out_seed=self.held_out_seed,
        )
        return moved._moved_from(self)

    def fingerprint(self) -> str:
        """data_fingerprint(self), computed once: kept while x and y are the same tensors, unchanged in place."""
        state = self._state()
        if self._digest is None or self._digest[0] != state:
            self._digest = (state, data_fingerprint(self))
        return self._digest[1]

    def _state(self) -> tuple:
        return tuple((id(t), t._version) for t in (self.x, self.y) if t is not None)

    def __setattr__(self, name: str, value) -> None:
        if name in ("x", "y", "input_names"):
            object.__setattr__(self, "_digest", None)  # new tensors: hash again
        object.__setattr__(self, name, value)

    def _moved_from(self, source: "Dataset") -> "Dataset":
        """Keep `source`'s digest (the same values elsewhere: the digest is the same on every device)."""
        if source._digest is not None and source._digest[0] == source._state():
            self._digest = (self._state(), source._digest[1])
        return self


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of the inputs' names, the tensors' shapes, dtypes and values (a full copy to the host)."""
    digest = hashlib.sha256()
    if data.input_names:
        digest.update(",".join(data.input_names).encode())
    for t in (data.x, data.y):
        if t is not None:
            digest.update(f"{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())  # the same key on every device
    return digest.hexdigest()


LABEL_KEYS = ("y", "labels", "label")


def named_inputs(inputs, source, y: torch.Tensor | None = None) -> Dataset:
    """A Dataset of several named inputs (e.g. {"input_ids": ..., "attention_mask": ...}), one shape and kind each.

    A key "labels" or "label" holding one integer per sample is taken as y (as a "y" would be)."""
    inputs = dict(inputs)
    for key in LABEL_KEYS:
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and y is None:
            y = inputs.pop(key)
    if not inputs:
        raise MpqError(f"{source} holds no inputs: give x, or named inputs such as input_ids and attention_mask")
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise MpqError(
                f"input {name!r} in {source} is a {type(value).__name__}: give every named input as a tensor"
            )
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    if len(set(shapes.values())) > 1:
        raise MpqError(
            f"the named inputs in {source} differ in shape ({', '.join(f'{n} {s}' for n, s in shapes.items())}): give "
            "inputs of one shape, e.g. padded to one length"
        )
    kinds = {t.is_floating_point() for t in inputs.values()}
    if len(kinds) > 1:
        raise MpqError(
            f"the named inputs in {source} mix floats and integers: give one kind (token ids and masks as integers)"
        )
    x = torch.stack([_as_input(t, source) for t in inputs.values()], dim=1)
    return Dataset(
        x=x, y=y, description=f"{source} ({len(x)} samples of {', '.join(inputs)})", input_names=tuple(inputs)
    )


def load_npz(path: Path) -> Dataset:
    try:
        arrays = np.load(path, allow_pickle=False)
        arrays = {name: arrays[name] for name in arrays.files}
    except Exception as exc:
        raise MpqError(
            f"cannot read {path} as a .npz file ({exc}): save it with numpy.savez(path, x=..., y=...)"
        ) from None
    tensors = {name: _tensor(a, name, path) for name, a in arrays.items()}
    if "x" not in tensors:
        return named_inputs(tensors, path)
    x = _as_input(tensors["x"], path)
    return Dataset(x=x, y=tensors.get("y"), description=f"{path} ({len(x)} samples)")


def _tensor(array: np.ndarray, name: str, path: Path) -> torch.Tensor:
    """A numeric array as a tensor; MpqError for strings, objects and other kinds torch cannot hold."""
    if array.dtype.kind not in "biuf":
        raise MpqError(
            f"array {name} in {path} holds {array.dtype} values: save numbers (floats for inputs, integers for token "
            "ids and labels)"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def check_magnitude(x: torch.Tensor) -> None:
    """Float inputs whose squares overflow float32 (or their own narrower float, e.g. 256 for float16), which
    activation ranges, errors and curvature products square, are one MpqError; NaN and Inf are checked apart."""
    if not x.is_floating_point() or not x.numel():
        return
    limit = min(torch.finfo(x.dtype).max, torch.finfo(torch.float32).max) ** 0.5
    peak = float(torch.nan_to_num(x.abs(), nan=0.0, posinf=0.0).max())
    if peak > limit:
        raise MpqError(
            f"data x holds values up to {peak:.3g}, and their squares overflow {x.dtype if limit < 1e19 else 'float32'}"
            f" (above {limit:.3g}): scale the data (e.g. normalize it) first"
        )


def _as_input(x: torch.Tensor, source) -> torch.Tensor:
    """Floats become float32; integers (token ids) stay int64, so embeddings receive them unchanged."""
    if x.is_floating_point():
        check_magnitude(x)  # before float64 values beyond float32 become Inf
        return x.float()
    if x.dtype == torch.bool or x.is_complex():
        raise MpqError(f"inputs x in {source} are {x.dtype}: give floats, or integers for token ids")
    return x.long()


def load_pt(path: Path) -> Dataset:
    """A torch.save'd dict {"x": tensor, "y": tensor (optional)}, read with weights_only=True."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MpqError(
            f"cannot read {path} as tensors ({type(exc).__name__}): save it with torch.save({{'x': x, 'y': y}}, path)"
        ) from None
    if isinstance(data, dict) and data and "x" not in data and all(isinstance(k, str) for k in data):
        return named_inputs(data, path)
    if not isinstance(data, dict) or not isinstance(data.get("x"), torch.Tensor):
        raise MpqError(f"{path} holds no tensor 'x': save it with torch.save({{'x': inputs, 'y': labels}}, path)")
    y = data.get("y")
    if y is not None and not isinstance(y, torch.Tensor):
        raise MpqError(f"'y' in {path} is a {type(y).__name__}: save integer labels as a tensor")
    return Dataset(x=_as_input(data["x"], path), y=y, description=f"{path} ({len(data['x'])} samples)")


def from_batches(batches, source: str) -> Dataset:
    """Concatenate an iterable (a DataLoader, a list, a generator) of `x` or `(x, y)` batches."""
    xs, ys = [], []
    for batch in batches:
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            x, y = batch
        elif isinstance(batch, (tuple, list)) and len(batch) == 1:
            x, y = batch[0], None
        else:
            x, y = batch, None
        if not isinstance(x, torch.Tensor) or (y is not None and not isinstance(y, torch.Tensor)):
            raise MpqError(
                f"{source} yields {type(batch).__name__} batches: yield tensors x or tuples (x, y) of tensors"
            )
        xs.append(x)
        ys.append(y)
    if not xs:
        raise MpqError(f"{source} yields no batches: give at least one batch of inputs")
    if any(y is None for y in ys) and any(y is not None for y in ys):
        raise MpqError(f"{source} yields labels for some batches only: give (x, y) for every batch, or x alone")
    try:
        x = torch.cat(xs)
    except RuntimeError:
        raise MpqError(
            f"{source} yields batches of different sample shapes ({tuple(xs[0].shape[1:])}, ...): give one shape"
        ) from None
    y = None if ys[0] is None else torch.cat(ys)
    return Dataset(x=_as_input(x, source), y=y, description=f"{source} ({len(x)} samples)")


def preprocess_imagenet(image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """EfficientNet-Lite's preprocessing: resize the short side to `resize` (bicubic), centre crop `size`, (x - 127) /
    128, CHW."""
    return five_crops(image, size, resize, crops="centre")[0]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocess_torchvision(image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform: Resize(256) bilinear, CenterCrop(224), ToTensor (x / 255),
    Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), CHW."""
    crop = five_crops(image, size, resize, crops="centre", resample="bilinear", scale=None)[0]
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1), torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    return (crop / 255.0 - mean) / std


def five_crops(
    image, size: int = 224, resize: int = 256, crops: str = "five", resample: str = "bicubic", scale=(127.0, 128.0)
) -> list[torch.Tensor]:
    """The centre (and, with crops="five", the four corner) crops of the resized image, CHW floats:
    (x - scale[0]) / scale[1], or the RGB values 0-255 as they are with scale=None."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    factor = resize / min(w, h)
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    image = image.resize((max(resize, round(w * factor)), max(resize, round(h * factor))), filters[resample])
    w, h = image.size
    corners = [((w - size) // 2, (h - size) // 2)]
    if crops == "five":
        corners += [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
    views = []
    for left, top in corners:
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
        array = array if scale is None else (array - scale[0]) / scale[1]
        views.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return views


TRANSFORMS = ("imagenet", "torchvision", "none")


def to_tensor(image) -> torch.Tensor:
    """The `none` transform: RGB values / 255 as float CHW, the image's own size."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _open_image(path: Path):
    """The decoded image; MpqError naming the file when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MpqError(f"cannot read image {path} ({type(exc).__name__}): remove or replace that file") from None


def load_image_folder(path: Path, transform: str = "imagenet") -> Dataset:
    """Images directly in `path` (unlabelled) or in class subfolders (labels = sorted folder index).

    transform "imagenet": EfficientNet-Lite's, resize 256 (bicubic), centre crop 224, (x - 127) / 128; "torchvision":
    torchvision's ImageNet evaluation transform (bilinear, mean/std normalization); "none": x / 255 as is.
    """

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if classes:
        files = [
            (f, label)
            for label, d in enumerate(classes)
            for f in sorted(d.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        files = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MpqError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {path}")
    if transform not in TRANSFORMS:
        raise MpqError(f"unknown transform {transform!r}: use {', '.join(TRANSFORMS)}")
    prepare = {"imagenet": preprocess_imagenet, "torchvision": preprocess_torchvision, "none": to_tensor}[transform]
    views = [prepare(_open_image(f)) for f, _ in files]
    if len({tuple(v.shape) for v in views}) > 1:
        raise MpqError(f"images in {path} differ in size: use --transform imagenet, or resize them to one size")
    x = torch.stack(views)
    y = torch.tensor([label for _, label in files]) if classes else None
    return Dataset(x=x, y=y, description=f"{path} ({len(x)} images)")
