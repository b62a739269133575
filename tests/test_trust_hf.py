"""Issue 25, item 1: an hf: folder is data. A config asking for custom code, naming a class of another model,
or shapes its weights do not have is refused in one line before anything is built or allocated."""

import json
import time

import pytest
import torch

from tests.helpers import run_cli

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """An untrained tiny GPT-2 saved with save_pretrained (no tokenizer: the tests give token ids)."""
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _copy(gpt2, tmp_path, **changes):
    folder = tmp_path / "copy"
    folder.mkdir()
    config = json.loads((gpt2 / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((gpt2 / "model.safetensors").read_bytes())
    return folder


def _search(capsys, tmp_path, folder):
    import numpy as np

    np.savez(tmp_path / "ids.npz", input_ids=np.random.default_rng(0).integers(0, 64, (8, 8)))
    return run_cli(
        capsys, "search", "--model", f"hf:{folder}", "--data", tmp_path / "ids.npz", "--budget", "1MB",
        "--out", tmp_path / "o", "--no-cache", "--max-probes", "2", "--quiet",
    )  # fmt: skip


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"auto_map": {"AutoModel": "evil.EvilModel"}}, "custom code (auto_map), which mpq never runs"),
        ({"architectures": [42]}, '"architectures" must list class names'),
        ({"architectures": "GPT2LMHeadModel"}, '"architectures" must list class names'),
        ({"architectures": ["LlamaForCausalLM"]}, "names LlamaForCausalLM, a class for llama models"),
        ({"n_layer": 100_000}, "far larger than its weights"),
        ({"vocab_size": 10**12}, "but the weights hold [64, 16]"),
        ({"n_embd": 32}, "but the weights hold"),
        ({"n_inner": 4096}, "but the weights hold"),
    ],
)
def test_a_crafted_hf_config_is_refused_before_anything_is_built(gpt2, tmp_path, capsys, changes, words):
    folder = _copy(gpt2, tmp_path, **changes)
    marker = tmp_path / "marker"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    start = time.perf_counter()
    status, _, err = _search(capsys, tmp_path, folder)
    assert status == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert time.perf_counter() - start < 30 and not marker.exists() and not (tmp_path / "o").exists()


def test_the_saved_folder_itself_loads(gpt2, tmp_path, capsys):
    status, _, err = _search(capsys, tmp_path, gpt2)
    assert status == 0, err


@pytest.mark.parametrize("how", ["not json", "truncated header", "huge header", "deep"])
def test_a_damaged_safetensors_header_is_one_line(gpt2, tmp_path, capsys, how):
    folder = _copy(gpt2, tmp_path)
    weights = (folder / "model.safetensors").read_bytes()
    length = int.from_bytes(weights[:8], "little")
    header = {
        "not json": b"{" * length,
        "truncated header": weights[8 : 8 + length // 2],
        "huge header": None,
        "deep": b"[" * length,
    }[how]
    if how == "huge header":
        data = (10**15).to_bytes(8, "little") + weights[8:]
    else:
        data = len(header).to_bytes(8, "little") + header + weights[8 + length :]
    (folder / "model.safetensors").write_bytes(data)
    status, _, err = _search(capsys, tmp_path, folder)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "is not a safetensors file" in err, err


def test_a_tokenizer_asking_for_custom_code_is_refused(gpt2, tmp_path, capsys):
    folder = _copy(gpt2, tmp_path)
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    (tmp_path / "text.txt").write_text("some text " * 50)
    status, _, err = run_cli(
        capsys, "search", "--model", f"hf:{folder}", "--data", tmp_path / "text.txt", "--seq-len", "8",
        "--budget", "1MB", "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 2 and len(err.strip().splitlines()) == 1 and "custom code (auto_map)" in err, err
