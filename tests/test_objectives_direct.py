"""DPO-family losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax.objectives import direct

# log π(y_w), log π(y_l), log π_ref(y_w), log π_ref(y_l): log-ratio margin = 1 − (−1) = 2.
PAIR = tuple(jnp.array([x]) for x in (-1.0, -3.0, -2.0, -2.0))


def test_dpo_and_cdpo():
    losses, metrics = direct.dpo(*PAIR, beta=0.5)  # h = 1
    np.testing.assert_allclose(losses, [0.31326169], rtol=1e-6)  # log(1 + e^-1)
    np.testing.assert_allclose(metrics["chosen_reward"], [0.5])
    np.testing.assert_allclose(metrics["rejected_reward"], [-0.5])
    np.testing.assert_allclose(metrics["accuracy"], [1.0])
    losses, _ = direct.dpo(*PAIR, beta=0.5, label_smoothing=0.1)
    # 0.9 · log(1 + e^-1) + 0.1 · log(1 + e^1)
    np.testing.assert_allclose(losses, [0.9 * 0.31326169 + 0.1 * 1.31326169], rtol=1e-6)


def test_robust_dpo():
    np.testing.assert_allclose(direct.robust_dpo(*PAIR, beta=0.5)[0], [0.31326169], rtol=1e-6)
    losses, _ = direct.robust_dpo(*PAIR, beta=0.5, label_smoothing=0.1)
    np.testing.assert_allclose(losses, [(0.9 * 0.31326169 - 0.1 * 1.31326169) / 0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        direct.robust_dpo(*PAIR, beta=0.5, label_smoothing=0.5)


def test_ipo_summed_and_averaged():
    np.testing.assert_allclose(direct.ipo(*PAIR, beta=0.5)[0], [1.0])  # (2 − 1)²
    losses, _ = direct.ipo(
        *PAIR, beta=0.5, chosen_tokens=jnp.array([2.0]), rejected_tokens=jnp.array([4.0])
    )
    np.testing.assert_allclose(losses, [0.0625])  # (1/2 + 1/4 − 1)²
    with pytest.raises(ValueError, match="both"):
        direct.ipo(*PAIR, beta=0.5, chosen_tokens=jnp.array([2.0]))


def test_hinge():
    np.testing.assert_allclose(direct.hinge(*PAIR, beta=0.5)[0], [0.0])
    np.testing.assert_allclose(direct.hinge(*PAIR, beta=0.25)[0], [0.5])


def test_simpo_length_normalization():
    losses, metrics = direct.simpo(
        jnp.array([-2.0]),
        jnp.array([-6.0]),
        jnp.array([4.0]),
        jnp.array([3.0]),
        beta=2.0,
        gamma=0.5,
    )
    np.testing.assert_allclose(metrics["chosen_reward"], [-1.0])
    np.testing.assert_allclose(metrics["rejected_reward"], [-4.0])
    np.testing.assert_allclose(losses, [np.log1p(np.exp(-2.5))], rtol=1e-6)  # 0.078889
    # Doubling a response's length at the same per-token log-prob leaves the loss unchanged.
    same, _ = direct.simpo(
        jnp.array([-4.0]),
        jnp.array([-6.0]),
        jnp.array([8.0]),
        jnp.array([3.0]),
        beta=2.0,
        gamma=0.5,
    )
    np.testing.assert_allclose(same, losses, rtol=1e-6)


def test_orpo_odds_ratio():
    losses, metrics = direct.orpo(
        jnp.array([-2.0]), jnp.array([-6.0]), jnp.array([4.0]), jnp.array([3.0]), lam=0.1
    )
    log_odds_w = -0.5 - np.log(1 - np.exp(-0.5))  # 0.432752
    log_odds_l = -2.0 - np.log(1 - np.exp(-2.0))  # −1.854587
    np.testing.assert_allclose(metrics["log_odds_ratio"], [log_odds_w - log_odds_l], rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], [0.5])
    expected = 0.5 + 0.1 * np.log1p(np.exp(-(log_odds_w - log_odds_l)))  # 0.5096574
    np.testing.assert_allclose(losses, [expected], rtol=1e-5)
    assert np.isfinite(
        jax.grad(
            lambda c: direct.orpo(
                c, jnp.array([-6.0]), jnp.array([4.0]), jnp.array([3.0]), lam=0.1
            )[0].sum()
        )(jnp.array([-1e-9]))
    )


def test_kto_both_branches_and_reference_point():
    z0 = direct.kto_reference_point(jnp.array([-3.0, -1.0]), jnp.array([-2.0, -2.5]))
    np.testing.assert_allclose(z0, 0.25)  # mean(−1, 1.5)
    np.testing.assert_allclose(
        direct.kto_reference_point(jnp.array([-3.0]), jnp.array([-1.0])), 0.0
    )  # clamped at 0
    g = jax.grad(lambda x: direct.kto_reference_point(x, jnp.array([-2.0, -2.5])))(
        jnp.array([-3.0, -1.0])
    )
    np.testing.assert_array_equal(g, [0.0, 0.0])  # stop-gradient
    losses, metrics = direct.kto(
        jnp.array([-1.0, -1.0]),
        jnp.array([-2.0, -2.0]),
        jnp.array([True, False]),
        jnp.array(0.5),
        beta=2.0,
        desirable_weight=1.0,
        undesirable_weight=2.0,
    )
    # r = 1: desirable 1 − σ(2·0.5); undesirable 2·(1 − σ(2·(0.5 − 1))).
    np.testing.assert_allclose(losses, [0.26894142, 2 * 0.73105858], rtol=1e-6)
    np.testing.assert_allclose(metrics["reward"], [2.0, 2.0])
