"""Policy-gradient estimators and losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax.objectives import policy_gradient as pg

REWARDS = jnp.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])


def test_group_advantages_unbiased_std_and_eps():
    adv = pg.group_advantages(REWARDS, 4, scale="group", eps=1e-4)
    std = np.sqrt(4 * 0.25 / 3)  # ddof = 1: sqrt(1/3), not ddof = 0's 0.5
    expected = 0.5 / (std + 1e-4)
    np.testing.assert_allclose(
        adv, [expected, -expected, -expected, expected, 0, 0, 0, 0], rtol=1e-6
    )
    # A constant group gives 0 / (0 + ε) = 0, not NaN; a large ε shrinks advantages.
    np.testing.assert_allclose(pg.group_advantages(REWARDS, 4, eps=1.0)[0], 0.5 / (std + 1))
    batch = pg.group_advantages(REWARDS, 4, scale="batch", eps=0.0)
    batch_std = np.sqrt(13.5 / 7)  # deviations from 1.75: squares sum to 13.5
    np.testing.assert_allclose(batch[:4], np.array([0.5, -0.5, -0.5, 0.5]) / batch_std, rtol=1e-6)
    np.testing.assert_allclose(
        pg.group_advantages(REWARDS, 4, scale="none"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    )
    with pytest.raises(ValueError, match="not a multiple"):
        pg.group_advantages(REWARDS, 3)


def test_rloo_remax_reinforce():
    np.testing.assert_allclose(
        pg.rloo_advantages(REWARDS[:4], 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6
    )
    np.testing.assert_allclose(
        pg.remax_advantages(jnp.array([1.0, 0.5]), jnp.array([0.5, 0.5])), [0.5, 0.0]
    )
    np.testing.assert_allclose(pg.reinforce_advantages(jnp.array([1.0, 3.0]), 2.0), [-1.0, 1.0])


def test_kl_estimators_match_definitions():
    logp, ref = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
    d = np.log(2)
    np.testing.assert_allclose(pg.kl_estimate(logp, ref, "k1"), [d], rtol=1e-6)
    np.testing.assert_allclose(pg.kl_estimate(logp, ref, "k2"), [d**2 / 2], rtol=1e-6)
    np.testing.assert_allclose(pg.kl_estimate(logp, ref, "k3"), [0.5 + d - 1], rtol=1e-5)
    # Over samples from π, E[k1] = E[k3] = KL(π ‖ π_ref) (k3 is unbiased and non-negative).
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.3, 0.3, 0.4])
    tokens = jax.random.categorical(jax.random.key(0), jnp.log(p), shape=(200_000,))
    lp, lq = jnp.log(p)[tokens], jnp.log(q)[tokens]
    exact = float(np.sum(p * np.log(p / q)))
    assert abs(float(pg.kl_estimate(lp, lq, "k3").mean()) - exact) < 0.01
    assert float(pg.kl_estimate(lp, lq, "k3").min()) >= 0
    rewards = pg.kl_penalized_rewards(
        jnp.array([1.0]), jnp.array([[0.1, 0.2, 9.0]]), jnp.array([[1, 1, 0]]), beta=0.5
    )
    np.testing.assert_allclose(rewards, [1.0 - 0.5 * 0.3], rtol=1e-6)


def test_clipped_surrogate_boundaries():
    # Just inside / just outside 1 + ε_high (A > 0) and 1 − ε_low (A < 0), ε = 0.2.
    ratios = jnp.array([[1.19, 1.21, 0.81, 0.79, 1.5]])
    advantages = jnp.array([[1.0, 1.0, -1.0, -1.0, -1.0]])
    logps = jnp.log(ratios)
    old = jnp.zeros_like(logps)
    losses, clipped = pg.clipped_surrogate(logps, old, advantages, eps_low=0.2, eps_high=0.2)
    # A < 0 with ρ = 1.5 > 1 + ε: the pessimistic min keeps the unclipped −ρA = 1.5.
    np.testing.assert_allclose(losses, [[-1.19, -1.2, 0.81, 0.8, 1.5]], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [[0, 1, 0, 1, 0]])
    # Gradients w.r.t. log π: −ρA inside the trust region, 0 where the clip is active.
    grad = jax.grad(lambda lp: pg.clipped_surrogate(lp, old, advantages)[0].sum())(logps)
    np.testing.assert_allclose(grad, [[-1.19, 0.0, 0.81, 0.0, 1.5]], rtol=1e-5)
    # DAPO's decoupled ε_high = 0.28 lets positive-advantage ratios grow further.
    losses, _ = pg.clipped_surrogate(logps, old, advantages, eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(losses[0, 1], -1.21, rtol=1e-6)
    # Sequence-level advantages broadcast over tokens.
    seq, _ = pg.clipped_surrogate(logps, old, jnp.array([1.0]))
    assert seq.shape == (1, 5)


def test_aggregation_modes():
    per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(pg.aggregate(per_token, mask, "sequence_mean"), (2 + 4) / 2)
    np.testing.assert_allclose(pg.aggregate(per_token, mask, "token_mean"), 10 / 4)
    np.testing.assert_allclose(
        pg.aggregate(per_token, mask, "constant", max_new_tokens=3), 10 / 6, rtol=1e-6
    )
    with pytest.raises(ValueError, match="max_new_tokens"):
        pg.aggregate(per_token, mask, "constant")


def test_overlong_penalty():
    lengths = jnp.array([6, 8, 10, 11])
    np.testing.assert_allclose(
        pg.overlong_penalty(lengths, max_length=10, buffer=4), [0.0, -0.5, -1.0, -1.0]
    )
