"""Reward-model losses and ensemble aggregation against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax.objectives import reward

LOG1P_EXP = lambda x: float(np.log1p(np.exp(x)))  # −log σ(−x)


def test_bradley_terry_variants():
    chosen, rejected = jnp.array([2.0]), jnp.array([1.0])
    np.testing.assert_allclose(reward.bradley_terry(chosen, rejected), [0.31326169], rtol=1e-6)
    np.testing.assert_allclose(
        reward.bradley_terry(chosen, rejected, margin=0.5), [LOG1P_EXP(-0.5)], rtol=1e-6
    )
    np.testing.assert_allclose(
        reward.bradley_terry(chosen, rejected, label_smoothing=0.1),
        [0.9 * 0.31326169 + 0.1 * 1.31326169],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        reward.bradley_terry(chosen, rejected, centering=0.01), [0.31326169 + 0.09], rtol=1e-6
    )
    grads = jax.grad(lambda r: reward.bradley_terry(r[0], r[1]).sum())(
        jnp.stack([chosen, rejected])
    )
    sig = 1 / (1 + np.e)  # σ(−1)
    np.testing.assert_allclose(grads[:, 0], [-sig, sig], rtol=1e-6)


def test_classification_and_ranking():
    losses = reward.classification(jnp.array([0.0, 2.0]), jnp.array([True, False]))
    np.testing.assert_allclose(losses, [np.log(2), LOG1P_EXP(2.0)], rtol=1e-6)
    ranked = reward.ranking(jnp.array([[3.0, 2.0, 0.0]]))
    pairs = [LOG1P_EXP(-1.0), LOG1P_EXP(-3.0), LOG1P_EXP(-2.0)]  # (1,2), (1,3), (2,3)
    np.testing.assert_allclose(ranked, [np.mean(pairs)], rtol=1e-6)
    # K = 2 is exactly Bradley–Terry.
    np.testing.assert_allclose(reward.ranking(jnp.array([[2.0, 1.0]])), [0.31326169], rtol=1e-6)


def test_ensemble_aggregation():
    r = jnp.array([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(reward.aggregate_ensemble(r, "mean"), [3.0])
    np.testing.assert_allclose(reward.aggregate_ensemble(r, "wco"), [1.0])
    # Var = ((−2)² + (−1)² + 3²) / 3 = 14/3; 3 − 0.5 · 14/3.
    np.testing.assert_allclose(
        reward.aggregate_ensemble(r, "uwo", penalty=0.5), [3 - 7 / 3], rtol=1e-6
    )
    with pytest.raises(ValueError, match="'median'"):
        reward.aggregate_ensemble(r, "median")


def test_process_reward_at_step_boundaries_only():
    logits = jnp.array([[0.0, 2.0, -1.0, 5.0], [9.0, 9.0, 9.0, 9.0]])
    step_mask = jnp.array([[0, 1, 0, 1], [0, 0, 0, 0]])
    labels = jnp.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    losses = reward.process_reward(logits, step_mask, labels)
    np.testing.assert_allclose(losses, [(LOG1P_EXP(-2.0) + LOG1P_EXP(5.0)) / 2, 0.0], rtol=1e-6)


def test_pairwise_accuracy_ties():
    acc = reward.pairwise_accuracy(jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 0.0, 3.0]))
    np.testing.assert_array_equal(acc, [1.0, 0.5, 0.0])
