"""--device and device= (issue 14): every stage runs where the model is; on a machine without a GPU, cpu and
auto give the plan no --device gives, and a GPU that is not visible is refused in one line (exit 2).
The CUDA paths themselves are checked by reports/gpu_check.py on a machine with a GPU."""

import json

import pytest
import torch

import mpq
from mpq.device import resolve_device
from mpq.errors import MpqError
from tests.helpers import USER_MODELS, mlp_data, run_cli
from tests.user_models import mlp

MLP = f"{USER_MODELS}:mlp"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without a GPU")


def _search(tmp_path, capsys, name: str, *device: str) -> dict:
    out = tmp_path / name
    status, _, err = run_cli(
        capsys,
        "search",
        "--model",
        MLP,
        "--data",
        tmp_path / "d.npz",
        "--budget",
        "1KB",
        "--out",
        out,
        "--no-cache",
        "--quiet",
        *device,
    )
    assert status == 0, err
    return json.loads((out / "plan.json").read_text())


def test_cpu_and_auto_give_the_plan_of_no_device(tmp_path, capsys):
    mlp_data(tmp_path / "d.npz")
    plain = _search(tmp_path, capsys, "plain")
    for device in (["--device", "cpu"], ["--device", "auto"]):
        plan = _search(tmp_path, capsys, device[1], *device)
        assert plan["layers"] == plain["layers"], device
        assert plan["predicted"] == pytest.approx(plain["predicted"]), device


def test_api_device_cpu(tmp_path):
    mlp_data(tmp_path / "d.npz")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    model = mlp()
    plain = mpq.search(model, (x, y), "1KB", cache_dir=False, progress=False)
    on_cpu = mpq.search(model, (x, y), "1KB", cache_dir=False, progress=False, device="cpu")
    assert {n: lp.weight_bits for n, lp in on_cpu.plan.layers.items()} == {
        n: lp.weight_bits for n, lp in plain.plan.layers.items()
    }
    assert on_cpu.report.plan.kl_to_fp32 == pytest.approx(plain.report.plan.kl_to_fp32)
    quantized = mpq.quantize_(model, on_cpu.plan, (x, y), cache_dir=False, device=torch.device("cpu"))
    assert next(quantized.parameters()).device.type == "cpu"


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(None, mlp()) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MpqError, match=r"^device='tpu' is not a device to run on: use cpu, cuda, cuda:N or auto$"):
        resolve_device("tpu", label="device=")
    with pytest.raises(MpqError, match="is not a device to run on"):
        resolve_device(3, label="device=")


@NO_GPU
def test_api_refuses_cuda_without_a_gpu():
    x = torch.randn(8, 6)
    for verb in (
        lambda: mpq.analyze(mlp(), x, device="cuda", cache_dir=False),
        lambda: mpq.search(mlp(), x, "1KB", device="cuda:1", cache_dir=False),
    ):
        with pytest.raises(MpqError, match=r"no CUDA device is visible here .*; use device='cpu'$"):
            verb()


@NO_GPU
@pytest.mark.parametrize("command", ["sensitivity", "verify", "export", "profile"])
def test_cli_refuses_cuda_without_a_gpu(tmp_path, capsys, command):
    mlp_data(tmp_path / "d.npz")
    if command in ("verify", "export"):
        _search(tmp_path, capsys, "s")
    rest = {
        "sensitivity": ["--no-plot"],
        "verify": [tmp_path / "s" / "plan.json", "--out", tmp_path / "v"],
        "export": [tmp_path / "s" / "plan.json", "--out", tmp_path / "m.mpq"],
        "profile": ["--out", tmp_path / "t.csv"],
    }[command]
    status, out, err = run_cli(capsys, command, *rest, "--model", MLP, "--data", tmp_path / "d.npz", "--device", "cuda")
    assert status == 2 and out == ""
    assert (
        err.strip()
        == "mpq: error: --device cuda: no CUDA device is visible here (torch.cuda.is_available() is False); use --device cpu"
    )
