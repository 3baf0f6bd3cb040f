"""Policy-gradient estimators and losses (SURVEY §1, §4): critic-free advantages (REINFORCE,
RLOO, ReMax, GRPO), PPO's GAE and clipped value loss, KL estimators and controllers.

Per-sequence rewards are ``[B]``; per-token quantities ``[B, T]`` are aligned with the response
tokens and weighted by ``mask`` (1 on real response tokens, EOS included). Group methods lay out
the batch as ``B = N · G`` with the G samples of one prompt in consecutive rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

ESTIMATORS = ("reinforce", "rloo", "remax", "grpo")
SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sequence_mean", "token_mean", "constant")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _groups(rewards: Array, group_size: int) -> Array:
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"batch of {rewards.shape[0]} rows is not a multiple of group_size={group_size}"
        )
    return rewards.reshape(-1, group_size)


def _unbiased_std(x: Array, axis=None) -> Array:
    return jnp.std(x, axis=axis, ddof=1)


def reinforce_advantages(rewards: Array, baseline: Array | float) -> Array:
    """REINFORCE with a baseline (Williams 1992): A = r − b."""
    return rewards - baseline


def rloo_advantages(rewards: Array, group_size: int) -> Array:
    """RLOO (Ahmadian et al. 2024): A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j over a prompt's G samples."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2")
    grouped = _groups(rewards, group_size)
    others = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def remax_advantages(rewards: Array, greedy_rewards: Array) -> Array:
    """ReMax (Li et al. 2023): A = r(x, y) − r(x, ȳ), ȳ the greedy response to the same prompt."""
    return rewards - greedy_rewards


def group_advantages(
    rewards: Array, group_size: int, *, scale: str = "group", eps: float = 1e-4
) -> Array:
    """GRPO (Shao et al. 2024) group-relative advantages.

    A_i = (r_i − mean_G r) / (std_G r + ε) with the unbiased (ddof = 1) std. ``scale``:
    ``group`` (GRPO), ``batch`` (the std of the whole batch), ``none`` (Dr.GRPO: centering only).
    """
    if scale not in SCALES:
        raise ValueError(f"advantage scale {scale!r}; expected one of {SCALES}")
    grouped = _groups(rewards, group_size)
    centered = grouped - grouped.mean(axis=1, keepdims=True)
    if scale == "group":
        centered = centered / (_unbiased_std(grouped, axis=1)[:, None] + eps)
    elif scale == "batch":
        centered = centered / (_unbiased_std(rewards) + eps)
    return centered.reshape(-1)


def advantages(
    estimator: str,
    rewards: Array,
    group_size: int,
    *,
    scale: str = "group",
    eps: float = 1e-4,
    greedy_rewards: Array | None = None,
    baseline: Array | float = 0.0,
) -> Array:
    """One advantage per response ``[B]`` for ``estimator``: ``grpo`` (``group_advantages``
    with ``scale`` and ``eps``), ``rloo`` (leave-one-out mean), ``remax`` (minus the greedy
    response's reward, ``greedy_rewards`` per row) or ``reinforce`` (minus ``baseline``)."""
    if estimator == "grpo":
        return group_advantages(rewards, group_size, scale=scale, eps=eps)
    if estimator == "rloo":
        return rloo_advantages(rewards, group_size)
    if estimator == "remax":
        if greedy_rewards is None:
            raise ValueError("the remax estimator needs greedy_rewards")
        return remax_advantages(rewards, greedy_rewards)
    if estimator == "reinforce":
        return reinforce_advantages(rewards, baseline)
    raise ValueError(f"advantage estimator {estimator!r}; expected one of {ESTIMATORS}")


