"""Shared helpers: run the `mpq` command in this process (the same code path as the console script)."""

from pathlib import Path

import numpy as np
import torch

from mpq.cli.main import main

TESTS = Path(__file__).parent
USER_MODELS = str(TESTS / "user_models.py")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def mlp_data(path: Path, n: int = 32, features: int = 6, labels: bool = True, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator).numpy()
    arrays = {"x": x}
    if labels:
        arrays["y"] = torch.randint(0, 4, (n,), generator=generator).numpy()
    np.savez(path, **arrays)
    return path
