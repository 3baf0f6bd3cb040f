"""Hugging Face ``config.json`` ↔ ``ModelConfig`` for GPT-2, Llama, Qwen2 and Mistral.

Reads both transformers-5 files (``rope_parameters``) and older ones (``rope_theta`` /
``rope_scaling``); rejects what irl_jax does not implement with an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from irl_jax.models.config import ModelConfig, RopeScaling

# HF architecture name -> (our architecture, checkpoint kind).
ARCHITECTURES = {
    "GPT2LMHeadModel": ("gpt2", "causal_lm"),
    "LlamaForCausalLM": ("llama", "causal_lm"),
    "Qwen2ForCausalLM": ("qwen2", "causal_lm"),
    "MistralForCausalLM": ("mistral", "causal_lm"),
    "GPT2ForSequenceClassification": ("gpt2", "reward_model"),
    "LlamaForSequenceClassification": ("llama", "reward_model"),
    "Qwen2ForSequenceClassification": ("qwen2", "reward_model"),
    "MistralForSequenceClassification": ("mistral", "reward_model"),
}


def read_json(file: str) -> dict[str, Any]:
    """A JSON object from ``file``; a corrupt file is a ValueError naming it and what is wrong.

    Raises:
      ValueError: not UTF-8, not valid JSON, or not a JSON object.
    """
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{file}: not a UTF-8 text file (corrupt? {e.reason} at byte {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{file}: not valid JSON (truncated or corrupt? {e.msg}: line {e.lineno}, "
            f"column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got a {type(data).__name__}")
    return data


def read_config(path: str) -> dict[str, Any]:
    """The ``config.json`` of a local checkpoint directory.

    Raises:
      FileNotFoundError: no ``config.json``.
      ValueError: a ``config.json`` that is not a JSON object (the message names the file).
    """
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r} is not a Hugging Face checkpoint: no config.json")
    return read_json(file)


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Reads RoPE settings from ``rope_parameters`` (transformers 5) or ``rope_theta`` /
    ``rope_scaling`` (older files)."""
    params = dict(hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if not params:
        params = dict(hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 0.0)),
        high_freq_factor=float(params.get("high_freq_factor", 0.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 0)),
    )


def _sliding_window_from_hf(hf: dict[str, Any], architecture: str) -> int | None:
    if architecture == "mistral":
        return hf.get("sliding_window")
    if architecture == "qwen2":
        layer_types = hf.get("layer_types")
        if layer_types is not None:
            kinds = set(layer_types)
        else:
            sliding = hf.get("use_sliding_window", False)
            first = hf.get("max_window_layers", hf["num_hidden_layers"])
            kinds = {
                "sliding_attention" if sliding and i >= first else "full_attention"
                for i in range(hf["num_hidden_layers"])
            }
        if kinds == {"full_attention"}:
            return None
        if kinds == {"sliding_attention"}:
            return hf["sliding_window"]
        raise ValueError(
            f"qwen2 config mixes sliding and full attention layers ({sorted(kinds)}); "
            "irl_jax supports one attention kind for all layers"
        )
    return None


def _as_tuple(ids: Any) -> tuple[int, ...]:
    if ids is None:
        return ()
    return tuple(ids) if isinstance(ids, list | tuple) else (int(ids),)


def _fields_from_hf(hf: dict[str, Any], architecture: str) -> dict[str, Any]:
    """``ModelConfig`` fields of the network's shape (KeyError: a required entry is missing)."""
    if architecture == "gpt2":
        hidden = hf["n_embd"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            num_kv_heads=hf["n_head"],
            head_dim=hidden // hf["n_head"],
            intermediate_size=hf.get("n_inner") or 4 * hidden,
            max_position_embeddings=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=hf.get("activation_function", "gelu_new"),
            tie_word_embeddings=hf.get("tie_word_embeddings", True),
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
        )
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise ValueError(
                "gpt2 options scale_attn_by_inverse_layer_idx / "
                "reorder_and_upcast_attn are not supported"
            )
    else:
        heads = hf["num_attention_heads"]
        theta, scaling = _rope_from_hf(hf)
        attention_bias = hf.get("attention_bias", False)
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            activation=hf.get("hidden_act", "silu"),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=architecture == "qwen2" or attention_bias,
            o_bias=architecture == "llama" and attention_bias,
            mlp_bias=hf.get("mlp_bias", False),
            sliding_window=_sliding_window_from_hf(hf, architecture),
        )
    return fields


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> tuple[ModelConfig, str]:
    """``ModelConfig`` and checkpoint kind (``causal_lm`` / ``reward_model``) from a config dict.

    Raises:
      ValueError: an architecture irl_jax does not implement, or a missing entry, named in the
        message.
    """
    names = hf.get("architectures") or []
    known = [name for name in names if name in ARCHITECTURES]
    if not known:
        raise ValueError(
            f"unsupported architecture {names or hf.get('model_type')!r}; supported: "
            f"{sorted(ARCHITECTURES)}"
        )
    architecture, kind = ARCHITECTURES[known[0]]
    try:
        fields = _fields_from_hf(hf, architecture)
    except KeyError as e:
        raise ValueError(f"config.json lacks {e.args[0]!r}, needed by {known[0]}") from None
    fields.update(
        architecture=architecture,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
    )
    fields.update(overrides)
    return ModelConfig(**fields), kind


def config_to_hf(config: ModelConfig, kind: str = "causal_lm", num_labels: int = 1):
    """A ``transformers`` config object for ``config`` (``kind``: causal_lm / reward_model)."""
    import transformers

    cfg = config
    common = dict(
        vocab_size=cfg.vocab_size,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=(
            list(cfg.eos_token_ids)
            if len(cfg.eos_token_ids) > 1
            else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)
        ),
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        num_labels=num_labels,
    )
    if cfg.is_gpt2:
        hf = transformers.GPT2Config(
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_position_embeddings,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function=cfg.activation,
            **common,
        )
    else:
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling is not None:
            rope.update({k: v for k, v in dataclasses.asdict(cfg.rope_scaling).items() if v})
        fields = dict(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.norm_eps,
            hidden_act=cfg.activation,
            rope_parameters=rope,
            **common,
        )
        if cfg.architecture == "llama":
            if cfg.qkv_bias != cfg.o_bias:
                raise ValueError(
                    "llama's attention_bias covers q, k, v and o alike; this config "
                    f"has qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}"
                )
            hf = transformers.LlamaConfig(
                attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, **fields
            )
        elif cfg.architecture == "qwen2":
            hf = transformers.Qwen2Config(
                use_sliding_window=cfg.sliding_window is not None,
                sliding_window=cfg.sliding_window,
                max_window_layers=0,
                **fields,
            )
        else:
            hf = transformers.MistralConfig(sliding_window=cfg.sliding_window, **fields)
    prefix = {"gpt2": "GPT2", "llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
    head = "LMHeadModel" if cfg.is_gpt2 else "ForCausalLM"
    hf.architectures = [
        prefix[cfg.architecture] + (head if kind == "causal_lm" else "ForSequenceClassification")
    ]
    return hf
