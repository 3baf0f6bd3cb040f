"""Log-prob alignment, masked reductions, entropy and the SFT loss on hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.objectives.logprobs import (
    masked_mean,
    next_token_entropy,
    next_token_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from irl_jax.objectives.sft import nll_loss


def test_token_logprobs_and_alignment():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = jnp.array([[0, 2, 1]])
    # Entry t scores token t with the logits of position t-1; entry 0 is 0.
    np.testing.assert_allclose(
        next_token_logprobs(logits, ids), [[0.0, np.log(0.25), np.log(0.1)]], rtol=1e-6
    )
    np.testing.assert_allclose(
        token_logprobs(logits, ids), [[np.log(0.5), np.log(0.8), np.log(1 / 3)]], rtol=1e-6
    )
    # Temperature 2: softmax(log p / 2) ∝ sqrt(p).
    tempered = token_logprobs(logits[:, :1], ids[:, :1], temperature=2.0)
    p = np.sqrt([0.5, 0.25, 0.25])
    np.testing.assert_allclose(tempered, [[np.log(p[0] / p.sum())]], rtol=1e-6)
    assert token_logprobs(logits.astype(jnp.bfloat16), ids).dtype == jnp.float32


def test_masked_reductions_and_entropy():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(sequence_logprobs(x, mask), [3.0, 0.0])
    np.testing.assert_allclose(masked_mean(x, mask), 1.5)
    np.testing.assert_allclose(masked_mean(x, mask, axis=-1), [1.5, 0.0])
    logits = jnp.log(jnp.array([[[0.5, 0.5, 1e-30], [0.25, 0.25, 0.5]]]))
    np.testing.assert_allclose(next_token_entropy(logits), [[0.0, np.log(2)]], rtol=1e-5)


def test_nll_loss_is_token_weighted():
    token_logps = jnp.log(jnp.array([[1.0, 0.5, 0.25], [1.0, 0.5, 1.0]]))
    loss_mask = jnp.array([[0, 1, 1], [0, 1, 0]])
    loss, sums = nll_loss(token_logps, loss_mask)
    expected = -(np.log(0.5) + np.log(0.25) + np.log(0.5)) / 3
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(sums["tokens"], 3.0)
    grad = jax.grad(lambda t: nll_loss(t, loss_mask)[0])(token_logps)
    np.testing.assert_allclose(grad, -loss_mask / 3.0, rtol=1e-6)
