"""Reward-model objectives: IRL from comparisons (SURVEY §3).

Rewards are float32 scores ``r(x, y)`` from a reward model; every loss returns per-example values
``[B]`` that the caller averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def bradley_terry(
    chosen_rewards: Array,
    rejected_rewards: Array,
    *,
    margin: Array | float = 0.0,
    label_smoothing: float = 0.0,
    centering: float = 0.0,
) -> Array:
    """Bradley–Terry preference loss with margin, label smoothing and reward centering.

    With Δ = r(x, y_w) − r(x, y_l) − m:
    L = −(1 − ε) log σ(Δ) − ε log σ(−Δ) + c · (r(x, y_w) + r(x, y_l))²
    (Bradley & Terry 1952; margin as in Llama 2; centering as in Eisenstein et al. 2023).
    """
    delta = chosen_rewards - rejected_rewards - margin
    losses = -(1 - label_smoothing) * jax.nn.log_sigmoid(delta) - label_smoothing * (
        jax.nn.log_sigmoid(-delta)
    )
    return losses + centering * (chosen_rewards + rejected_rewards) ** 2


def classification(rewards: Array, labels: Array) -> Array:
    """Pointwise classification reward model (Sun et al. 2024): BCE with the reward as logit.

    L = −y log σ(r) − (1 − y) log σ(−r); pairs are split into (x, y_w) → 1 and (x, y_l) → 0.
    """
    labels = labels.astype(jnp.float32)
    return -labels * jax.nn.log_sigmoid(rewards) - (1 - labels) * jax.nn.log_sigmoid(-rewards)


def ranking(rewards_bk: Array) -> Array:
    """K-way ranking loss: Bradley–Terry averaged over all C(K, 2) ordered pairs.

    ``rewards_bk [B, K]`` are ordered most → least preferred:
    L = (1 / C(K, 2)) Σ_{i < j} −log σ(r_i − r_j).
    """
    k = rewards_bk.shape[-1]
    i, j = jnp.triu_indices(k, 1)
    pair_losses = -jax.nn.log_sigmoid(rewards_bk[..., i] - rewards_bk[..., j])
    return pair_losses.mean(axis=-1)


def aggregate_ensemble(rewards_bk: Array, method: str, penalty: float = 0.0) -> Array:
    """Combines K ensemble members' rewards ``[B, K] → [B]`` (Coste et al. 2023).

    ``mean``: (1/K) Σ_k r_k; ``wco`` (worst-case): min_k r_k; ``uwo`` (uncertainty-weighted):
    mean_k r_k − λ · Var_k r_k, with the population variance (ddof = 0).
    """
    if method == "mean":
        return rewards_bk.mean(axis=-1)
    if method == "wco":
        return rewards_bk.min(axis=-1)
    if method == "uwo":
        return rewards_bk.mean(axis=-1) - penalty * rewards_bk.var(axis=-1)
    raise ValueError(f"ensemble aggregation {method!r}; expected 'mean', 'wco' or 'uwo'")


def process_reward(logits_bt: Array, step_mask: Array, step_labels: Array) -> Array:
    """Process reward model loss: BCE at step-boundary tokens, averaged per example.

    L = (1 / Σ_t m_t) Σ_t m_t · BCE(σ(s_t), ℓ_t), where s_t is the model's per-token score,
    m_t marks the last token of each step and ℓ_t ∈ {0, 1} is that step's correctness label
    (Lightman et al. 2023). An outcome RM is the special case of one boundary at the last token.
    """
    mask = step_mask.astype(jnp.float32)
    bce = classification(logits_bt, step_labels)
    return jnp.sum(bce * mask, axis=-1) / jnp.maximum(mask.sum(axis=-1), 1.0)


def pairwise_accuracy(chosen_rewards: Array, rejected_rewards: Array) -> Array:
    """1 where the chosen response scores higher, 0.5 on ties, else 0: ``[B]``."""
    return jnp.where(
        chosen_rewards == rejected_rewards, 0.5, (chosen_rewards > rejected_rewards) * 1.0
    )
