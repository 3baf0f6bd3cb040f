"""Adversarial IRL (GAIL / AIRL / FAIRL): one compile per shape and a (2, 2, 2) mesh equal to one
device (token-level AIRL with a replay buffer and the embedding-space gradient penalty), exact
kill-and-resume of the policy, the discriminator, both optimizers, the replay buffer and both data
streams, the discriminator's initialization and the replay ring, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import sharding
from irl_jax.algorithms import adversarial, discriminator, experiment_config, validate_config
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.train import train_loop


def adversarial_config(**section):
    config = experiment_config("adversarial")
    config.batch_size = 8
    config.eval_every = 0
    config.log_every = 1
    config.export = False
    config.data.max_length = 32
    config.data.num_train = 64
    config.policy_eval.num_prompts = 8
    config.policy_eval.max_new_tokens = 8
    config.sampling.max_new_tokens = 8
    config.sampling.group_size = 2
    config.model_overrides.num_layers = 1
    discriminator = section.pop("discriminator", {})
    config.adversarial.update(section)
    config.adversarial.discriminator.update(discriminator)
    return config


def run_iterations(config, num, devices=None):
    config.optimizer.name = "sgd"  # no √v normalization: mesh results compare to float noise
    config.adversarial.discriminator.optimizer.name = "sgd"
    built = adversarial.build(config, devices)
    data = sharding.batch_sharding(built.setup.mesh)
    state, history = built.state, []
    with count_compiles() as compiles:
        for i in range(num):
            batch = {k: jax.device_put(next(s), data) for k, s in built.data.items()}
            state, metrics = built.step(state, batch)
            history.append(jax.device_get(metrics))
            if i == 0:
                first = len(compiles)
    assert len(compiles) == first, "the adversarial iteration recompiled"
    return state, history


def test_one_compile_and_the_222_mesh_equals_one_device():
    section = dict(
        token_level=True,
        kl_coef=0.0,
        discriminator=dict(steps=2, replay_size=32, replay_batch_size=8),
    )
    config = adversarial_config(**section)
    config.mesh_shape.update({"data": 1})
    state1, history1 = run_iterations(config, 2, jax.devices()[:1])
    config = adversarial_config(**section)
    config.mesh_shape.update({"data": 2, "fsdp": 2, "tensor": 2})
    state8, history8 = run_iterations(config, 2)
    for m1, m8 in zip(history1, history8):
        for key in m1:
            np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-5, err_msg=key)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    jax.tree.map(close, jax.device_get(state1.models), jax.device_get(state8.models))
    jax.tree.map(close, *jax.device_get((state1.extras, state8.extras)))  # replay, statistics
    assert int(state8.models["discriminator"].step) == 2 * 2
    assert int(state8.models["policy"].step) == 2
    assert int(state8.extras["replay"]["count"]) == 2 * 16  # 8 prompts × 2 samples per step
    assert history8[-1]["replay_fill"] == 1.0


def test_kill_and_resume_is_exact_for_both_models_replay_and_streams(tmp_path):
    config = adversarial_config(
        divergence="gail", discriminator=dict(replay_size=32, replay_batch_size=8)
    )
    step = adversarial.build(config).step  # pure: compiled once, shared by the three runs

    def run(workdir, num_steps):
        built = adversarial.build(config)  # a fresh state and streams: the loop restores them
        train_loop(
            state=built.state,
            state_shardings=built.shardings,
            train_step=step,
            batches=built.data,
            mesh=built.setup.mesh,
            workdir=str(workdir),
            num_steps=num_steps,
            log_every=1,
        )

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)  # "killed" after step 2
    run(tmp_path / "resumed", 4)  # rebuilt from scratch, resumed at 2
    saved = [CheckpointManager(str(tmp_path / n)) for n in ("straight", "resumed")]
    straight, resumed = (manager.read(4) for manager in saved)
    # Both models' params and optimizer states, the reference, the replay buffer, the statistics.
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    assert set(straight["models"]) == {"policy", "discriminator"}
    assert int(straight["extras"]["replay"]["count"]) == 4 * 16
    data = [manager.read_data(4) for manager in saved]
    assert data[0] == data[1] and set(data[0]["streams"]) == {"demos", "prompts"}


def test_replay_ring_and_discriminator_initialization():
    replay = {"rows": {"input_ids": jnp.zeros((4, 2), jnp.int32)}, "count": jnp.int32(0)}
    rows, weight = discriminator.replay_draw(replay, 3, jax.random.key(0))
    np.testing.assert_array_equal(weight, 0.0)  # empty: no weight
    for value in (1, 2, 3):
        replay = discriminator.replay_push(replay, {"input_ids": jnp.full((3, 2), value)})
    # 9 rows pushed into 4 slots: slots 0..3 hold rows 8, 5, 6, 7 (values 3, 2, 3, 3).
    np.testing.assert_array_equal(replay["rows"]["input_ids"][:, 0], [3, 2, 3, 3])
    assert int(replay["count"]) == 9
    rows, weight = discriminator.replay_draw(replay, 64, jax.random.key(1))
    np.testing.assert_array_equal(weight, 1.0)
    assert set(np.unique(rows["input_ids"])) == {2, 3}


@pytest.mark.parametrize("with_lora", [False, True], ids=["full", "lora-embeddings"])
def test_gradient_penalty_takes_the_gradient_in_embedding_space(with_lora):
    """The per-position gradients of the logits with respect to the input embeddings, summed
    over the positions holding token v, are the gradient with respect to row v of the embedding
    table (the embedding is a lookup); and the R1 term is their squared norm. Also for a LoRA
    discriminator whose table is a ``LoraEmbed`` with a trained delta."""
    from irl_jax.models import lora
    from irl_jax.models import source as model_source
    from irl_jax.models.config import preset

    config = preset("gpt2-tiny", num_layers=1)
    if with_lora:
        config = config.replace(lora=lora.LoraConfig(rank=2, embeddings=True))
    module = discriminator.discriminator_module(config, token_level=False)
    params = jax.jit(lambda: sharding.unbox(model_source.init_fn(module, 0)()))()
    ids = jax.random.randint(jax.random.key(1), (3, 6), 4, 40)
    rows = {"input_ids": ids, "attention_mask": jnp.ones_like(ids).at[0, 4:].set(0)}
    logits = discriminator.make_logits(module, token_level=False)
    grads = jax.jit(discriminator.embedding_gradients, static_argnums=(0, 3))(
        logits, params, rows, config.hidden_size
    )
    embed = params["transformer"]["embed"]  # with LoRA: the frozen table and its (zero) delta
    with_table = lambda e: {
        **params,
        "transformer": {**params["transformer"], "embed": {**embed, "embedding": e}},
    }
    table = jax.jit(jax.grad(lambda e: logits(with_table(e), rows).sum()))(
        params["transformer"]["embed"]["embedding"]
    )
    scattered = jnp.zeros_like(table).at[ids.reshape(-1)].add(grads.reshape(-1, grads.shape[-1]))
    np.testing.assert_allclose(scattered, table, rtol=1e-5, atol=1e-6)  # float32 sums
    assert float(jnp.abs(grads[0, 4:]).max()) == 0.0  # padding does not reach the logit
    np.testing.assert_allclose(
        discriminator.adv.gradient_penalty(grads, rows["attention_mask"]),
        jnp.sum(grads**2, axis=(1, 2)),
        rtol=1e-6,
    )


def test_config_errors_name_the_field():
    def error(match, **section):
        with pytest.raises(ConfigError, match=match):
            validate_config(adversarial_config(**section))

    error(r"config.adversarial.divergence: 'js' not in", divergence="js")
    error(r"config.adversarial.estimator: 'remax' not in", estimator="remax")
    error(r"replay_size: must be a multiple of .* 16", discriminator=dict(replay_size=20))
    error(r"replay_batch_size: set both", discriminator=dict(replay_size=32))
    error(r"label_smoothing: must be in \[0, 0.5\)", discriminator=dict(label_smoothing=0.5))
    error(r"config.adversarial.num_demonstrations: 8 demonstrations", num_demonstrations=8)
