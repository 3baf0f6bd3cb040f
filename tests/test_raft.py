"""RAFT / ReST: the kept samples are each prompt's best (and above the threshold), the SFT rows
hold exactly them, a (2, 2, 2) mesh equals one device with no recompiles across a round start,
a killed run resumes mid-round exactly, and config errors name the field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import algorithms, rollout, sharding
from irl_jax.algorithms import raft
from irl_jax.algorithms import setup as setup_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError


def toy_samples():
    """Two prompts (2 and 3 tokens, left-padded) × 4 responses; response j of prompt i is
    ``[10·i + j + 1] * (j + 1)`` tokens long."""
    prompt_ids = jnp.array([[0, 5, 6], [7, 8, 9]])
    prompt_mask = jnp.array([[0, 1, 1], [1, 1, 1]])
    ids, masks = [], []
    for i in range(2):
        for j in range(4):
            ids.append([10 * i + j + 1] * 4)
            masks.append([1] * (j + 1) + [0] * (3 - j))
    return rollout.Samples(
        prompt_ids=jnp.repeat(prompt_ids, 4, axis=0),
        prompt_mask=jnp.repeat(prompt_mask, 4, axis=0),
        response_ids=jnp.array(ids),
        response_mask=jnp.array(masks),
        logprobs=jnp.zeros((8, 4)),
    )


def test_top_k_keeps_each_prompts_best_and_the_threshold_drops_rows():
    samples = toy_samples()
    rewards = jnp.array([0.5, 2.0, -1.0, 1.0, 3.0, 3.0, 0.0, -2.0])
    kept, kept_rewards, keep = raft.select_top_k(samples, rewards, 4, 2)
    np.testing.assert_array_equal(kept_rewards, [2.0, 1.0, 3.0, 3.0])
    np.testing.assert_array_equal(kept.response_ids[:, 0], [2, 4, 11, 12])  # ties: the first
    np.testing.assert_array_equal(kept.prompt_ids[:, -1], [6, 6, 9, 9])
    np.testing.assert_array_equal(keep, 1.0)
    _, _, keep = raft.select_top_k(samples, rewards, 4, 2, min_reward=1.5)
    np.testing.assert_array_equal(keep, [1.0, 0.0, 1.0, 1.0])
    rows = rollout.as_sequences(kept, keep)
    # Row 0: prompt [pad, 5, 6] then response 2 (two tokens); row 1 is dropped from the loss.
    np.testing.assert_array_equal(rows["input_ids"][0, :5], [0, 5, 6, 2, 2])
    np.testing.assert_array_equal(rows["attention_mask"][0], [0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["loss_mask"][1], 0)
    np.testing.assert_array_equal(rows["loss_mask"][3], [0, 0, 0, 1, 1, 0, 0])


def small_config(mesh_shape=None, **section):
    config = algorithms.experiment_config("raft")
    config.mesh_shape.update(mesh_shape or {})
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = 0
    config.export = False
    config.model_overrides.num_layers = 1
    config.data.num_train = 64
    config.data.max_length = 24
    config.sampling.update(max_new_tokens=6, group_size=4)
    config.policy_eval.update(num_prompts=8, max_new_tokens=4)
    config.raft.update({"keep_top_k": 2, "steps_per_round": 2, **section})
    return config


def run_steps(config, num_steps, devices=None):
    built = raft.build(config, devices)
    data = sharding.batch_sharding(built.setup.mesh)
    state, history = built.state, []
    state, metrics = built.step(state, jax.device_put(next(built.data), data))
    history.append(jax.device_get(metrics))
    with count_compiles() as compiles:  # steps 1 … : a round start (step 2) included
        for _ in range(num_steps - 1):
            state, metrics = built.step(state, jax.device_put(next(built.data), data))
            history.append(jax.device_get(metrics))
    assert compiles == []
    return jax.device_get(state), history


def test_222_mesh_equals_one_device_without_recompiles():
    # SGD: Adam's per-coordinate normalization would turn float noise into visible updates.
    one = small_config({"data": 1}, min_reward=-1.0)
    eight = small_config({"data": 2, "fsdp": 2, "tensor": 2}, min_reward=-1.0)
    for config in (one, eight):
        config.optimizer.update(name="sgd", learning_rate=0.1, warmup_steps=0)
    state1, history1 = run_steps(one, 3, jax.devices()[:1])
    state8, history8 = run_steps(eight, 3)
    for m1, m8 in zip(history1, history8):
        assert m1.keys() == m8.keys() >= {"loss", "kept_reward_mean", "kept_fraction"}
        for key in m1:
            np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert 0 < np.mean([m["kept_fraction"] for m in history1]) < 1  # the threshold bites
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, state1.models, state8.models)
    jax.tree.map(close, state1.frozen, state8.frozen)
    # The sampler is the iterate of the round start (step 2), not the initial policy.
    initial = state1.frozen["reference"]["embed"]["embedding"]
    assert not np.allclose(state1.frozen["sampler"]["embed"]["embedding"], initial)
    assert int(state1.models["policy"].step) == 3


def test_kill_and_resume_mid_round_is_exact(tmp_path):
    compiled = []

    def run(workdir, num_steps):
        """``raft.train`` on one device without the final evaluation: everything is rebuilt
        except the jitted step, whose one compilation the three runs share (the same pure
        function of the state either way)."""
        config = small_config()
        config.num_steps = num_steps
        config.optimizer.update(schedule="constant", warmup_steps=0)  # same for 3 and 4 steps
        built = raft.build(config, jax.devices()[:1])
        compiled.append(built.step)
        setup_lib.run(
            built.setup,
            str(workdir),
            state=built.state,
            shardings=built.shardings,
            step=compiled[0],
            data=built.data,
            evaluate=None,
            description="raft",
        )

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 3)  # stops inside the round of steps 2-3
    run(tmp_path / "resumed", 4)  # everything rebuilt, resumed at 3
    saved = [CheckpointManager(str(tmp_path / name)) for name in ("straight", "resumed")]
    straight, resumed = (manager.read(4) for manager in saved)
    # Policy, Adam moments, the round's sampler, the reference and the key, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    assert set(straight["frozen"]) == {"reference", "sampler"}
    assert saved[0].read_data(4) == saved[1].read_data(4)
    for manager in saved:
        manager.close()


def test_config_errors_name_the_field(tmp_path):
    def error(match, sampling=None, **section):
        config = small_config(**section)
        config.sampling.update(sampling or {})
        with pytest.raises(ConfigError, match=match):
            algorithms.run(config, str(tmp_path / "run"))

    error(r"config.raft.keep_top_k: 5 exceeds .* sampling.group_size=4", keep_top_k=5)
    error(r"config.raft.steps_per_round: must be >= 1", steps_per_round=0)
    error(r"config.raft.num_epochs: must be >= 1", num_epochs=0)
    error(r"unknown config field raft.'top_k'", top_k=1)
    config = small_config()
    config.reward.update(source="model", model=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"config\.reward\.model: '.*missing'"):
        algorithms.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
