"""Issue 25, item 4: text data for an hf: model. --seq-len defaults to the model's context capped at 512;
a JSONL file that is not UTF-8, a line of 100,000-deep JSON, a label of 2**70 and labels for a language
model (which predicts every token) are each one line, exit 2."""

import pytest

from mpq.errors import MpqError
from mpq.inputs.specs import load_data_spec, load_model_spec
from tests import hf_models
from tests.helpers import run_cli

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """An untrained tiny GPT-2 (16 positions) beside a tokenizer trained on a little of pydoc's text."""
    root = tmp_path_factory.mktemp("text")
    text = hf_models.corpus()[:20000]
    tokenizer = hf_models.train_tokenizer(text)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=hf_models.VOCAB, n_positions=16)
    hf_models.save(transformers.GPT2LMHeadModel(config), tokenizer, root / "gpt2")
    (root / "t.txt").write_text(text[:4000])
    return root, load_model_spec(f"hf:{root / 'gpt2'}")


def test_seq_len_defaults_to_the_models_context(gpt2):
    root, model = gpt2
    data = load_data_spec(str(root / "t.txt"), model=model)
    assert data.x.shape[-1] == 16 and "windows of 16 tokens" in data.description


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"text": "caf\xe9"}\n', "is not UTF-8 text (byte 13)"),
        (b'{"text": "a", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line 1 of"),
        (b'{"text": "a", "label": 0}\n{"text": "b", "label": 1180591620717411303424}\n', "line 2 of"),
        (b'{"text": "a", "label": -1}\n', "labels are class indices"),
        (b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', "the model predicts every token"),
    ],
)
def test_bad_jsonl_is_one_line(gpt2, tmp_path, capsys, content, words):
    root, model = gpt2
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(MpqError, match=None) as caught:
        load_data_spec(str(tmp_path / "d.jsonl"), model=model, seq_len=8)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    status, _, err = run_cli(
        capsys, "search", "--model", f"hf:{root / 'gpt2'}", "--data", tmp_path / "d.jsonl", "--budget", "1MB",
        "--out", tmp_path / "o",
    )  # fmt: skip
    assert status == 2 and len(err.strip().splitlines()) == 1 and words in err, err
