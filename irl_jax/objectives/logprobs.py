"""Token log-probabilities, masked reductions and entropies (always in float32).

Alignment convention used everywhere in irl_jax: for a sequence ``input_ids [B, T]`` the logits
at position t predict token t + 1, and per-token quantities are returned *aligned with the
token they score*: entry t of ``next_token_logprobs`` is log π(input_ids[t] | input_ids[<t]),
entry 0 is 0. A ``loss_mask`` / ``response_mask`` aligned with ``input_ids`` therefore selects
exactly the tokens it marks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / T)[target] per position: ``[..., V], [...] -> [...]`` float32.

    Computed as ``logit[target] - logsumexp(logits)`` without materializing the full
    log-softmax.
    """
    logits = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def next_token_logprobs(
    logits: jax.Array, input_ids: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """``[B, T, V], [B, T] -> [B, T]``: entry t = log π(x_t | x_<t); entry 0 is 0.

    Scores every position against the next token and shifts the small ``[B, T]`` result, rather
    than slicing the ``[B, T, V]`` logits (whose gradient would then be padded back: a copy).
    """
    logps = token_logprobs(logits, jnp.roll(input_ids, -1, axis=1), temperature)
    return jnp.pad(logps[:, :-1], ((0, 0), (1, 0)))


def masked_sum(x: jax.Array, mask: jax.Array, axis: int | None = -1) -> jax.Array:
    """Σ x·mask over ``axis``."""
    return jnp.sum(x * mask.astype(x.dtype), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Σ x·mask / max(Σ mask, 1) over ``axis`` (all axes by default)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def sequence_logprobs(token_logps: jax.Array, mask: jax.Array) -> jax.Array:
    """log π(y | x) = Σ_t mask_t · log π(y_t | ·): ``[B, T] -> [B]``."""
    return masked_sum(token_logps, mask, axis=-1)


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """H(softmax(logits / T)) per position: ``[..., V] -> [...]`` float32."""
    logps = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(jnp.exp(logps) * logps, axis=-1)


def next_token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``[B, T, V] -> [B, T]``: entry t = entropy of π(· | x_<t) (aligned like log-probs)."""
    return jnp.pad(token_entropy(logits, temperature)[:, :-1], ((0, 0), (1, 0)))
