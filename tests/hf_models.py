"""Small transformers models built from configs (nothing downloaded), trained briefly on text Python ships
(pydoc's help topics), saved with save_pretrained beside a byte-level BPE tokenizer trained on that text."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 384
SEQ = 32


def corpus() -> str:
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def train_tokenizer(text: str):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [text],
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<pad>", "<mask>"],
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<|endoftext|>",
    )


def token_windows(tokenizer, text: str, seq: int = SEQ) -> torch.Tensor:
    ids = torch.tensor(tokenizer(text)["input_ids"])
    return ids[: len(ids) // seq * seq].reshape(-1, seq)


def _train(model, batches, steps: int, loss_of, lr: float = 3e-3) -> float:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = None
    for step in range(steps):
        batch = batches[torch.randint(0, len(batches), (16,))]
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss)


def causal_lm(kind: str, tokenizer, windows: torch.Tensor, steps: int = 150, intermediate_size: int = 128):
    """A 2-layer GPT-2 (Conv1D layers, tied LM head) or LLaMA (RMSNorm, SiLU gates, rotary) causal LM."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    special = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, **special))
    else:
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=intermediate_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            **special,
        )
        model = LlamaForCausalLM(config)
    _train(model, windows, steps, lambda m, b: m(input_ids=b, labels=b).loss)
    return model


def bert_encoder(tokenizer, windows: torch.Tensor, steps: int = 150):
    """A 2-layer BERT trained as a masked LM; returned without its head (a BertModel: hidden states out)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForMaskedLM(config)

    def masked_loss(m, batch):
        mask = torch.rand(batch.shape, generator=torch.Generator().manual_seed(int(batch.sum()))) < 0.15
        labels = torch.where(mask, batch, torch.full_like(batch, -100))
        return m(
            input_ids=torch.where(mask, torch.full_like(batch, tokenizer.mask_token_id), batch), labels=labels
        ).loss

    _train(model, windows, steps, masked_loss)
    encoder = BertModel(config)  # with its pooler (which the masked LM lacks), so that the saved folder is complete
    encoder.load_state_dict(model.bert.state_dict(), strict=False)
    return encoder.eval()


def save(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
