"""`--model hf:DIR`: a transformers model saved with save_pretrained, loaded offline, and text data
tokenized by its own tokenizer.

The model class is the config's first `architectures` entry (else AutoModel), loaded with
local_files_only=True (nothing is downloaded), no remote code, float32 weights, eager attention (the
Hessian needs second derivatives, which SDPA lacks on the CPU). `--model-arg` takes `pooling=cls|mean|none`
and `output=FIELD` (mpq.inputs.adapter).

Text (`--data corpus.txt | corpus.jsonl [--seq-len N]`; N defaults to the model's context capped at 512
tokens, as llama.cpp's perplexity tool does):
    .txt    the whole file tokenized once and cut into windows of N tokens (the last partial one dropped):
            input_ids [windows, N], the usual way to measure a causal LM's perplexity
    .jsonl  one sample per line, {"text": ...} and optionally an integer "label": input_ids and
            attention_mask padded (or truncated) to N tokens
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mpq.errors import MpqError, first_line
from mpq.inputs.adapter import ModelAdapter
from mpq.inputs.data import Dataset, named_inputs
from mpq.inputs.hf_folder import check_fits, read_config, refuse_custom_code, weight_shapes

PREFIX = "hf:"
DEFAULT_SEQ_LEN = 512  # the longest default window: llama.cpp's perplexity tool's context
MAX_LABEL = 2**31 - 1
TEXT_SUFFIXES = (".txt", ".jsonl")
MODEL_ARGS = ("pooling", "output")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MpqError("--model hf:DIR needs the transformers package: pip install transformers") from None
    transformers.logging.set_verbosity_error()  # its notes and bars would break mpq's one-line messages
    transformers.logging.disable_progress_bar()
    return transformers


def load_pretrained(folder: "str | Path", model_args: dict | None = None) -> ModelAdapter:
    """The model in `folder` (see the module docstring), in eval mode, wrapped to name its inputs and output.
    Nothing in the folder runs as code, and its config is checked against its weights before anything is
    allocated (mpq.inputs.hf_folder). The model is mpq's own (`owned`): it is prepared in place (GPT-2's Conv1D
    layers made nn.Linear, no copy of the weights), so load it again for any other use."""
    folder = Path(folder)
    model_args = dict(model_args or {})
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise MpqError(
            f"--model-arg {unknown[0]} does not apply to hf: models: use pooling=cls|mean|none or output=FIELD"
        )
    names = read_config(folder).get("architectures") or [None]
    shapes = weight_shapes(folder)
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise MpqError(
            f"cannot read {folder}/config.json ({type(exc).__name__}): save the model again with save_pretrained"
        ) from None
    model_class = _model_class(transformers, names[0], config, folder)
    if shapes is not None:
        check_fits(lambda: _from_config(model_class, config), folder, shapes)
    try:
        model, info = model_class.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
        )
    except Exception as exc:
        first = first_line(exc)
        raise MpqError(
            f"cannot load the model in {folder} ({type(exc).__name__}: {first[:200]}): "
            "save it again with save_pretrained"
        ) from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise MpqError(
            f"{folder} lacks weights that {model_class.__name__} needs "
            f"({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''}), "
            "which transformers would initialize at random: save the whole model with save_pretrained"
        )
    pooling, field = model_args.get("pooling"), model_args.get("output")
    return ModelAdapter(model.eval(), pooling=pooling, field=field, folder=folder, owned=True)


def _model_class(transformers, name: str | None, config, folder: Path):
    """The transformers class config.json names (AutoModel when it names none transformers ships); MpqError
    when that class is for another kind of model than the config's model_type."""
    found = getattr(transformers, name, None) if name else None
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)):
        return transformers.AutoModel
    expected = getattr(found, "config_class", None)
    if isinstance(expected, type) and not isinstance(config, expected):
        raise MpqError(
            f"{folder}/config.json names {name}, a class for {getattr(expected, 'model_type', '?')} models, but its "
            f"model_type is {getattr(config, 'model_type', '?')}: save the model again with save_pretrained"
        )
    return found


