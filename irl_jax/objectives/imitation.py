"""Imitation beyond behaviour cloning: IQ-Learn, inverse soft-Q learning (SURVEY §2).

IQ-Learn (Garg et al. 2021) learns a soft Q-function directly, with no separate reward model:
for a language model Q(s, a) is the logit of token a after the prefix s, the soft value is
V(s) = log Σ_a exp Q(s, a) (so π(a|s) = exp(Q(s, a) − V(s)) is the LM's softmax), and the
reward the Q-function implies is r(s, a) = Q(s, a) − γ V(s′), s′ = s + a. Wulfmeier et al.
(2024, "Imitating language via scalable inverse RL") train LMs with its offline χ²-regularized
objective over demonstration transitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from irl_jax.objectives.logprobs import masked_sum


def _shift_left(x: jax.Array) -> jax.Array:
    """``[B, T] -> [B, T]``: entry t is x[t + 1]; the last entry is 0."""
    return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))


def soft_q_terms(
    logits: jax.Array, target_ids: jax.Array, eos_ids: Sequence[int] = ()
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Q(s, a), V(s), V(s′) and whether s′ is terminal, each ``[B, T]`` and aligned with the
    token a = x_t they score (like ``next_token_logprobs``; entry 0 is 0): Q = the logit of x_t
    after x_<t, V = logsumexp of those logits, V(s′) = the logsumexp of the logits after x_≤t,
    or 0 when x_t is one of ``eos_ids`` (an absorbing state)."""
    logits = logits.astype(jnp.float32)
    values = jax.nn.logsumexp(logits, axis=-1)  # [B, T]: V of the state after token t
    next_ids = jnp.roll(target_ids, -1, axis=1)
    picked = jnp.take_along_axis(logits, next_ids[..., None].astype(jnp.int32), -1)[..., 0]
    shift = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0)))
    terminal = jnp.isin(target_ids, jnp.asarray(tuple(eos_ids) or (-1,), target_ids.dtype))
    return shift(picked), shift(values), jnp.where(terminal, 0.0, values), terminal


def iq_learn_loss(
    logits: jax.Array,
    target_ids: jax.Array,
    mask: jax.Array,
    *,
    chi2_coef: float,
    gamma: float = 1.0,
    eos_ids: Sequence[int] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The offline IQ-Learn loss with the χ² regularizer, token-averaged (Garg et al. 2021, §5.1;
    SURVEY §2)::

        L = −E_D[Q(s,a) − γV(s′)] + E_D[V(s) − γV(s′)] + (1/(4α)) E_D[(Q(s,a) − γV(s′))²]

    over the demonstration transitions (s, a, s′) = (x_<t, x_t, x_≤t) of the ``mask`` tokens,
    with Q(s, ·) = the logits that predict x_t, V(s) = logsumexp Q(s, ·) and V(s′) = 0 after an
    eos (an absorbing state), else the logsumexp of the logits that predict x_{t+1}.

    **Identities.** Per transition the first two terms telescope: −(Q − γV′) + (V − γV′) =
    V − Q = −log π(a|s), for every γ. So with ``chi2_coef = 0`` the loss is the SFT NLL token
    by token, and χ² is all that separates IQ-Learn from MLE: it pulls each implied reward
    r = Q − γV′ toward 0, which constrains the logits' level (V) across consecutive states —
    a freedom the softmax leaves to MLE. Summed over a response at γ = 1 the implied reward
    telescopes too: Σ_t (Q_t − V_{t+1}) = Σ_t (Q_t − V_t) + V(s₀) − V(s_T) = log π(y|x) + V(s₀)
    after an eos (V(s_T) = 0), so for any model the per-prompt ranking of responses by implied
    reward is their ranking by likelihood; only γ < 1, per-token rewards or comparisons across
    prompts (V(s₀) differs) carry more.

    A row cut at the length limit (its last target is no eos) ends in a state whose V(s′) is
    not the value of a finished response: that transition's χ² term is left out (its
    likelihood terms stay). So are the χ² terms of targets followed by a non-target (context)
    token.

    Args:
      logits: ``[B, T, V]`` Q-values; position t's logits predict token t + 1.
      target_ids: ``[B, T]`` token ids (the sequence the logits were computed on).
      mask: ``[B, T]`` 1 on the demonstration tokens to imitate, aligned with ``target_ids``
        like ``next_token_logprobs`` (so ``mask[:, 0]`` is 0).
      chi2_coef: 1/(4α) ≥ 0.
      gamma: discount γ ∈ (0, 1].
      eos_ids: token ids that end a response (their V(s′) = 0).

    Returns:
      ``(loss, metrics)``: the token-mean loss and ``loss_sum``, ``tokens``, ``nll`` (token
      mean −log π), ``chi2`` (token mean of the masked (Q − γV′)²), ``reward_mean`` and
      ``reward_std`` (implied per-token rewards r = Q − γV′ over the χ² transitions),
      ``value_mean`` (V(s) over the targets).
    """
    mask = mask.astype(jnp.float32)
    q, v, v_next, terminal = soft_q_terms(logits, target_ids, eos_ids)
    reward = q - gamma * v_next
    # χ² transitions: those ending in eos, or followed by another target token.
    chi2_mask = mask * jnp.where(terminal, 1.0, _shift_left(mask))
    nll_sum = masked_sum(v - q, mask, axis=None)
    chi2_sum = masked_sum(reward**2, chi2_mask, axis=None)
    tokens = jnp.sum(mask)
    denominator = jnp.maximum(tokens, 1.0)
    loss_sum = nll_sum + chi2_coef * chi2_sum
    chi2_count = jnp.maximum(jnp.sum(chi2_mask), 1.0)
    reward_mean = masked_sum(reward, chi2_mask, axis=None) / chi2_count
    reward_var = masked_sum((reward - reward_mean) ** 2, chi2_mask, axis=None) / chi2_count
    metrics = {
        "loss_sum": loss_sum,
        "tokens": tokens,
        "nll": nll_sum / denominator,
        "chi2": chi2_sum / denominator,
        "reward_mean": reward_mean,
        "reward_std": jnp.sqrt(reward_var),
        "value_mean": masked_sum(v, mask, axis=None) / denominator,
    }
    return loss_sum / denominator, metrics


def implied_rewards(
    logits: jax.Array,
    target_ids: jax.Array,
    mask: jax.Array,
    *,
    gamma: float = 1.0,
    eos_ids: Sequence[int] = (),
) -> jax.Array:
    """``[B, T]`` per-token implied rewards r_t = Q(x_<t, x_t) − γ V(x_≤t) (V = 0 after an eos),
    zero outside ``mask``; aligned like ``next_token_logprobs``. Their sum over a response at
    γ = 1 is log π(y|x) + V(s₀) (see ``iq_learn_loss``)."""
    q, _, v_next, _ = soft_q_terms(logits, target_ids, eos_ids)
    return (q - gamma * v_next) * mask.astype(jnp.float32)
