"""Dense and shaped token rewards: turning one reward at the end of a response into per-token
credit (SURVEY §7).

Every function returns token rewards ``[B, T]`` aligned with the response tokens (``mask`` 1 on
real response tokens, the stopping EOS included; responses right-padded, so the real tokens are
a prefix of each row), 0 where masked: the ``[B, N]`` form that PPO's token-level reward
interface takes (``policy_gradient.token_rewards`` passes it through; PPO then adds its
−β·k1_t). T below is a response's last real token, s_t = (x, y_<t) the state before token t,
and "the sum" is Σ_t r_t over a response's real tokens.

* ``prefix_differences``: r_t = RM(x, y_≤t) − RM(x, y_<t); sum RM(x, y) − RM(x).
* ``abc_rewards`` (attention-based credit, Chan et al. 2024): r_t = w·α_t·R + (1 − w)·R·1[t = T]
  with α from ``attention_credit``; sum R.
* ``implicit_token_rewards`` (RTO, Zhong et al. 2024, on Rafailov et al. 2024 "From r to Q*"):
  r_t = β₁·(log π_dpo − log π_ref)(y_t | s_t) + β₃·R·1[t = T]; sum β₁·log π_dpo(y|x)/π_ref(y|x)
  + β₃·R.
* ``potential_shaping`` (Ng et al. 1999): r′_t = r_t + γΦ(s_{t+1}) − Φ(s_t), Φ(terminal) = 0;
  Σ_t γ^t r′_t = Σ_t γ^t r_t − Φ(s_0).

Prefix differences are potential shaping of the sparse reward R = RM(x, y) with Φ(s_t) =
RM(x, y_<t) and γ = 1 (``prefix_differences(s, s₀) = potential_shaping(R·1[t=T], Φ, 1)``), so
with γ = 1 they leave the optimal policy unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def last_token_mask(mask: Array) -> Array:
    """``[B, T]`` float32: 1 at each row's last real token (none for an empty row)."""
    positions = jnp.arange(mask.shape[-1])
    last = jnp.max(jnp.where(mask > 0, positions, -1), axis=-1)
    return (positions == last[:, None]).astype(jnp.float32)


def prefix_differences(prefix_scores: Array, prompt_scores: Array, mask: Array) -> Array:
    """Dense rewards from a sequence reward model scoring every prefix.

    r_t = RM(x, y_≤t) − RM(x, y_<t), with RM(x, y_<0) = RM(x), the score of the prompt alone.
    The sum over a response telescopes to RM(x, y) − RM(x).

    Args:
      prefix_scores: ``[B, T]`` RM(x, y_≤t), the score head read at response token t (one
        forward of a causal model scores all prefixes).
      prompt_scores: ``[B]`` RM(x), read at the prompt's last token.
      mask: ``[B, T]`` response mask.

    Returns:
      ``[B, T]`` float32 token rewards, 0 where masked.
    """
    mask = mask.astype(jnp.float32)
    scores = prefix_scores.astype(jnp.float32)
    previous = jnp.concatenate([prompt_scores[:, None].astype(jnp.float32), scores[:, :-1]], 1)
    return (scores - previous) * mask


def attention_credit(attention: Array, mask: Array, eps: float = 1e-12) -> Array:
    """ABC's credit weights α: the attention of the sequence's final token over the response
    tokens, averaged over heads and renormalized over the response.

    α_t = ā_t / Σ_{t′} ā_{t′} with ā_t = (1/H) Σ_h a_{h,t} on response tokens (0 elsewhere), so
    α_t ≥ 0 and Σ_t α_t = 1 on every row with a response token (all-zero attention gives uniform
    weights).

    Args:
      attention: ``[B, H, T]`` attention probabilities from the final token (a row of the last
        layer's attention) to each response position.
      mask: ``[B, T]`` response mask.

    Returns:
      ``[B, T]`` float32 weights α.
    """
    mask = mask.astype(jnp.float32)
    mean = jnp.mean(attention.astype(jnp.float32), axis=1) * mask
    total = mean.sum(axis=-1, keepdims=True)
    uniform = mask / jnp.maximum(mask.sum(axis=-1, keepdims=True), 1.0)
    return jnp.where(total > eps, mean / jnp.maximum(total, eps), uniform)


