"""Behaviour cloning (SFT): token-averaged negative log-likelihood of the targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_jax.objectives.logprobs import masked_sum


def nll_loss(token_logps: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, dict]:
    """L = −Σ_{b,t} m_bt log π(x_bt | x_b,<t) / Σ_{b,t} m_bt  (behaviour cloning, SURVEY §2).

    Minimizing it minimizes the forward KL(d_demo ‖ d_π) up to the demonstrator's entropy.

    Args:
      token_logps: ``[B, T]`` aligned log-probs (``next_token_logprobs``).
      loss_mask: ``[B, T]`` 1 on target tokens (response and eos).

    Returns:
      ``(loss, {"nll_sum", "tokens"})`` — the sums let evaluation average over many batches.
    """
    nll_sum = -masked_sum(token_logps, loss_mask, axis=None)
    tokens = jnp.sum(loss_mask.astype(jnp.float32))
    return nll_sum / jnp.maximum(tokens, 1.0), {"nll_sum": nll_sum, "tokens": tokens}
