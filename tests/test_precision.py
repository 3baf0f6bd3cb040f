"""Mixed precision (``model_overrides.dtype=bfloat16``, ``param_dtype=float32``): bf16 compute
on fp32 master weights and fp32 optimizer state, fp32 log-probs; its SFT losses track fp32's."""

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax import sharding
from irl_jax.algorithms import experiment_config, sft
from irl_jax.algorithms import setup as setup_lib
from irl_jax.models import Transformer
from irl_jax.train import make_optimizer, supervised_step

STEPS, ROWS = 50, 16


def sft_losses(dtype):
    """Per-step SFT losses of a one-layer gpt2-tiny computing in ``dtype`` (fp32 params), and
    its final state."""
    config = experiment_config("sft")
    config.model_overrides.update(dtype=dtype, param_dtype="float32", num_layers=1)
    config.data.update(num_train=STEPS * ROWS, max_length=32)
    setup = setup_lib.setup(config, sft.load_data)
    optimizer, _ = make_optimizer(num_steps=STEPS, learning_rate=3e-3, warmup_steps=5)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=())
    step = supervised_step(sft.make_loss_fn(setup.model_config), optimizer, shardings, setup.mesh)
    train, _ = setup.data
    data = sharding.batch_sharding(setup.mesh)
    losses = []
    for i in range(STEPS):
        batch = {k: v[i * ROWS : (i + 1) * ROWS] for k, v in train.items()}
        state, metrics = step(state, sharding.global_batch(batch, data))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state, setup


def test_bf16_compute_with_fp32_master_weights_tracks_fp32():
    fp32, _, _ = sft_losses("float32")
    mixed, state, setup = sft_losses("bfloat16")
    # Master weights and Adam's moments stay fp32.
    policy = state.models["policy"]
    assert {x.dtype for x in jax.tree.leaves(policy.params)} == {jnp.dtype("float32")}
    moments = [x for x in jax.tree.leaves(policy.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype("float32")}
    # The forward computes in bf16; the logits (and so log-probs and losses) are fp32.
    ids = jnp.ones((2, 5), jnp.int32)
    out = Transformer(setup.model_config).apply({"params": policy.params}, ids)
    assert out.hidden_states.dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32
    assert fp32[-1] < 0.8 * fp32[0]  # it trains
    assert np.mean(np.abs(mixed - fp32) / fp32) <= 0.01
