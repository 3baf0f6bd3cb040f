"""IQ-Learn's loss: the SFT NLL token by token without χ², a hand-computed 3-token example with
it, the cut-row rule and the γ = 1 sequence identity of the implied reward."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax.objectives.imitation import implied_rewards, iq_learn_loss
from irl_jax.objectives.logprobs import next_token_logprobs
from irl_jax.objectives.sft import nll_loss

EOS = 2


def random_batch(seed=0, b=3, t=7, v=11):
    k1, k2 = jax.random.split(jax.random.key(seed))
    logits = 3.0 * jax.random.normal(k1, (b, t, v))
    ids = jax.random.randint(k2, (b, t), 3, v)
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])
    ids = ids.at[0, 5].set(EOS).at[2, 4].set(EOS)  # rows 0 and 2 end in eos, row 1 is cut
    return logits, ids, mask


def test_without_chi2_it_is_the_sft_nll_token_by_token():
    logits, ids, mask = random_batch()
    logps = next_token_logprobs(logits, ids)
    expected, _ = nll_loss(logps, mask)
    for gamma in (1.0, 0.9):
        loss, metrics = iq_learn_loss(logits, ids, mask, chi2_coef=0.0, gamma=gamma, eos_ids=[EOS])
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(metrics["nll"], expected, rtol=1e-5)
    # Token by token: each token's loss (its own row, all others masked) is −log π(a|s).
    for row, t in zip(*np.nonzero(np.asarray(mask))):
        one = jnp.zeros_like(mask).at[row, t].set(1)
        loss, _ = iq_learn_loss(logits, ids, one, chi2_coef=0.0, gamma=1.0, eos_ids=[EOS])
        np.testing.assert_allclose(loss, -logps[row, t], rtol=1e-5)


def test_a_hand_computed_three_token_example():
    """Prompt token 0, then targets a=1, b=0, eos=2 over a vocabulary of 3, γ = 0.5, c = 0.25."""
    logits = jnp.array(
        [[[1.0, 2.0, 0.0], [0.5, 0.0, -1.0], [0.0, 0.0, 3.0], [2.0, 1.0, 0.0]]]
    )  # position t predicts token t + 1
    ids = jnp.array([[0, 1, 0, 2]])
    mask = jnp.array([[0, 1, 1, 1]])
    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))
    v0, v1, v2 = lse([1, 2, 0]), lse([0.5, 0, -1]), lse([0, 0, 3])
    q = [2.0, 0.5, 3.0]  # logit of 1 at s0, of 0 at s1, of eos at s2
    v, v_next = [v0, v1, v2], [v1, v2, 0.0]  # V after eos = 0
    gamma, c = 0.5, 0.25
    r = [q[i] - gamma * v_next[i] for i in range(3)]
    likelihood = [-(r[i]) + (v[i] - gamma * v_next[i]) for i in range(3)]
    expected = sum(likelihood[i] + c * r[i] ** 2 for i in range(3)) / 3
    loss, metrics = iq_learn_loss(logits, ids, mask, chi2_coef=c, gamma=gamma, eos_ids=[EOS])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["chi2"], sum(x**2 for x in r) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["reward_mean"], sum(r) / 3, rtol=1e-6)
    np.testing.assert_allclose(
        implied_rewards(logits, ids, mask, gamma=gamma, eos_ids=[EOS])[0], [0.0, *r], rtol=1e-6
    )
    # Cut before the eos (mask ends at b): b's χ² term is dropped, its likelihood term stays.
    cut = jnp.array([[0, 1, 1, 0]])
    loss, _ = iq_learn_loss(logits, ids, cut, chi2_coef=c, gamma=gamma, eos_ids=[EOS])
    expected_cut = (likelihood[0] + c * r[0] ** 2 + likelihood[1]) / 2
    np.testing.assert_allclose(loss, expected_cut, rtol=1e-6)
    # Without an eos id nothing is terminal: the eos transition is a cut one.
    loss, _ = iq_learn_loss(logits, ids, mask, chi2_coef=c, gamma=gamma)
    assert not np.isclose(loss, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_sequence_implied_reward_at_gamma_one_is_logp_plus_v0(seed):
    """Σ_t (Q_t − V′_t) = log π(y|x) + V(s₀) on rows that end in eos."""
    logits, ids, mask = random_batch(seed)
    rewards = implied_rewards(logits, ids, mask, gamma=1.0, eos_ids=[EOS]).sum(-1)
    logp = (next_token_logprobs(logits, ids) * mask).sum(-1)
    first = jnp.argmax(mask, axis=-1)  # the first target; V(s₀) from the logits before it
    v0 = jax.nn.logsumexp(logits[jnp.arange(3), first - 1], axis=-1)
    for row in (0, 2):  # the rows that end in eos
        np.testing.assert_allclose(rewards[row], logp[row] + v0[row], rtol=1e-5)


def test_chi2_gradient_moves_the_logit_level():
    """Without χ² the loss is shift-invariant in each position's logits; with it, it is not."""
    logits, ids, mask = random_batch()
    shifted = logits + 5.0
    for c, same in ((0.0, True), (0.5, False)):
        a, _ = iq_learn_loss(logits, ids, mask, chi2_coef=c, eos_ids=[EOS])
        b, _ = iq_learn_loss(shifted, ids, mask, chi2_coef=c, eos_ids=[EOS])
        assert np.isclose(a, b, rtol=1e-5) == same
