"""Tiny random Hugging Face checkpoints (PyTorch classes) for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 97


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def gpt2_config(**kw) -> transformers.GPT2Config:
    fields = dict(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.1,
    )
    fields.update(kw)
    return transformers.GPT2Config(**fields)


def llama_config(**kw) -> transformers.LlamaConfig:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.1,
    )
    fields.update(kw)
    return transformers.LlamaConfig(**fields)


def qwen2_config(**kw) -> transformers.Qwen2Config:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=[2, 3],
        pad_token_id=0,
        initializer_range=0.1,
    )
    fields.update(kw)
    return transformers.Qwen2Config(**fields)


def mistral_config(**kw) -> transformers.MistralConfig:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.1,
    )
    fields.update(kw)
    return transformers.MistralConfig(**fields)


def make_model(model_cls, config, seed: int = 0):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    # Non-trivial norms and biases (HF inits them to 1 / 0).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save(model, path) -> str:
    model.save_pretrained(str(path))
    return str(path)


def padded_batch(
    rng: np.random.Generator,
    lengths: list[int],
    total: int,
    side: str,
    vocab: int = VOCAB,
    pad_id: int = 0,
):
    """Token ids (pad ids in the padding) and a mask, padded on ``side``."""
    ids = np.full((len(lengths), total), pad_id, np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for row, n in enumerate(lengths):
        span = slice(total - n, total) if side == "left" else slice(0, n)
        ids[row, span] = rng.integers(4, vocab, n)
        mask[row, span] = 1
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions(mask), dtype=torch.long),
        )
    return out.logits.float().numpy()
