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


def test_gae_hand_values_and_a_python_loop():
    """γ = 1, λ = 0.95, two rows of different lengths (3 and 2 response tokens): the value after
    a row's last token is 0; masked positions get 0."""
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    values = jnp.array([[0.2, 0.4, 0.6, 9.0], [0.1, 0.3, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    advantages, returns = pg.gae(rewards, values, mask, 1.0, 0.95)
    # Row 0: δ = [0 + .4 − .2, 0 + .6 − .4, 1 + 0 − .6] = [.2, .2, .4].
    a2 = 0.4
    a1 = 0.2 + 0.95 * a2
    a0 = 0.2 + 0.95 * a1
    # Row 1: δ = [.5 + .3 − .1, −1 + 0 − .3] = [.7, −1.3].
    b1 = -1.3
    b0 = 0.7 + 0.95 * b1
    np.testing.assert_allclose(advantages, [[a0, a1, a2, 0], [b0, b1, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(
        returns, [[a0 + 0.2, a1 + 0.4, a2 + 0.6, 0], [b0 + 0.1, b1 + 0.3, 0, 0]], rtol=1e-6
    )
    # A straightforward loop on random inputs, γ < 1.
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(2, 5, 7))
    lengths = rng.integers(1, 8, 5)
    mask = (np.arange(7)[None] < lengths[:, None]).astype(np.float32)
    gamma, lam = 0.9, 0.8
    expected = np.zeros((5, 7))
    for i in range(5):
        n, running = lengths[i], 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            running = rewards[i, t] + gamma * next_value - values[i, t] + gamma * lam * running
            expected[i, t] = running
    advantages, returns = pg.gae(jnp.asarray(rewards), jnp.asarray(values), mask, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns, (expected + values) * mask, rtol=1e-5, atol=1e-6)


def test_token_rewards_put_a_sequence_score_on_the_last_token():
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(
        pg.token_rewards(jnp.array([2.0, -1.0]), mask), [[0, 0, 2, 0], [-1, 0, 0, 0]]
    )
    dense = jnp.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(pg.token_rewards(dense, mask), [[0, 1, 2, 0], [4, 0, 0, 0]])


def test_clipped_value_loss_and_adaptive_kl_hand_values():
    values = jnp.array([[1.0, 0.5, 3.0]])
    old = jnp.array([[0.5, 0.5, 0.0]])
    returns = jnp.array([[2.0, 1.0, 0.0]])
    losses, clipped = pg.clipped_value_loss(values, old, returns, clip_eps=0.2)
    # Token 0: V − V_old = .5 → clipped to .7: max((1 − 2)², (.7 − 2)²) / 2 = 1.69 / 2.
    # Token 1: unchanged value: (.5 − 1)² / 2. Token 2: max(9, .04) / 2 (the clip does not bind).
    np.testing.assert_allclose(losses, [[0.845, 0.125, 4.5]], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [[1.0, 0.0, 0.0]])
    # Inside the trust region nothing counts as clipped, although in float32
    # −.13 + (.07 − (−.13)) rounds above .07 (which once made the clip fraction noise).
    value, old_value = jnp.array([[0.07]]), jnp.array([[-0.13]])
    assert float((old_value + (value - old_value))[0, 0]) != float(value[0, 0])
    losses, clipped = pg.clipped_value_loss(value, old_value, jnp.array([[2.0]]), clip_eps=0.2)
    assert float(clipped[0, 0]) == 0.0
    assert float(losses[0, 0]) == float(0.5 * (value[0, 0] - 2.0) ** 2)
    mask = jnp.array([[1, 1, 0]])
    loss = pg.value_loss(values, old, returns, mask, 0.2)
    np.testing.assert_allclose(loss, (0.845 + 0.125) / 2, rtol=1e-6)
    # β · (1 + clip(e, ±0.2) · n / H): e = (6 − 4)/4 = .5 → .2; e = (1 − 4)/4 → −.2; e = .1.
    np.testing.assert_allclose(pg.adaptive_kl_coef(0.1, 6.0, 4.0, 64, 640), 0.1 * 1.02)
    np.testing.assert_allclose(pg.adaptive_kl_coef(0.1, 1.0, 4.0, 64, 640), 0.1 * 0.98)
    np.testing.assert_allclose(pg.adaptive_kl_coef(0.1, 4.4, 4.0, 64, 640), 0.1 * 1.01)


def test_whitening_and_explained_variance():
    x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    mask = jnp.array([[1, 1, 1, 0]])
    np.testing.assert_allclose(pg.whiten(x, mask), [[-1, 0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(pg.whiten(x, mask, shift_mean=False), [[1, 2, 3, 0]], atol=1e-6)
    targets = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    assert float(pg.explained_variance(targets, targets, mask)) == 1.0
    mean = jnp.full((1, 4), 2.0)  # the masked mean predicts nothing
    np.testing.assert_allclose(pg.explained_variance(mean, targets, mask), 0.0, atol=1e-6)