def kl_estimate(logps: Array, ref_logps: Array, estimator: str = "k3") -> Array:
    """Per-token KL(π ‖ π_ref) estimators (Schulman 2020) with d = log π − log π_ref, y ~ π.

    k1 = d;  k2 = d² / 2;  k3 = exp(−d) + d − 1 (unbiased, non-negative).

    As values (in the reward, or reported) all three estimate KL(π ‖ π_ref). As a loss term
    differentiated through log π on samples of π_old ≈ π they differ: k1's gradient is
    E_π[∇ log π] = 0, so it regularizes nothing (only valid inside the reward); k3's gradient is
    E_π[(1 − π_ref/π) ∇ log π] = ∇ KL(π_ref ‖ π), the *forward* KL's gradient (the GRPO / TRL
    convention); k2's is E_π[d ∇ log π] = ∇ KL(π ‖ π_ref), the reverse KL's.
    """
    d = logps - ref_logps
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return jnp.exp(-d) + d - 1
    raise ValueError(f"KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def kl_penalized_rewards(rewards: Array, kl_bt: Array, mask: Array, beta: float) -> Array:
    """KL in the reward: r'(x, y) = r(x, y) − β Σ_t kl_t over response tokens."""
    return rewards - beta * jnp.sum(kl_bt * mask, axis=-1)


def clipped_surrogate(
    logps: Array,
    old_logps: Array,
    advantages: Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[Array, Array]:
    """PPO-clip per token (Schulman et al. 2017) with DAPO's decoupled bounds.

    ρ_t = exp(log π − log π_old);  L_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A).
    ``advantages`` is ``[B]`` (one per sequence) or ``[B, T]``.

    Returns:
      ``(losses [B, T], clipped [B, T])`` where ``clipped`` is 1 where the clip was active.
    """
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    ratio = jnp.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return -jnp.minimum(unclipped, clipped), (clipped < unclipped).astype(jnp.float32)


def aggregate_terms(
    per_token: Array, mask: Array, mode: str = "sequence_mean", max_new_tokens: int | None = None
) -> tuple[Array, Array]:
    """Per-token losses ``[B, T]`` as ``(total, count)``: the aggregate is total / count, and
    under gradient accumulation Σ totals / Σ counts over microbatches is the aggregate of the
    whole batch. Rows without response tokens (padding) carry no weight.

    ``sequence_mean`` (GRPO): total = Σ_i (1/|y_i|) Σ_t ℓ_it, count = rows;
    ``token_mean`` (DAPO / BNPO): total = Σ_{i,t} ℓ_it, count = Σ_i |y_i|;
    ``constant`` (Dr.GRPO): total = Σ_{i,t} ℓ_it / max_new_tokens, count = rows.
    """
    mask = mask.astype(per_token.dtype)
    tokens = mask.sum(axis=-1)
    rows = jnp.sum(tokens > 0).astype(per_token.dtype)
    total = per_token * mask
    if mode == "sequence_mean":
        return jnp.sum(total.sum(axis=-1) / jnp.maximum(tokens, 1.0)), rows
    if mode == "token_mean":
        return total.sum(), tokens.sum()
    if mode == "constant":
        if not max_new_tokens:
            raise ValueError("aggregation 'constant' needs max_new_tokens")
        return total.sum() / max_new_tokens, rows
    raise ValueError(f"loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


def aggregate(
    per_token: Array, mask: Array, mode: str = "sequence_mean", max_new_tokens: int | None = None
) -> Array:
    """Reduces per-token losses ``[B, T]`` to a scalar (see ``aggregate_terms``):

    ``sequence_mean`` (GRPO): (1/B) Σ_i (1/|y_i|) Σ_t ℓ_it;
    ``token_mean`` (DAPO / BNPO): Σ_{i,t} ℓ_it / Σ_i |y_i|;
    ``constant`` (Dr.GRPO): Σ_{i,t} ℓ_it / (B · max_new_tokens).
    """
    total, count = aggregate_terms(per_token, mask, mode, max_new_tokens)
    return total / jnp.maximum(count, 1.0)


def token_rewards(scores: Array, mask: Array) -> Array:
    """A reward source's output as per-token rewards ``[B, T]``: sequence scores ``[B]`` are
    placed at each response's last real token (the sparse end-of-sequence reward of the token
    MDP, SURVEY §1); per-token scores ``[B, T]`` (a dense or shaped source) pass through, masked.
    """
    mask = mask.astype(jnp.float32)
    if scores.ndim == 2:
        return scores * mask
    positions = jnp.arange(mask.shape[-1])
    last = jnp.max(jnp.where(mask > 0, positions, -1), axis=-1)
    return jnp.where(positions == last[:, None], scores[:, None], 0.0)


def gae(
    token_rewards: Array, values: Array, mask: Array, gamma: float, lam: float
) -> tuple[Array, Array]:
    """Generalized advantage estimation (Schulman et al. 2016) over response tokens.

    δ_t = r_t + γ V(s_{t+1}) − V(s_t),  A_t = Σ_l (γλ)^l δ_{t+l} = δ_t + γλ A_{t+1},
    returns R_t = A_t + V(s_t). ``values[:, t]`` is V(s_t), read at the position that predicts
    token t. The value after a response's last real token is 0, whether the response ended with
    EOS or was cut at the generation budget (as TRL does: the episode is over for the update);
    positions past the end get A = R = 0. Computed by a reverse ``lax.scan`` over T.

    Args:
      token_rewards, values, mask: ``[B, T]``, aligned with the response tokens.
      gamma, lam: the discount γ and the GAE λ.

    Returns:
      ``(advantages, returns)``, both ``[B, T]`` float32, 0 where masked.
    """
    mask = mask.astype(jnp.float32)
    rewards, values = token_rewards * mask, values * mask
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))  # 0 past the last real token
    deltas = rewards + gamma * next_values - values

    def backward(carry, inputs):
        delta, live = inputs
        advantage = (delta + gamma * lam * carry) * live
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros(mask.shape[0]), (deltas.T, mask.T), reverse=True
    )
    advantages = advantages.T
    return advantages, (advantages + values) * mask


