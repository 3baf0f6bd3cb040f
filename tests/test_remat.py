"""Rematerialization policies (``ModelConfig.remat``): the same gradients as no remat, in
unrolled and scanned blocks; ``True`` / ``False`` of older configs mean ``full`` / ``none``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax import sharding
from irl_jax.models import Transformer, preset
from irl_jax.models.config import REMAT_POLICIES
from irl_jax.objectives.logprobs import token_logprobs

CFG = preset("llama-tiny", vocab_size=97, num_layers=2)
IDS = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, 11)), jnp.int32)


def gradients(cfg, params):
    """∇ of the mean next-token NLL (the SFT loss) with respect to every param."""

    def nll(p):
        logits = Transformer(cfg).apply({"params": p}, IDS).logits
        return -jnp.mean(token_logprobs(logits[:, :-1], IDS[:, 1:]))

    return jax.jit(jax.grad(nll))(params)


@pytest.mark.parametrize(
    ("scan_layers", "policies"),
    [(True, REMAT_POLICIES[1:]), (False, ("full", "dots_with_no_batch_dims_saveable"))],
)
def test_remat_policies_give_the_gradients_of_no_remat(scan_layers, policies):
    """Every policy inside ``nn.scan`` (offloading included: XLA's CPU backend has a pinned
    host memory space too); two of them on unrolled blocks."""
    base = CFG.replace(scan_layers=scan_layers)
    params = sharding.unbox(Transformer(base).init(jax.random.key(0), IDS)["params"])
    expected = gradients(base, params)
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for policy in policies:
        jax.tree.map(close, gradients(base.replace(remat=policy), params), expected)


def test_boolean_remat_means_full_or_none():
    assert CFG.replace(remat=True).remat == "full"
    assert CFG.replace(remat="True").remat == "full"  # a command-line --config...remat=True
    assert CFG.replace(remat=False).remat == "none"
    with pytest.raises(ValueError, match="remat='everything'"):
        CFG.replace(remat="everything")
