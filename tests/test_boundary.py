"""The boundary is crossed once: in one default mpq.search the data is hashed once per part (fit and held out) and
the model is run once to check its outputs."""

import numpy as np
import torch

import mpq
import mpq.api.stages
import mpq.inputs.data
import mpq.inputs.prepare
from tests.helpers import USER_MODELS, run_cli
from tests.user_models import small_convnet


def counted(monkeypatch, module, name: str) -> list:
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_one_search_hashes_each_part_of_the_data_once_and_checks_the_model_once(monkeypatch, tmp_path):
    hashed = counted(monkeypatch, mpq.inputs.data, "data_fingerprint")
    checked = counted(monkeypatch, mpq.inputs.prepare, "_check_output")
    dims = counted(monkeypatch, mpq.api.stages, "output_dims")
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    result = mpq.search(
        small_convnet(), x, "20KB", probes=mpq.ProbeSettings(max_probes=2), cache_dir=tmp_path, progress=False
    )
    assert result.report.plan.n_eval == 6  # a quarter held out: fit and held-out data
    assert sorted(len(args[0]) for args in hashed) == [6, 18]
    assert len(checked) == 1 and not dims


def test_a_dataset_hashes_again_only_after_it_changed(monkeypatch):
    hashed = counted(monkeypatch, mpq.inputs.data, "data_fingerprint")
    data = mpq.Dataset(x=torch.zeros(4, 3))
    first = data.fingerprint()
    assert data.to("cpu").fingerprint() == first and len(hashed) == 1
    data.x += 1  # in place
    assert data.fingerprint() != first and len(hashed) == 2
    data.x = torch.zeros(4, 3)
    assert data.fingerprint() == first and len(hashed) == 3


def test_the_mpq_search_command_hashes_each_part_once_and_checks_the_model_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MPQ_CACHE_DIR", str(tmp_path / "cache"))
    hashed = counted(monkeypatch, mpq.inputs.data, "data_fingerprint")
    checked = counted(monkeypatch, mpq.inputs.prepare, "_check_output")
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "x.npz", x=x.numpy())
    args = ("search", "--model", f"{USER_MODELS}:small_convnet", "--data", tmp_path / "x.npz", "--budget", "20KB")
    status, _, err = run_cli(capsys, *args, "--max-probes", "2", "--out", tmp_path / "out")
    assert status == 0, err
    assert sorted(len(args[0]) for args in hashed) == [6, 18] and len(checked) == 1