def clipped_value_loss(
    values: Array, old_values: Array, returns: Array, clip_eps: float
) -> tuple[Array, Array]:
    """PPO's clipped value loss per token (the critic's trust region, as in PPO2 / TRL):

    L_t = ½ · max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε_v, ε_v) − R_t)²).

    Returns:
      ``(losses [B, T], clipped [B, T])``, ``clipped`` 1 where the clipped term is the larger.
      Inside the trust region the clipped value is V_t itself (not V_old + (V_t − V_old), which
      rounds), so a clip that does not bind never counts.
    """
    delta = values - old_values
    clipped_values = jnp.where(
        jnp.abs(delta) > clip_eps, old_values + jnp.clip(delta, -clip_eps, clip_eps), values
    )
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    losses = 0.5 * jnp.maximum(unclipped_loss, clipped_loss)
    return losses, (clipped_loss > unclipped_loss).astype(jnp.float32)


def value_loss(
    values: Array,
    old_values: Array,
    returns: Array,
    mask: Array,
    clip_eps: float,
    mode: str = "token_mean",
    max_new_tokens: int | None = None,
) -> Array:
    """``clipped_value_loss`` aggregated over response tokens like the policy loss
    (``aggregate`` with ``mode``)."""
    losses, _ = clipped_value_loss(values, old_values, returns, clip_eps)
    return aggregate(losses, mask, mode, max_new_tokens)


def adaptive_kl_coef(
    coef: Array | float, kl: Array | float, target: float, n_steps: int, horizon: int
) -> Array:
    """Ziegler et al. (2019)'s adaptive KL controller: β ← β · (1 + e · n_steps / horizon) with
    the proportional error e = clip((KL − KL_target) / KL_target, −0.2, 0.2); KL is the batch's
    mean sequence KL (Σ_t k1), n_steps the samples in the batch."""
    error = jnp.clip((kl - target) / target, -0.2, 0.2)
    return coef * (1.0 + error * n_steps / horizon)


def whiten(values: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """Standardizes ``values`` over the masked entries: (x − μ)/σ, or (x − μ)/σ + μ without
    ``shift_mean`` (the mean is kept, as TRL whitens PPO's token rewards); μ, σ are the mean and
    unbiased std of the masked entries. Masked-out entries are 0."""
    mask = mask.astype(values.dtype)
    count = jnp.maximum(mask.sum(), 2.0)
    mean = jnp.sum(values * mask) / jnp.maximum(mask.sum(), 1.0)
    variance = jnp.sum(((values - mean) * mask) ** 2) / (count - 1.0)
    scaled = (values - mean) * jax.lax.rsqrt(variance + eps)
    if not shift_mean:
        scaled = scaled + mean
    return scaled * mask


def explained_variance(predictions: Array, targets: Array, mask: Array) -> Array:
    """1 − Var(targets − predictions) / Var(targets) over the masked entries (1: perfect, 0: no
    better than the mean, < 0: worse)."""
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)

    def variance(x):
        mean = jnp.sum(x * mask) / count
        return jnp.sum(((x - mean) * mask) ** 2) / count

    return 1.0 - variance(targets - predictions) / jnp.maximum(variance(targets), 1e-12)


def overlong_penalty(lengths: Array, max_length: int, buffer: int) -> Array:
    """DAPO's soft over-long penalty with budget L_max and buffer L_c.

    0 if |y| ≤ L_max − L_c;  (L_max − L_c − |y|) / L_c inside the buffer;  −1 beyond L_max.
    """
    lengths = lengths.astype(jnp.float32)
    start = max_length - buffer
    inside = (start - lengths) / buffer
    return jnp.where(lengths <= start, 0.0, jnp.where(lengths <= max_length, inside, -1.0))
