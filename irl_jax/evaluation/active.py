"""Active preference selection: which pairs to send to annotators next (SURVEY §3).

Under a linear Bradley–Terry model on embeddings, r(x, y) = wᵀφ(x, y), a pair i with feature
difference Δφ_i = φ(y_i¹) − φ(y_i²) and win probability p_i = σ(wᵀΔφ_i) contributes
p_i (1 − p_i) Δφ_i Δφ_iᵀ to the Fisher information of w. A D-optimal batch S maximizes

    log det(λI + Σ_{i∈S} p_i (1 − p_i) Δφ_i Δφ_iᵀ),

i.e. it shrinks the volume of the confidence ellipsoid of w (Kiefer & Wolfowitz 1960; for
preference learning e.g. Mukherjee et al. 2024). ``d_optimal_selection`` builds S greedily: by
the matrix determinant lemma, adding pair i raises the log det by log(1 + w_i Δφ_iᵀ A⁻¹ Δφ_i),
and A⁻¹ is kept current with the Sherman–Morrison rank-one update, so each pick costs O(N d²).
Baselines: ``random_selection`` and ``max_uncertainty_selection`` (p closest to ½).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

SELECTIONS = ("d_optimal", "random", "max_uncertainty")


def bt_probabilities(weights: np.ndarray, feature_diffs: np.ndarray) -> np.ndarray:
    """p_i = σ(wᵀΔφ_i) ``[N]`` of a linear BT model ``weights [d]``, ``feature_diffs [N, d]``."""
    logits = np.asarray(feature_diffs, np.float64) @ np.asarray(weights, np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def information_log_det(
    feature_diffs: np.ndarray, probabilities: np.ndarray, regularization: float = 1.0
) -> float:
    """log det(λI + Σ_i p_i (1 − p_i) Δφ_i Δφ_iᵀ) of the given pairs, computed directly.

    Args:
      feature_diffs: ``[M, d]`` Δφ of the selected pairs.
      probabilities: ``[M]`` their BT win probabilities p_i.
      regularization: λ > 0 (the prior precision, so the determinant of an empty set is λ^d).
    """
    diffs = np.asarray(feature_diffs, np.float64)
    weights = np.asarray(probabilities, np.float64) * (1.0 - np.asarray(probabilities))
    information = regularization * np.eye(diffs.shape[1]) + (diffs * weights[:, None]).T @ diffs
    sign, log_det = np.linalg.slogdet(information)
    if sign <= 0:
        raise ValueError("the information matrix is not positive definite (λ must be > 0)")
    return float(log_det)


@partial(jax.jit, static_argnames="batch_size")
def _greedy(diffs: jax.Array, weights: jax.Array, batch_size: int, regularization: jax.Array):
    dim = diffs.shape[1]

    def pick(carry, _):
        inverse, log_det, taken = carry
        quadratic = jnp.einsum("nd,de,ne->n", diffs, inverse, diffs)
        gains = jnp.where(taken, -jnp.inf, jnp.log1p(weights * quadratic))
        i = jnp.argmax(gains)
        u = inverse @ diffs[i]
        inverse = inverse - weights[i] * jnp.outer(u, u) / (1.0 + weights[i] * diffs[i] @ u)
        return (inverse, log_det + gains[i], taken.at[i].set(True)), (i, log_det + gains[i])

    init = (
        jnp.eye(dim, dtype=diffs.dtype) / regularization,
        dim * jnp.log(regularization),
        jnp.zeros(diffs.shape[0], bool),
    )
    _, (indices, log_dets) = jax.lax.scan(pick, init, None, length=batch_size)
    return indices, log_dets


def d_optimal_selection(
    feature_diffs: np.ndarray,
    probabilities: np.ndarray,
    batch_size: int,
    regularization: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy D-optimal batch from a candidate pool (see the module docstring).

    Args:
      feature_diffs: ``[N, d]`` Δφ of the candidate pairs.
      probabilities: ``[N]`` current BT estimates p_i of the candidates.
      batch_size: pairs to select (≤ N); each pair is selected at most once.
      regularization: λ > 0.

    Returns:
      ``(indices [batch_size], log_dets [batch_size])``: the picks in order and the log det after
      each pick (float32, updated through the determinant lemma).
    """
    diffs = jnp.asarray(feature_diffs, jnp.float32)
    _check(len(diffs), batch_size, regularization)
    p = jnp.asarray(probabilities, jnp.float32)
    indices, log_dets = _greedy(diffs, p * (1.0 - p), batch_size, jnp.float32(regularization))
    return np.asarray(indices), np.asarray(log_dets)


def random_selection(num_candidates: int, batch_size: int, seed: int) -> np.ndarray:
    """``batch_size`` distinct candidates uniformly at random."""
    _check(num_candidates, batch_size)
    return np.random.default_rng(seed).choice(num_candidates, batch_size, replace=False)


def max_uncertainty_selection(probabilities: np.ndarray, batch_size: int) -> np.ndarray:
    """The ``batch_size`` candidates whose p_i is closest to ½ (ties by index)."""
    p = np.asarray(probabilities, np.float64)
    _check(len(p), batch_size)
    return np.argsort(np.abs(p - 0.5), kind="stable")[:batch_size]


def select_pairs(
    method: str,
    feature_diffs: np.ndarray,
    probabilities: np.ndarray,
    batch_size: int,
    *,
    regularization: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Indices of ``batch_size`` pairs chosen by ``method`` (one of ``SELECTIONS``)."""
    if method == "d_optimal":
        return d_optimal_selection(feature_diffs, probabilities, batch_size, regularization)[0]
    if method == "random":
        return random_selection(len(feature_diffs), batch_size, seed)
    if method == "max_uncertainty":
        return max_uncertainty_selection(probabilities, batch_size)
    raise ValueError(f"selection method {method!r}; expected one of {SELECTIONS}")


def _check(num_candidates: int, batch_size: int, regularization: float = 1.0) -> None:
    if not 0 < batch_size <= num_candidates:
        raise ValueError(f"batch_size={batch_size} must be in [1, {num_candidates}] (pool size)")
    if regularization <= 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
