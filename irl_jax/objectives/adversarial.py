"""Adversarial imitation objectives (SURVEY §2): a discriminator separates demonstrations from
policy samples, and the policy is rewarded by a function of its logit that fixes which
divergence to the demonstrator the policy minimizes (Ghasemipour et al. 2020).

The discriminator's output is always its **logit** h = log D − log(1 − D), D = σ(h) the
probability that a response is a demonstration. With equal class weights the loss's minimizer is
D* = p_demo / (p_demo + π), i.e. h* = log(p_demo / π), and under h* the policy rewards are:

=========  ==================  ======================  ===============================
divergence  reward r(h)          E_π[r(h*)]              minimized by policy ascent
=========  ==================  ======================  ===============================
``airl``    h                    −KL(π ‖ p_demo)          reverse KL (mode seeking)
``gail``    softplus(h)          JS-type (Ho & Ermon)     Jensen–Shannon
``fairl``   −h·eʰ                −KL(p_demo ‖ π)          forward KL (mass covering)
=========  ==================  ======================  ===============================

Sequence-level rows are ``[B]`` logits; per-token quantities are ``[B, T]`` with a 0/1 mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

DIVERGENCES = ("airl", "gail", "fairl")


def _weighted_mean(values: Array, weights: Array | None) -> Array:
    if weights is None:
        return values.mean()
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def discriminator_loss(
    demo_logits: Array,
    policy_logits: Array,
    *,
    label_smoothing: float = 0.0,
    demo_weights: Array | None = None,
    policy_weights: Array | None = None,
) -> Array:
    """Binary cross-entropy of the discriminator, demonstrations → 1, policy samples → 0, each
    class averaged on its own (equal class weights, so the optimum is h* = log(p_demo / π)):

        L = ½ E_demo[ℓ(h, 1 − ε)] + ½ E_π[ℓ(h, ε)],
        ℓ(h, y) = −y log σ(h) − (1 − y) log σ(−h) = softplus(h) − y·h,

    ε = ``label_smoothing`` (one-sided targets 1 − ε and ε; GAIL as in Ho & Ermon 2016,
    smoothing as in Salimans et al. 2016).

    Args:
      demo_logits: ``[B_d]`` logits h of demonstrations.
      policy_logits: ``[B_p]`` logits of policy samples.
      label_smoothing: ε in [0, ½).
      demo_weights, policy_weights: optional 0/1 (or real) row weights (e.g. empty replay rows).

    Returns:
      The scalar loss.
    """
    eps = label_smoothing
    demo = jax.nn.softplus(demo_logits) - (1.0 - eps) * demo_logits
    policy = jax.nn.softplus(policy_logits) - eps * policy_logits
    return 0.5 * _weighted_mean(demo, demo_weights) + 0.5 * _weighted_mean(policy, policy_weights)


def discriminator_accuracy(
    demo_logits: Array,
    policy_logits: Array,
    *,
    demo_weights: Array | None = None,
    policy_weights: Array | None = None,
) -> tuple[Array, Array]:
    """``(demo accuracy, policy accuracy)``: the fractions with h > 0 among demonstrations and
    with h < 0 among policy samples (a tie h = 0 counts ½)."""
    right = lambda h, sign: jnp.where(h == 0, 0.5, (sign * h > 0).astype(jnp.float32))
    return (
        _weighted_mean(right(demo_logits, 1.0), demo_weights),
        _weighted_mean(right(policy_logits, -1.0), policy_weights),
    )


def policy_reward(h: Array, divergence: str, *, h_max: float = 10.0) -> Array:
    """The policy's reward from the discriminator logit h (Ghasemipour et al. 2020, Table 1):

    * ``airl`` (reverse KL(π ‖ p_demo), Fu et al. 2018): r = h = log D − log(1 − D);
    * ``gail`` (Jensen–Shannon, Ho & Ermon 2016): r = softplus(h) = −log(1 − D);
    * ``fairl`` (forward KL(p_demo ‖ π), Ghasemipour et al. 2020): r = −h̄·exp(h̄), with
      h̄ = clip(h, −h_max, h_max) (the exponential is unbounded: one confident logit would
      otherwise dominate a batch).

    At h* = log(p_demo/π): E_π[r_airl] = −KL(π ‖ p_demo) and E_π[r_fairl] = −KL(p_demo ‖ π).
    """
    if divergence == "airl":
        return h
    if divergence == "gail":
        return jax.nn.softplus(h)
    if divergence == "fairl":
        clipped = jnp.clip(h, -h_max, h_max)
        return -clipped * jnp.exp(clipped)
    raise ValueError(f"divergence {divergence!r}; expected one of {DIVERGENCES}")


def airl_token_rewards(scores_bt: Array, behaviour_logprobs_bt: Array, mask: Array) -> Array:
    """Token-level AIRL (Fu et al. 2018): with the discriminator D_t = exp f_t / (exp f_t +
    π(y_t | x, y_<t)), each token's logit log D_t − log(1 − D_t) = f_t − log π(y_t | ·) is its
    reward: r_t = f_t − log π_old(y_t | ·) on response tokens (0 elsewhere), π_old the behaviour
    policy whose log-probs the rollout recorded.

    Args:
      scores_bt: ``[B, T]`` per-token discriminator scores f_t.
      behaviour_logprobs_bt: ``[B, T]`` log π_old of the same tokens.
      mask: ``[B, T]`` response-token mask.

    Returns:
      ``[B, T]`` token rewards.
    """
    return (scores_bt - behaviour_logprobs_bt) * mask.astype(scores_bt.dtype)


def airl_sequence_logits(scores_bt: Array, behaviour_logprobs_bt: Array, mask: Array) -> Array:
    """The sequence logit of the token-level AIRL discriminator on a whole response,
    h = Σ_t (f_t − log π(y_t | ·)) = log [exp Σf / π(y|x)] (``[B]``): what its discriminator
    loss classifies, and (as Σ_t r_t) the sequence reward of a critic-free estimator."""
    return airl_token_rewards(scores_bt, behaviour_logprobs_bt, mask).sum(axis=-1)


def gradient_penalty(grads_btd: Array, mask: Array) -> Array:
    """Per-row squared norm of the logit's gradient with respect to the input **embeddings**
    (tokens are discrete, so the penalty is taken in embedding space):
    ‖∇_e h‖² = Σ_t mask_t Σ_d (∂h/∂e_td)² ``[B]``. The zero-centred R1 penalty (Mescheder et al.
    2018) is (γ/2) E_demo ‖∇_e h‖²."""
    squared = jnp.sum(jnp.square(grads_btd.astype(jnp.float32)), axis=-1)
    return jnp.sum(squared * mask.astype(jnp.float32), axis=-1)
