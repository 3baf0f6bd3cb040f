"""Direct alignment losses over per-sequence log-probabilities (SURVEY §5, §2).

Inputs are sequence log-prob *sums* ``log π(y | x)`` of shape ``[B]`` (and token counts ``|y|``
where a method normalizes by length). Every function returns per-example losses ``[B]`` and a
dict of per-example metrics; the caller averages. With
``h = β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]`` the implicit reward of
a response is ``β (log π(y) − log π_ref(y))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected) -> Array:
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def _metrics(chosen, rejected, ref_chosen, ref_rejected, beta) -> dict[str, Array]:
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    return {
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "reward_margin": chosen_reward - rejected_reward,
        "accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
    }


def dpo(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """DPO (Rafailov et al. 2023) and conservative DPO (cDPO) with label smoothing ε.

    L = −(1 − ε) log σ(h) − ε log σ(−h);  ε = 0 is DPO.
    """
    h = beta * _log_ratio_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -(1 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * (
        jax.nn.log_sigmoid(-h)
    )
    return losses, _metrics(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )


def robust_dpo(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate ε < 1/2.

    L = [(1 − ε)(−log σ(h)) − ε(−log σ(−h))] / (1 − 2ε).
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust_dpo needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    h = beta * _log_ratio_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    eps = label_smoothing
    losses = ((1 - eps) * -jax.nn.log_sigmoid(h) - eps * -jax.nn.log_sigmoid(-h)) / (1 - 2 * eps)
    return losses, _metrics(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )


def ipo(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
    chosen_tokens: Array | None = None,
    rejected_tokens: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """IPO (Azar et al. 2023): L = (h/β − 1/(2β))², the log-ratio margin regressed to 1/(2τ), τ = β.

    With ``chosen_tokens`` / ``rejected_tokens`` given, each log-ratio is averaged per response
    token first (what the IPO authors' reported results use, and TRL's); otherwise summed. The
    metrics (implicit rewards β·log-ratio, margin, accuracy) use the same averaged or summed
    log-ratios that the loss trains.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    if (chosen_tokens is None) != (rejected_tokens is None):
        raise ValueError("ipo: give both chosen_tokens and rejected_tokens, or neither")
    if chosen_tokens is not None:
        chosen_ratio = chosen_ratio / jnp.maximum(chosen_tokens, 1)
        rejected_ratio = rejected_ratio / jnp.maximum(rejected_tokens, 1)
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    zero = jnp.zeros_like(chosen_ratio)
    return losses, _metrics(chosen_ratio, rejected_ratio, zero, zero, beta)


def hinge(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
) -> tuple[Array, dict[str, Array]]:
    """Hinge / SLiC (Zhao et al. 2023): L = max(0, 1 − h)."""
    h = beta * _log_ratio_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = jax.nn.relu(1 - h)
    return losses, _metrics(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )


def simpo(
    chosen_logps: Array,
    rejected_logps: Array,
    chosen_tokens: Array,
    rejected_tokens: Array,
    *,
    beta: float,
    gamma: float,
) -> tuple[Array, dict[str, Array]]:
    """SimPO (Meng et al. 2024), reference-free, length-normalized with target margin γ.

    L = −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ).
    """
    chosen_reward = beta * chosen_logps / jnp.maximum(chosen_tokens, 1)
    rejected_reward = beta * rejected_logps / jnp.maximum(rejected_tokens, 1)
    losses = -jax.nn.log_sigmoid(chosen_reward - rejected_reward - gamma)
    return losses, {
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
        "reward_margin": chosen_reward - rejected_reward,
        "accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
    }


def _log_odds(mean_logp: Array) -> Array:
    """log(p / (1 − p)) for p = exp(mean_logp) < 1, computed stably."""
    mean_logp = jnp.minimum(mean_logp, -1e-6)
    return mean_logp - jnp.log(-jnp.expm1(mean_logp))


def orpo(
    chosen_logps: Array,
    rejected_logps: Array,
    chosen_tokens: Array,
    rejected_tokens: Array,
    *,
    lam: float,
) -> tuple[Array, dict[str, Array]]:
    """ORPO (Hong et al. 2024): SFT NLL on y_w plus λ · odds-ratio loss, reference-free.

    L = −log π(y_w)/|y_w| + λ · (−log σ(log odds(y_w) − log odds(y_l))),
    odds(y) = p/(1 − p) with p = exp(mean token log π(y)).
    """
    chosen_mean = chosen_logps / jnp.maximum(chosen_tokens, 1)
    rejected_mean = rejected_logps / jnp.maximum(rejected_tokens, 1)
    log_odds_ratio = _log_odds(chosen_mean) - _log_odds(rejected_mean)
    odds_loss = -jax.nn.log_sigmoid(log_odds_ratio)
    nll = -chosen_mean
    return nll + lam * odds_loss, {
        "nll": nll,
        "odds_ratio_loss": odds_loss,
        "log_odds_ratio": log_odds_ratio,
        "accuracy": (log_odds_ratio > 0).astype(jnp.float32),
    }


def kto_reference_point(mismatched_logps: Array, mismatched_ref_logps: Array) -> Array:
    """KTO's reference point z₀ = max(0, mean_{i≠j} [log π(y_j|x_i) − log π_ref(y_j|x_i)]).

    Estimated from mismatched prompt/response pairs (its own forward pass), with stop-gradient.
    """
    kl = jnp.mean(mismatched_logps - mismatched_ref_logps)
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def kto(
    logps: Array,
    ref_logps: Array,
    desirable: Array,
    reference_point: Array,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """KTO (Ethayarajh et al. 2024) on unpaired examples, r_θ = log π(y|x) − log π_ref(y|x).

    desirable:   λ_D (1 − σ(β (r_θ − z₀)));  undesirable: λ_U (1 − σ(β (z₀ − r_θ))).
    """
    reward = logps - ref_logps
    desirable = desirable.astype(bool)
    losses = jnp.where(
        desirable,
        desirable_weight * (1 - jax.nn.sigmoid(beta * (reward - reference_point))),
        undesirable_weight * (1 - jax.nn.sigmoid(beta * (reference_point - reward))),
    )
    return losses, {"reward": beta * reward, "desirable": desirable.astype(jnp.float32)}