def _from_config(model_class, config):
    """The model `config` describes, with no weights read (check_fits builds it on the meta device)."""
    if hasattr(model_class, "_from_config"):
        return model_class._from_config(config, attn_implementation="eager")
    return model_class.from_config(config, attn_implementation="eager", trust_remote_code=False)


def load_tokenizer(folder: Path):
    config = folder / "tokenizer_config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError, RecursionError):
        raise MpqError(
            f"cannot read {config} as JSON: save the tokenizer again with tokenizer.save_pretrained"
        ) from None
    if isinstance(settings, dict):
        refuse_custom_code(settings, config)
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception:
        raise MpqError(
            f"{folder} has no tokenizer, which text data needs: save one there with tokenizer.save_pretrained, "
            "or give token ids as .npz (input_ids, attention_mask)"
        ) from None


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings take (None when it does not say)."""
    config = getattr(getattr(model, "inner", model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def load_text(path: Path, model: nn.Module, seq_len: int | None) -> Dataset:
    """Text tokenized with the tokenizer saved beside an hf: model (see the module docstring)."""
    folder = getattr(model, "folder", None)
    if folder is None:
        raise MpqError(
            f"text data ({path.name}) is tokenized with the model's own tokenizer: give the model as "
            "--model hf:DIR, or token ids as .npz"
        )
    if not path.is_file():
        raise MpqError(f"data file {path} does not exist; check the path")
    longest = max_positions(model)
    if seq_len is None:
        seq_len = min(longest or DEFAULT_SEQ_LEN, DEFAULT_SEQ_LEN)
    if longest is not None and seq_len > longest:
        raise MpqError(
            f"--seq-len {seq_len} is longer than the model's maximum of {longest} positions: "
            f"give --seq-len {longest} or less"
        )
    tokenizer = load_tokenizer(folder)
    if path.suffix == ".txt":
        return _windows(path, tokenizer, seq_len)
    return _records(path, tokenizer, seq_len, per_token=_per_token(model))


def _per_token(model: nn.Module) -> bool:
    """Whether the model's output is one prediction per token (a language model's logits), to which one
    label per record does not apply."""
    name = type(getattr(model, "inner", model)).__name__
    return name.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForTokenClassification"))


def _windows(path: Path, tokenizer, seq_len: int) -> Dataset:
    ids = torch.tensor(tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"], dtype=torch.long)
    count = len(ids) // seq_len
    if count == 0:
        raise MpqError(
            f"{path} has {len(ids)} tokens, fewer than one window of --seq-len {seq_len}: "
            "give more text or a shorter --seq-len"
        )
    x = ids[: count * seq_len].reshape(count, seq_len)
    return named_inputs({"input_ids": x}, f"{path} ({count} windows of {seq_len} tokens)")


def _read_records(path: Path) -> tuple[list[str], list]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MpqError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    texts, labels = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise MpqError(f'line {number} of {path} is not JSON: give one object per line, {{"text": ...}}') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise MpqError(f'line {number} of {path} has no string "text": give one object per line, {{"text": ...}}')
        label = record.get("label")
        if label is not None and not (
            isinstance(label, int) and not isinstance(label, bool) and 0 <= label <= MAX_LABEL
        ):
            raise MpqError(
                f'line {number} of {path} has the "label" {str(label)[:40]}: labels are class indices 0, 1, ...'
            )
        texts.append(record["text"])
        labels.append(label)
    if not texts:
        raise MpqError(f'{path} holds no records: give one JSON object per line, {{"text": ...}}')
    return texts, labels


def _records(path: Path, tokenizer, seq_len: int, per_token: bool = False) -> Dataset:
    texts, labels = _read_records(path)
    with_labels = [label is not None for label in labels]
    if any(with_labels) and not all(with_labels):
        raise MpqError(f'some lines of {path} have a "label" and some do not: label every line, or none')
    if any(with_labels) and per_token:
        raise MpqError(
            f'{path} labels each record, but the model predicts every token (a language model): drop the "label"s '
            "(the loss then compares to the FP32 model's predictions), or give a sequence-classification model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    inputs = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
    y = torch.tensor(labels) if all(with_labels) else None
    return named_inputs(inputs, f"{path} ({len(texts)} records of {seq_len} tokens)", y=y)
