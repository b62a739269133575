"""ONNX models in (`--model model.onnx`, mpq.inputs.onnx_model) and back out as the user's own graph with the plan
applied (`mpq export --format onnx`, mpq.export.onnx_user), run in ONNX Runtime against mpq's evaluator."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("onnx2torch") is None:  # imported by mpq itself: it needs a stand-in for torchvision
    pytest.skip("onnx2torch is not installed", allow_module_level=True)
ort = pytest.importorskip("onnxruntime")

from helpers import run_cli  # noqa: E402

from mpq.errors import MpqError  # noqa: E402
from mpq.export.onnx_user import run_user_onnx  # noqa: E402
from mpq.inputs.data import load_npz  # noqa: E402
from mpq.inputs.onnx_model import load_onnx  # noqa: E402
from mpq.inputs.prepare import as_prepared  # noqa: E402
from mpq.plan import Plan  # noqa: E402
from mpq.verify.measure import packed_for, packed_logits  # noqa: E402


class SmallCnn(nn.Module):
    """Conv -> BatchNorm -> depthwise conv -> BatchNorm -> pointwise conv -> pooled -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(12)
        self.pointwise = nn.Conv2d(12, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.depthwise_bn(self.depthwise(x)))
        return self.head(torch.relu(self.pointwise(x)).mean((2, 3)))


def _labelled_images(n: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a fixed random pattern plus noise: a task the small CNN learns in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 3, 1, 1, generator=patterns) + 0.5 * torch.randn(10, 3, 16, 16, generator=patterns)
    y = torch.randint(0, 10, (n,), generator=generator)
    return prototypes[y] + 0.5 * torch.randn(n, 3, 16, 16, generator=generator), y


def _small_cnn() -> nn.Module:
    """SmallCnn trained briefly on _labelled_images: confident logits and BatchNorm statistics of real data."""
    torch.manual_seed(0)
    model = SmallCnn()
    x, y = _labelled_images(100, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(25):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _export(model: nn.Module, path: Path, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 16, 16),),
            str(path),
            dynamo=False,
            do_constant_folding=False,  # BatchNormalization nodes stay in the graph
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_cnn")
    model = _small_cnn()
    x, y = _labelled_images()
    np.savez(folder / "data.npz", image=x.numpy(), y=y.numpy())  # keyed by the graph's input name
    return model, _export(model, folder / "cnn.onnx"), folder / "data.npz"


def test_the_onnx_graph_becomes_layers_named_after_its_nodes_with_batchnorm_folded(cnn_files):
    model, path, _ = cnn_files
    converted = load_onnx(path)
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(converted(x), model(x), atol=1e-5)
    prepared = as_prepared(str(path), load_npz(path.parent / "data.npz"))
    layers = {layer.name: layer.kind for layer in prepared.graph.layers}
    assert layers == {
        "stem/Conv": "conv2d",
        "depthwise/Conv": "depthwise_conv2d",
        "pointwise/Conv": "conv2d",
        "head/Gemm": "linear",
    }
    assert prepared.graph.folded_batchnorms == ["stem_bn/BatchNormalization", "depthwise_bn/BatchNormalization"]
    # a ModelProto works as the path does
    assert load_onnx(onnx.load(str(path)))(x).allclose(converted(x))


