"""Adversarial imitation objectives: hand-computed values, the divergence identities at the
optimal discriminator on a 2-token toy, and a discriminator that reaches the Bayes accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from irl_jax.objectives import adversarial as adv

SOFTPLUS = lambda x: float(np.log1p(np.exp(x)))  # −log σ(−x) = −log(1 − σ(x))


def test_discriminator_loss_hand_computed():
    demo, policy = jnp.array([2.0, -1.0]), jnp.array([0.5])
    # ½ mean(−log σ(2), −log σ(−1)) + ½ (−log σ(−0.5))
    expected = 0.5 * np.mean([SOFTPLUS(-2.0), SOFTPLUS(1.0)]) + 0.5 * SOFTPLUS(0.5)
    np.testing.assert_allclose(adv.discriminator_loss(demo, policy), expected, rtol=1e-6)
    # Label smoothing ε: targets 1 − ε and ε; ℓ(h, y) = softplus(h) − y h.
    eps = 0.1
    demo_terms = [SOFTPLUS(2.0) - 0.9 * 2.0, SOFTPLUS(-1.0) + 0.9 * 1.0]
    expected = 0.5 * np.mean(demo_terms) + 0.5 * (SOFTPLUS(0.5) - eps * 0.5)
    np.testing.assert_allclose(
        adv.discriminator_loss(demo, policy, label_smoothing=eps), expected, rtol=1e-6
    )
    # Weights drop rows: a zero-weight policy row changes nothing.
    np.testing.assert_allclose(
        adv.discriminator_loss(demo, jnp.array([0.5, 7.0]), policy_weights=jnp.array([1.0, 0.0])),
        adv.discriminator_loss(demo, policy),
        rtol=1e-6,
    )
    accuracy = adv.discriminator_accuracy(demo, jnp.array([0.5, -3.0, 0.0]))
    np.testing.assert_allclose(accuracy, (0.5, 0.5), rtol=1e-6)  # policy: wrong, right, tie


def test_policy_reward_hand_computed():
    h = jnp.array([-2.0, 0.0, 1.5])
    np.testing.assert_allclose(adv.policy_reward(h, "airl"), h)
    np.testing.assert_allclose(
        adv.policy_reward(h, "gail"), [SOFTPLUS(-2.0), np.log(2.0), SOFTPLUS(1.5)], rtol=1e-6
    )
    np.testing.assert_allclose(
        adv.policy_reward(h, "fairl"),
        [2.0 * np.exp(-2.0), 0.0, -1.5 * np.exp(1.5)],
        rtol=1e-6,
    )
    # FAIRL clips h to ±h_max before the exponential (and in the factor).
    np.testing.assert_allclose(
        adv.policy_reward(jnp.array([30.0, -30.0]), "fairl", h_max=3.0),
        [-3.0 * np.exp(3.0), 3.0 * np.exp(-3.0)],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="divergence 'js'"):
        adv.policy_reward(h, "js")


def test_token_level_airl():
    f = jnp.array([[0.5, -1.0, 2.0]])
    logp = jnp.array([[-0.2, -1.5, -0.7]])
    mask = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(adv.airl_token_rewards(f, logp, mask), [[0.7, 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(adv.airl_sequence_logits(f, logp, mask), [1.2], rtol=1e-6)
    grads = jnp.ones((1, 3, 2)) * jnp.array([1.0, 2.0])
    np.testing.assert_allclose(adv.gradient_penalty(grads, mask), [2 * 5.0], rtol=1e-6)


def test_optimal_discriminator_gives_the_divergences_on_a_two_token_toy():
    """Two "responses" (tokens) with π = (0.3, 0.7), p_demo = (0.8, 0.2): at h* = log(p/π),
    E_π[r_airl] = −KL(π‖p), E_π[r_fairl] = −KL(p‖π), and h* minimizes the discriminator
    loss in expectation (zero gradient)."""
    pi, p = np.array([0.3, 0.7]), np.array([0.8, 0.2])
    h_star = jnp.asarray(np.log(p / pi), jnp.float32)
    expect = lambda r: float(np.sum(pi * np.asarray(r, np.float64)))
    reverse_kl = float(np.sum(pi * np.log(pi / p)))
    forward_kl = float(np.sum(p * np.log(p / pi)))
    np.testing.assert_allclose(expect(adv.policy_reward(h_star, "airl")), -reverse_kl, atol=1e-6)
    np.testing.assert_allclose(
        expect(adv.policy_reward(h_star, "fairl", h_max=50.0)), -forward_kl, atol=1e-6
    )
    # GAIL: E_π[softplus(h*)] = E_π[−log(π / (p + π))].
    np.testing.assert_allclose(
        expect(adv.policy_reward(h_star, "gail")), np.sum(pi * np.log((p + pi) / pi)), atol=1e-6
    )

    def expected_loss(h):  # E over both classes, written as weighted rows
        return adv.discriminator_loss(
            h, h, demo_weights=jnp.asarray(p), policy_weights=jnp.asarray(pi)
        )

    np.testing.assert_allclose(jax.grad(expected_loss)(h_star), [0.0, 0.0], atol=1e-6)


def test_trained_discriminator_reaches_the_bayes_accuracy():
    """A frozen categorical "policy" π and demonstrator p over 16 responses (known); a tabular
    discriminator trained by Adam on fresh samples of both ends within 0.02 of the Bayes
    accuracy ½ Σ_y max(p(y), π(y)), its accuracy computed exactly under p and π."""
    rng = np.random.default_rng(0)
    p, pi = rng.dirichlet(np.ones(16)), rng.dirichlet(np.ones(16))
    bayes = 0.5 * np.maximum(p, pi).sum()
    optimizer = optax.adam(0.05)
    logp, logpi = jnp.log(jnp.asarray(p)), jnp.log(jnp.asarray(pi))

    def step(carry, key):
        h, opt_state = carry
        demo_key, policy_key = jax.random.split(key)
        demo = jax.random.categorical(demo_key, logp, shape=(256,))
        policy = jax.random.categorical(policy_key, logpi, shape=(256,))
        loss = lambda h: adv.discriminator_loss(h[demo], h[policy])
        updates, opt_state = optimizer.update(jax.grad(loss)(h), opt_state)
        return (optax.apply_updates(h, updates), opt_state), None

    h0 = jnp.zeros(16)
    (h, _), _ = jax.jit(lambda keys: jax.lax.scan(step, (h0, optimizer.init(h0)), keys))(
        jax.random.split(jax.random.key(1), 1500)
    )
    h = np.asarray(h)
    accuracy = 0.5 * (p * (h > 0)).sum() + 0.5 * (pi * (h < 0)).sum()
    print(f"accuracy {accuracy:.4f}, Bayes {bayes:.4f}")
    assert bayes - 0.02 <= accuracy <= bayes + 1e-9
    assert bayes > 0.6  # the toy separates the two distributions