def abc_rewards(scores: Array, credit: Array, mask: Array, weight: float = 0.5) -> Array:
    """Attention-based credit (Chan et al. 2024, "Dense Reward for Free in RLHF").

    r_t = w·α_t·R + (1 − w)·R·1[t = T]: a fraction w of the sequence reward R spread over the
    response tokens by the credit weights α (Σ_t α_t = 1), the rest kept at the last token.
    The sum over a response is R for any w.

    Args:
      scores: ``[B]`` sequence rewards R.
      credit: ``[B, T]`` weights α (``attention_credit``).
      mask: ``[B, T]`` response mask.
      weight: w in [0, 1] (0: the sparse reward).

    Returns:
      ``[B, T]`` float32 token rewards.
    """
    scores = scores.astype(jnp.float32)[:, None]
    last = last_token_mask(mask)
    dense = weight * credit.astype(jnp.float32) * mask.astype(jnp.float32)
    return scores * (dense + (1.0 - weight) * last)


def implicit_token_rewards(
    dpo_logprobs: Array,
    ref_logprobs: Array,
    scores: Array,
    mask: Array,
    *,
    dpo_coef: float,
    outcome_coef: float,
) -> Array:
    """RTO's token reward (Zhong et al. 2024) without PPO's KL term: DPO's implicit token
    reward (Rafailov et al. 2024, "From r to Q*": β log π_dpo/π_ref is a dense reward whose sum
    is the DPO reward) plus a scaled outcome reward at the last token.

    r_t = β₁·(log π_dpo(y_t | s_t) − log π_ref(y_t | s_t)) + β₃·R·1[t = T].
    The sum is β₁·(log π_dpo(y | x) − log π_ref(y | x)) + β₃·R. RTO's full reward subtracts
    β·k1_t = β·(log π_old − log π_ref)(y_t | s_t), which PPO adds itself.

    Args:
      dpo_logprobs, ref_logprobs: ``[B, T]`` log-probs of the response tokens under the DPO
        policy and its reference.
      scores: ``[B]`` outcome rewards R (a gold or learned sequence reward).
      mask: ``[B, T]`` response mask.
      dpo_coef, outcome_coef: β₁ and β₃.

    Returns:
      ``[B, T]`` float32 token rewards.
    """
    mask = mask.astype(jnp.float32)
    implicit = (dpo_logprobs - ref_logprobs).astype(jnp.float32)
    outcome = scores.astype(jnp.float32)[:, None] * last_token_mask(mask)
    return (dpo_coef * implicit + outcome_coef * outcome) * mask


def potential_shaping(rewards: Array, potentials: Array, mask: Array, gamma: float) -> Array:
    """Potential-based shaping (Ng et al. 1999), which leaves the optimal policy unchanged.

    r′_t = r_t + γ·Φ(s_{t+1}) − Φ(s_t), with Φ(s_{T+1}) = 0 after the last real token: a
    response that ended with EOS and one cut at the generation budget both end the episode
    (as ``policy_gradient.gae`` treats them). The discounted sum telescopes:
    Σ_t γ^t r′_t = Σ_t γ^t r_t − Φ(s_0), so for γ = 1 the sum is Σ_t r_t − Φ(x).

    Args:
      rewards: ``[B, T]`` token rewards r_t (e.g. the sparse reward at the last token).
      potentials: ``[B, T]`` Φ(s_t), the potential of the state before response token t.
      mask: ``[B, T]`` response mask.
      gamma: the discount γ of the return being optimized.

    Returns:
      ``[B, T]`` float32 shaped rewards, 0 where masked.
    """
    mask = mask.astype(jnp.float32)
    phi = potentials.astype(jnp.float32) * mask
    next_phi = jnp.pad(phi[:, 1:], ((0, 0), (0, 1)))  # 0 past the last real token
    return (rewards.astype(jnp.float32) + gamma * next_phi - phi) * mask
