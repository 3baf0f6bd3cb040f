"""``ModelConfig``: one frozen description for every decoder in the family.

GPT-2 and the Llama family (Llama, Qwen2, Mistral) differ only in a handful of switches, derived
from ``architecture``: positions (learned vs RoPE), norm (LayerNorm vs RMSNorm), MLP (GELU vs
SwiGLU), fused QKV, and which projections carry biases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from irl_jax.models.lora import LoraConfig

ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral")
ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu")
ROPE_TYPES = ("default", "linear", "llama3")
# Rematerialization of each block in the backward pass, by name: what the forward keeps.
# ``full`` keeps only the block's inputs (and ``nothing_saveable`` likewise, as a policy);
# ``dots_saveable`` keeps every matmul output; ``dots_with_no_batch_dims_saveable`` the weight
# matmuls but not attention's; ``offload_dots`` moves those to pinned host memory (where the
# backend has it: GPU, TPU).
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "nothing_saveable",
    "offload_dots",
)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (``rope_type`` in ``ROPE_TYPES``); fields unused by a type are 0."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 0.0
    high_freq_factor: float = 0.0
    original_max_position_embeddings: int = 0

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                f"expected one of {ROPE_TYPES}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder; hashable, so it can be a static jit argument.

    Attributes:
      architecture: one of ``ARCHITECTURES``.
      vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size:
        shapes; ``num_heads`` must be a multiple of ``num_kv_heads`` (grouped-query attention).
      max_position_embeddings: size of GPT-2's position table; RoPE models' nominal context.
      norm_eps: LayerNorm / RMSNorm epsilon.
      activation: MLP activation (``gelu_new`` for GPT-2, ``silu`` for SwiGLU models).
      rope_theta, rope_scaling: RoPE base and scaling (Llama family only).
      tie_word_embeddings: the LM head reuses the token embedding.
      qkv_bias, o_bias, mlp_bias: which projections have biases.
      sliding_window: Mistral's attention window (``None`` = full causal attention).
      bos_token_id, eos_token_ids, pad_token_id: special ids from the checkpoint (may be None).
      dtype: compute dtype (``"float32"`` or ``"bfloat16"``); log-probs are always fp32.
      param_dtype: storage dtype of params.
      scan_layers: run the blocks with ``nn.scan`` (params stacked on a leading ``layers`` axis).
      remat: rematerialization policy of each block (``REMAT_POLICIES``); ``True`` / ``False``
        (older configs) mean ``full`` / ``none``.
      lora: LoRA / QLoRA of the Dense layers (``irl_jax.models.lora``), or None.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-5
    activation: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: str | bool = "none"
    lora: LoraConfig | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is not supported; expected one of "
                f"{ARCHITECTURES}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; expected one of {ACTIVATIONS}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.is_gpt2 and self.num_kv_heads != self.num_heads:
            raise ValueError(
                "gpt2 has no grouped-query attention: num_kv_heads must equal num_heads"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name}={getattr(self, name)!r}; expected float32 or bfloat16")
        if isinstance(self.remat, bool) or self.remat in ("True", "False", "true", "false"):
            full = self.remat in (True, "True", "true")
            object.__setattr__(self, "remat", "full" if full else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if isinstance(self.eos_token_ids, list):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

    @property
    def is_gpt2(self) -> bool:
        return self.architecture == "gpt2"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def remat_policy(self) -> Any:
        """The ``jax.checkpoint`` policy of ``remat`` (None: save nothing but the inputs)."""
        policies = jax.checkpoint_policies
        return {
            "full": None,
            "dots_saveable": policies.dots_saveable,
            "dots_with_no_batch_dims_saveable": policies.dots_with_no_batch_dims_saveable,
            "nothing_saveable": policies.nothing_saveable,
            "offload_dots": policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
        }.get(self.remat)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _gpt2(vocab_size: int, hidden: int, layers: int, heads: int, positions: int) -> ModelConfig:
    return ModelConfig(
        architecture="gpt2",
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=positions,
        activation="gelu_new",
        tie_word_embeddings=True,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
    )


def _llama(
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    kv: int,
    mlp: int,
    positions: int,
    architecture: str = "llama",
    **kw: Any,
) -> ModelConfig:
    return ModelConfig(
        architecture=architecture,
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=mlp,
        max_position_embeddings=positions,
        activation="silu",
        **kw,
    )


# Named architectures for experiments on CPU; vocab sizes are overridden by the tokenizer.
PRESETS: dict[str, ModelConfig] = {
    "gpt2-tiny": _gpt2(vocab_size=512, hidden=64, layers=2, heads=4, positions=256),
    "gpt2-small-cpu": _gpt2(vocab_size=512, hidden=128, layers=4, heads=4, positions=512),
    "gpt2-d256": _gpt2(vocab_size=8192, hidden=256, layers=4, heads=4, positions=1024),
    "gpt2-d768": _gpt2(vocab_size=8192, hidden=768, layers=6, heads=12, positions=1024),
    "gpt2-124m": _gpt2(vocab_size=50257, hidden=768, layers=12, heads=12, positions=1024),
    "llama-tiny": _llama(
        512, hidden=64, layers=2, heads=4, kv=2, mlp=176, positions=512, tie_word_embeddings=True
    ),
    "llama-small-cpu": _llama(
        512, hidden=128, layers=4, heads=4, kv=2, mlp=352, positions=1024, tie_word_embeddings=True
    ),
}

# The real shapes of public checkpoints (their config.json), for planning memory on accelerators
# (``python -m irl_jax.plan``) and random-init runs at full size. ``gpt2-124m`` is GPT-2 small.
_LLAMA3_ROPE = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
_QWEN2 = dict(architecture="qwen2", qkv_bias=True, norm_eps=1e-6, rope_theta=1e6)
PRESETS.update(
    {
        "llama-3.2-1b": _llama(
            128256,
            hidden=2048,
            layers=16,
            heads=32,
            kv=8,
            mlp=8192,
            positions=131072,
            rope_theta=500000.0,
            rope_scaling=_LLAMA3_ROPE,
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_ids=(128001,),
        ),
        "llama-3-8b": _llama(
            128256,
            hidden=4096,
            layers=32,
            heads=32,
            kv=8,
            mlp=14336,
            positions=8192,
            rope_theta=500000.0,
            bos_token_id=128000,
            eos_token_ids=(128001,),
        ),
        "qwen2.5-0.5b": _llama(
            151936,
            hidden=896,
            layers=24,
            heads=14,
            kv=2,
            mlp=4864,
            positions=32768,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_ids=(151643,),
            **_QWEN2,
        ),
        "qwen2.5-1.5b": _llama(
            151936,
            hidden=1536,
            layers=28,
            heads=12,
            kv=2,
            mlp=8960,
            positions=32768,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_ids=(151643,),
            **_QWEN2,
        ),
        "qwen2.5-7b": _llama(
            152064,
            hidden=3584,
            layers=28,
            heads=28,
            kv=4,
            mlp=18944,
            positions=131072,
            bos_token_id=151643,
            eos_token_ids=(151643,),
            **_QWEN2,
        ),
        "mistral-7b": _llama(  # Mistral-7B-v0.1
            32000,
            hidden=4096,
            layers=32,
            heads=32,
            kv=8,
            mlp=14336,
            positions=32768,
            architecture="mistral",
            sliding_window=4096,
            bos_token_id=1,
            eos_token_ids=(2,),
        ),
    }
)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named ``ModelConfig`` from ``PRESETS`` with fields overridden.

    Raises:
      ValueError: unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} is unknown; expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
