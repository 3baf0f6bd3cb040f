"""The decoder family (GPT-2, Llama, Qwen2, Mistral) as one pure Flax linen module.

Shapes: B batch, T query length, S key length (= T, or the KV-cache length when decoding),
D hidden, H query heads, K key/value heads, G = H // K, hd head dim, F MLP width, V vocab.

Positions come from the attention mask (``cumsum(mask) - 1``), so left- and right-padded batches
give the same per-token results as unpadded rows. Masked attention scores are set to the finite
minimum of float32 (scores and softmax are computed in float32), never ``-inf``, so fully padded
rows produce finite values and gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.models.config import ModelConfig
from irl_jax.models.lora import LoraDense, LoraEmbed
from irl_jax.sharding import constrain

_INIT_STD = 0.02


class KVCache(NamedTuple):
    """Keys and values of every layer, ``[L, B, K, S, hd]``; slot s holds token s of the stream.

    Heads come before slots so that a layer's ``[B, K, S, hd]`` block feeds the attention
    matmuls without a transpose.

    The slot index is shared by all rows; each row's *position* (for RoPE / learned positions) is
    tracked separately by the caller.
    """

    k: jax.Array
    v: jax.Array


class TransformerOutput(NamedTuple):
    """``logits`` ``[B, T, V]`` float32 (None if not computed); ``hidden_states`` ``[B, T, D]``
    after the final norm; ``cache`` the updated ``KVCache`` (None without one)."""

    logits: jax.Array | None
    hidden_states: jax.Array
    cache: KVCache | None


def init_cache(config: ModelConfig, batch_size: int, max_length: int) -> KVCache:
    """An empty (zeros) KV cache of ``max_length`` slots in the compute dtype."""
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
    zeros = jnp.zeros(shape, config.compute_dtype)
    return KVCache(zeros, zeros)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Per-row positions ``cumsum(mask) - 1`` (pads clamped to 0), ``[B, T]`` int32."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def _dense_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def _zeros_init(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _activation(name: str):
    return {
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies ``[hd / 2]`` (float32), with ``linear`` or ``llama3`` scaling.

    llama3 (Meta's Llama 3.1 recipe): wavelengths longer than ``original_max / low_freq_factor``
    are divided by ``factor``; shorter than ``original_max / high_freq_factor`` are kept; the band
    between is interpolated smoothly.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None or scaling.rope_type == "default":
        return inv_freq.astype(np.float32)
    if scaling.rope_type == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(
    config: ModelConfig, positions: jax.Array, num_positions: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``[B, T, hd]`` (float32) for per-row ``positions`` ``[B, T]``.

    With ``num_positions`` (a static bound: every position is below it), both are gathered from
    ``[num_positions, hd]`` tables, the same values: XLA otherwise fuses the cos and sin into
    each consumer, so they are recomputed for every head of q and k in every layer and again
    in the backward (17 % of a d256 GRPO update's kernel time). A position outside the tables
    reads NaN, never a clamped row.
    """
    inv_freq = jnp.asarray(rope_inv_freq(config))

    def cos_sin(at: jax.Array) -> tuple[jax.Array, jax.Array]:
        freqs = at.astype(jnp.float32)[..., None] * inv_freq
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        return jnp.cos(emb), jnp.sin(emb)

    if num_positions is None:
        return cos_sin(positions)
    take = lambda table: jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)
    cos, sin = cos_sin(jnp.arange(num_positions))
    return take(cos), take(sin)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` ``[B, T, N, hd]`` by the half-split (Hugging Face) RoPE convention."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def causal_mask(
    key_mask: jax.Array, query_slots: jax.Array, sliding_window: int | None
) -> jax.Array:
    """Boolean mask ``[B, 1, T, S]``: key is valid, causal by slot, inside the window."""
    key_slots = jnp.arange(key_mask.shape[-1])
    allowed = key_slots[None, :] <= query_slots[:, None]
    if sliding_window is not None:
        allowed &= key_slots[None, :] > query_slots[:, None] - sliding_window
    return key_mask.astype(bool)[:, None, None, :] & allowed[None, None]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · scale``, statistics in float32 (as Llama)."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32.astype(self.dtype) * scale.astype(self.dtype)


def _norm(config: ModelConfig, name: str) -> nn.Module:
    if config.is_gpt2:
        return nn.LayerNorm(
            epsilon=config.norm_eps,
            dtype=config.compute_dtype,
            param_dtype=config.weight_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            bias_init=_zeros_init(("norm",)),
            name=name,
        )
    return RMSNorm(config.norm_eps, config.compute_dtype, config.weight_dtype, name=name)


def _embed(config: ModelConfig) -> nn.Module:
    """The token embedding table (``[vocab, embed]``); with ``config.lora`` a ``LoraEmbed``
    (the same params and arithmetic, plus a trained delta with ``lora.embeddings``)."""
    if config.lora is not None:
        return LoraEmbed(
            config.vocab_size,
            config.hidden_size,
            embedding_axes=("vocab", "embed"),
            embedding_init=nn.initializers.normal(_INIT_STD),
            dtype=config.compute_dtype,
            param_dtype=config.weight_dtype,
            lora=config.lora,
            name="embed",
        )
    return nn.Embed(
        config.vocab_size,
        config.hidden_size,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        embedding_init=_dense_init(("vocab", "embed")),
        name="embed",
    )


def _dense(config: ModelConfig, features, axes, *, use_bias: bool, name: str, axis=-1):
    """A Dense layer with kernel axes ``axes``; with ``config.lora``, a ``LoraDense`` (the same
    params and arithmetic, plus adapters / a quantized kernel on the targeted layers).

    On one device the layer sees its input with the leading (batch, length) axes merged into one
    row axis: the same arithmetic, but the weight gradient is then one plain matmul over rows,
    where a contraction over two axes makes XLA:CPU transpose the output gradient (fused with
    the activation's backward) first, which made a Llama MLP's backward 2x slower
    (``benchmarks/rl_iteration.py``). On a sharded mesh the input keeps its axes: merging them
    there made the SPMD partitioner fall back to replicating activations (and moved an
    8-device DPO loss off the 1-device one by 1.4e-5)."""
    features_t = features if isinstance(features, tuple) else (features,)
    axis_t = axis if isinstance(axis, tuple) else (axis,)
    if config.lora is not None:
        layer = LoraDense(
            features=features_t,
            axis=axis_t,
            use_bias=use_bias,
            kernel_axes=tuple(axes),
            dtype=config.compute_dtype,
            param_dtype=config.weight_dtype,
            lora=config.lora,
            name=name,
        )
    else:
        layer = nn.DenseGeneral(
            features=features,
            axis=axis,
            use_bias=use_bias,
            dtype=config.compute_dtype,
            param_dtype=config.weight_dtype,
            kernel_init=_dense_init(axes),
            bias_init=_zeros_init(axes[-len(features_t) :]),
            name=name,
        )

    def apply(x: jax.Array) -> jax.Array:
        mesh = jax.sharding.get_abstract_mesh()
        if not (mesh.empty or mesh.size == 1):  # sharded: the partitioner's layout, unmerged
            return layer(x)
        lead = x.shape[: x.ndim - len(axis_t)]
        y = layer(x.reshape(-1, *x.shape[len(lead) :]))
        return y.reshape(*lead, *y.shape[1:])

    return apply


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention with an optional KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, rope, mask, cache, layer, cache_index):
        cfg = self.config
        heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if cfg.is_gpt2:
            qkv = _dense(
                cfg,
                (3, heads, head_dim),
                ("embed", "qkv", "heads", "head_dim"),
                use_bias=cfg.qkv_bias,
                name="qkv",
            )(x)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = _dense(
                cfg,
                (heads, head_dim),
                ("embed", "heads", "head_dim"),
                use_bias=cfg.qkv_bias,
                name="q",
            )(x)
            k = _dense(
                cfg,
                (kv_heads, head_dim),
                ("embed", "kv_heads", "head_dim"),
                use_bias=cfg.qkv_bias,
                name="k",
            )(x)
            v = _dense(
                cfg,
                (kv_heads, head_dim),
                ("embed", "kv_heads", "head_dim"),
                use_bias=cfg.qkv_bias,
                name="v",
            )(x)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q = constrain(q, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        # Keys and values as [B, K, S, hd] (the cache layout).
        k = constrain(
            k.transpose(0, 2, 1, 3), ("act_batch", "act_kv_heads", "act_length", "act_head_dim")
        )
        v = constrain(
            v.transpose(0, 2, 1, 3), ("act_batch", "act_kv_heads", "act_length", "act_head_dim")
        )

        if cache is not None:
            # Write this layer's new keys/values into the stacked cache in place (no copy of
            # the other layers), then attend over this layer's slots.
            start = (layer, 0, 0, cache_index, 0)
            cache = KVCache(
                jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
                jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start),
            )
            k = jax.lax.dynamic_index_in_dim(cache.k, layer, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(cache.v, layer, keepdims=False)

        batch, length = q.shape[:2]
        groups = heads // kv_heads
        # Queries as [B, K, G·T, hd] (head h = k·G + g, row m = g·T + t): one batched matmul per
        # KV head, which XLA runs faster than a separate group axis.
        q = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
        q = q.reshape(batch, kv_heads, groups * length, head_dim)
        scores = jnp.einsum("bkmd,bksd->bkms", q, k, preferred_element_type=jnp.float32) / np.sqrt(
            head_dim
        ).astype(np.float32)
        if groups > 1:
            mask = jnp.tile(mask, (1, 1, groups, 1))
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        # Kept only when the caller makes "intermediates" mutable (see ``attention_weights``).
        self.sow("intermediates", "attention", probs.reshape(batch, heads, length, -1))
        probs = probs.astype(cfg.compute_dtype)
        out = jnp.einsum("bkms,bksd->bkmd", probs, v)
        out = out.reshape(batch, kv_heads, groups, length, head_dim).transpose(0, 3, 1, 2, 4)
        out = out.reshape(batch, length, heads, head_dim)
        out = constrain(out, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        out = _dense(
            cfg,
            cfg.hidden_size,
            ("heads", "head_dim", "embed"),
            use_bias=cfg.o_bias,
            name="o",
            axis=(-2, -1),
        )(out)
        return out, cache


class Mlp(nn.Module):
    """GPT-2's ``act(x W_fc) W_proj`` or the Llama family's SwiGLU ``(silu(x W_g) ⊙ x W_u) W_d``."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = _activation(cfg.activation)
        width = cfg.intermediate_size
        if cfg.is_gpt2:
            h = act(_dense(cfg, width, ("embed", "mlp"), use_bias=cfg.mlp_bias, name="fc")(x))
        else:
            gate = _dense(cfg, width, ("embed", "mlp"), use_bias=cfg.mlp_bias, name="gate")(x)
            up = _dense(cfg, width, ("embed", "mlp"), use_bias=cfg.mlp_bias, name="up")(x)
            h = act(gate) * up
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        down_name = "proj" if cfg.is_gpt2 else "down"
        return _dense(
            cfg, cfg.hidden_size, ("mlp", "embed"), use_bias=cfg.mlp_bias, name=down_name
        )(h)


class Block(nn.Module):
    """Pre-norm decoder block. The carry ``(x, cache, layer)`` holds the activations, the stacked
    KV cache of all layers (or None) and this block's layer index, so that the blocks can be
    scanned over layers and the cache updated in place."""

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, rope, mask, cache_index):
        x, cache, layer = carry
        h = _norm(self.config, "attn_norm")(x)
        h, cache = Attention(self.config, name="attn")(h, rope, mask, cache, layer, cache_index)
        x = x + h
        x = x + Mlp(self.config, name="mlp")(_norm(self.config, "mlp_norm")(x))
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        return (x, cache, layer + 1), None


class Transformer(nn.Module):
    """Decoder-only LM. ``apply({"params": p}, input_ids, attention_mask)`` → ``TransformerOutput``.

    Args (``__call__``):
      input_ids: ``[B, T]`` int token ids.
      attention_mask: ``[B, T]`` 1 for real tokens (any padding side); with a ``cache``, the
        ``[B, S]`` mask of valid cache slots *after* this call's tokens are written.
      positions: ``[B, T]`` positions; default ``cumsum(attention_mask) - 1`` (no cache only).
      cache: optional ``KVCache``; the tokens are written at slots ``cache_index + [0, T)``.
      cache_index: int32 scalar, first slot to write (required with ``cache``).
      compute_logits: skip the LM head (reward/value models need only ``hidden_states``).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        cache: KVCache | None = None,
        cache_index: jax.Array | None = None,
        compute_logits: bool = True,
    ) -> TransformerOutput:
        cfg = self.config
        length = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        num_positions = None  # a static bound on the positions, where one is known
        if cache is None:
            if positions is None:
                positions, num_positions = positions_from_mask(attention_mask), length
            query_slots = jnp.arange(length)
        else:
            if positions is None or cache_index is None:
                raise ValueError(
                    "decoding with a KV cache needs explicit positions and cache_index"
                )
            query_slots = cache_index + jnp.arange(length)
            num_positions = cache.k.shape[3]  # a row's position never exceeds its slot

        embed = _embed(cfg)
        x = embed(input_ids)
        rope = None
        if cfg.is_gpt2:
            x = x + nn.Embed(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.weight_dtype,
                embedding_init=_dense_init(("positions", "embed")),
                name="pos_embed",
            )(positions)
        else:
            rope = rope_tables(cfg, positions, num_positions)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        mask = causal_mask(attention_mask, query_slots, cfg.sliding_window)

        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, prevent_cse=not cfg.scan_layers, policy=cfg.remat_policy)
        carry = (x, cache, jnp.int32(0))
        if cfg.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            carry, _ = stack(cfg, name="layers")(carry, rope, mask, cache_index)
        else:
            for i in range(cfg.num_layers):
                carry, _ = block(cfg, name=f"layer_{i}")(carry, rope, mask, cache_index)
        x, cache, _ = carry

        x = _norm(cfg, "final_norm")(x)
        logits = None
        if compute_logits:
            if cfg.tie_word_embeddings:
                logits = embed.attend(x)
            else:
                logits = _dense(
                    cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head"
                )(x)
            logits = constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
        return TransformerOutput(logits, x, cache)


def attention_weights(intermediates: dict, config: ModelConfig) -> jax.Array:
    """The attention probabilities ``[L, B, H, T, S]`` float32 of every layer, from the
    ``"intermediates"`` a ``Transformer`` sows when applied with ``mutable=["intermediates"]``
    (pass its own subtree, e.g. ``state["intermediates"]["transformer"]`` under a head).
    Masked keys have weight 0; each query's weights sum to 1."""
    if config.scan_layers:
        return intermediates["layers"]["attn"]["attention"][0]
    layers = [intermediates[f"layer_{i}"]["attn"]["attention"][0] for i in range(config.num_layers)]
    return jnp.stack(layers)


def stack_layers(params: dict, num_layers: int) -> dict:
    """Unrolled params (``layer_0`` … ``layer_{L-1}``) → scanned params (``layers``, stacked)."""
    params = dict(params)
    layers = [params.pop(f"layer_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Scanned params (``layers``) → unrolled params (``layer_i``)."""
    params = dict(params)
    layers = params.pop("layers")
    for i in range(num_layers):
        params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
    return params
