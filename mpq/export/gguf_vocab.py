"""The tokenizer metadata of a GGUF file (tokenizer.ggml.*): copied from a reference GGUF, or built from a
transformers folder's byte-level BPE tokenizer as convert_hf_to_gguf.py's _set_vocab_gpt2 builds it:
the tokens by id ([PAD<i>] where the vocabulary has no id i), their types (normal, control for special tokens,
user-defined for other added tokens, unused for padding), the merges, and the special token ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, TokenType
from gguf.gguf_writer import GGUFValue

from mpq.errors import MpqError

TOKENIZER_PREFIX = "tokenizer."


def reference_metadata(path: "str | Path", vocab_size: int) -> dict[str, GGUFValue]:
    """Every tokenizer.* key of the GGUF file at `path`, with its GGUF type; its tokens must be `vocab_size`."""
    path = Path(path)
    if not path.is_file():
        raise MpqError(f"--gguf-metadata {path} is not a file: give a .gguf file of the same model (its tokenizer)")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError, struct or numpy errors on a file that is not GGUF
        raise MpqError(f"cannot read {path} as GGUF ({type(exc).__name__}): give a .gguf file") from None
    out = {}
    for name, field in reader.fields.items():
        if not name.startswith(TOKENIZER_PREFIX):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        out[name] = GGUFValue(field.contents(), vtype, sub_type)
    tokens = out.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.value) != vocab_size:
        count = "no" if tokens is None else f"{len(tokens.value):,}"
        raise MpqError(f"{path} holds {count} tokens and the model {vocab_size:,}: give a GGUF file of the same model")
    return out


def _merges(tokenizer_json: dict) -> list[str]:
    merges = tokenizer_json.get("model", {}).get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def tokenizer_metadata(folder: "str | Path | None", vocab_size: int) -> dict[str, GGUFValue]:
    """tokenizer.ggml.* of the folder's byte-level BPE tokenizer (tokenizer.json), `vocab_size` tokens."""
    path = Path(folder) / "tokenizer.json" if folder else None
    if path is None or not path.is_file():
        raise MpqError(
            "the GGUF file needs the tokenizer: give the model as hf:DIR with its tokenizer.json, or "
            "--gguf-metadata FILE.gguf (a GGUF file of the same model)"
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE":
        raise MpqError(f"{path} is not a BPE tokenizer: give --gguf-metadata FILE.gguf (a GGUF file of the model)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added, special = set(tokenizer.get_added_vocab()), set(tokenizer.all_special_tokens)
    tokens, types = [], []
    for i in range(max(vocab_size, len(reverse))):
        token = reverse.get(i)
        tokens.append(f"[PAD{i}]" if token is None else token)
        kind = TokenType.UNUSED if token is None else TokenType.CONTROL if token in special else TokenType.NORMAL
        types.append(TokenType.USER_DEFINED if token in added and token not in special else kind)
    metadata = {
        "tokenizer.ggml.model": GGUFValue("gpt2", GGUFValueType.STRING),
        "tokenizer.ggml.pre": GGUFValue("default", GGUFValueType.STRING),
        "tokenizer.ggml.tokens": GGUFValue(tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.token_type": np.array([int(t) for t in types], dtype=np.int32),
        "tokenizer.ggml.merges": GGUFValue(_merges(spec), GGUFValueType.ARRAY, GGUFValueType.STRING),
    }
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unknown": tokenizer.unk_token_id,
        "padding": tokenizer.pad_token_id,
    }
    metadata |= {
        f"tokenizer.ggml.{k}_token_id": GGUFValue(v, GGUFValueType.UINT32) for k, v in ids.items() if v is not None
    }
    return metadata