def test_search_verify_export_keeps_the_users_graph_and_onnxruntime_matches_the_evaluator(cnn_files, tmp_path, capsys):
    _, path, data_path = cnn_files
    out = tmp_path / "run"
    common = ["--model", path, "--data", data_path, "--no-cache", "--quiet"]
    status, stdout, stderr = run_cli(capsys, "search", "--budget", "1.4KB", "--out", out, *common)
    assert status == 0, stderr
    plan = Plan.load(out / "plan.json")
    assert set(plan.layers) == {"stem/Conv", "depthwise/Conv", "pointwise/Conv", "head/Gemm"}
    sqnr = (out / "report.md").read_text().split("## Per-layer SQNR")[1]  # the table, for ONNX models too
    assert all(f"| {name} |" in sqnr for name in plan.layers)
    status, _, stderr = run_cli(capsys, "verify", out / "plan.json", "--out", tmp_path / "verified", *common)
    assert status == 0, stderr
    assert json.loads((tmp_path / "verified" / "report.json").read_text())
    exported = tmp_path / "quantized.onnx"
    status, stdout, stderr = run_cli(
        capsys, "export", out / "plan.json", "--format", "onnx", "--out", exported, "--batch-size", 25, *common
    )
    assert status == 0, stderr
    user, written = onnx.load(str(path)), onnx.load(str(exported))
    assert [v.name for v in written.graph.input] == [v.name for v in user.graph.input] == ["image"]
    assert [v.name for v in written.graph.output] == [v.name for v in user.graph.output] == ["scores"]
    assert written.opset_import == user.opset_import
    names = {node.name for node in written.graph.node}
    assert {n.name for n in user.graph.node if n.op_type not in ("Identity", "Constant")} <= names
    ops = {node.name: node.op_type for node in written.graph.node}
    assert ops["/stem_bn/BatchNormalization"] == "Identity"  # folded into /stem/Conv
    assert ops["stem/Conv/weight/DequantizeLinear"] == "DequantizeLinear"
    assert not any(init.name == "stem.weight" for init in written.graph.initializer)
    # the evaluator's logits, with the plan applied exactly as export applied it
    data = load_npz(data_path)
    prepared, packed = packed_for(str(path), plan, data, 25, False, None)
    evaluator = packed_logits(prepared, packed, data, 25)
    assert (evaluator.argmax(1) == data.y).float().mean() > 0.9  # a model that learned its task
    # ONNX Runtime as deployed fuses QDQ into integer kernels, which round (e.g. the bias) differently
    runtime = run_user_onnx(exported, data.x[:, 0])
    assert (runtime.argmax(1) == evaluator.argmax(1)).float().mean().item() >= 0.995
    assert torch.allclose(runtime, evaluator, atol=0.02 * float(evaluator.abs().max()))
    # unfused, it computes the evaluator's numbers up to float rounding
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(exported), plain, providers=["CPUExecutionProvider"])
    unfused = torch.from_numpy(session.run(None, {"image": data.x[:, 0].numpy()})[0])
    assert torch.allclose(unfused, evaluator, atol=1e-5 * float(evaluator.abs().max()))
    quantized_inputs = [n for n in written.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized_inputs) == sum(1 for meta in packed.layers.values() if meta["act_bits"])


def _one_line_error(capsys, model, data) -> str:
    status, _, stderr = run_cli(capsys, "search", "--model", model, "--data", data, "--budget", "1KB", "--no-cache")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, stderr
    return lines[0]


def test_unsupported_operators_are_named_in_one_line(capsys, cnn_files):
    shipped = Path(ort.__file__).parent / "datasets" / "logreg_iris.onnx"  # onnxruntime's own scikit-learn model
    message = _one_line_error(capsys, shipped, cnn_files[2])
    assert "cannot take" in message and "ai.onnx.ml.LinearClassifier" in message and "ZipMap" in message


def test_missing_external_data_is_one_line(capsys, cnn_files, tmp_path):
    proto = onnx.load(str(cnn_files[1]))
    path = tmp_path / "external.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert load_onnx(path)(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    (tmp_path / "weights.bin").unlink()
    message = _one_line_error(capsys, path, cnn_files[2])
    assert "weights.bin" in message and "beside the .onnx file" in message
    with pytest.raises(MpqError, match="external data"):
        load_onnx(onnx.load(str(path), load_external_data=False))


def test_shapes_the_data_does_not_fix_are_one_line(capsys, cnn_files, tmp_path):
    fixed = _export(cnn_files[0], tmp_path / "batch_of_one.onnx", dynamic=False)  # torch.onnx.export's default
    message = _one_line_error(capsys, fixed, cnn_files[2])
    assert "takes input image of shape [1, 3, 16, 16]" in message and "does not fix it" in message
    np.savez(tmp_path / "flat.npz", image=np.zeros((8, 3, 16), dtype=np.float32))
    message = _one_line_error(capsys, cnn_files[1], tmp_path / "flat.npz")
    assert "[batch, 3, 16, 16]" in message and "[2, 3, 16]" in message
