"""Online DPO: best-vs-worst pairs (ties carry no weight), the reference's soft and hard updates
every M steps inside the jitted step, a (2, 2, 2) mesh equals one device, no recompiles, exact
kill-and-resume between reference updates, and config errors that name the field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles
from test_raft import toy_samples

from irl_jax import algorithms, sharding
from irl_jax.algorithms import online_dpo
from irl_jax.algorithms import setup as setup_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.train import Loss

host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))


def test_pairs_are_each_prompts_best_and_worst_and_ties_weigh_nothing():
    samples = toy_samples()  # two prompts × 4 responses; response j of prompt i: id 10i + j + 1
    rewards = jnp.array([0.5, 2.0, -1.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    pairs, margins = online_dpo.best_vs_worst(samples, rewards, 4)
    np.testing.assert_array_equal(pairs["chosen_input_ids"][:, 3], [2, 11])  # ties: the first
    np.testing.assert_array_equal(pairs["rejected_input_ids"][:, 3], [3, 11])
    np.testing.assert_array_equal(pairs["weight"], [1.0, 0.0])  # prompt 1: no preference
    np.testing.assert_array_equal(margins, [3.0, 0.0])
    # Prompt then response (3 tokens for response 3 of prompt 0), the loss on the response.
    np.testing.assert_array_equal(pairs["rejected_input_ids"][0, :6], [0, 5, 6, 3, 3, 3])
    np.testing.assert_array_equal(pairs["rejected_loss_mask"][0], [0, 0, 0, 1, 1, 1, 0])
    # The loss is the weighted mean: the tied pair's loss is not in it.
    losses = jnp.array([0.3, 5.0])
    assert float(Loss.mean(losses, pairs["weight"]).value) == pytest.approx(0.3)


def small_config(mesh_shape=None, **section):
    config = algorithms.experiment_config("online_dpo")
    config.mesh_shape.update(mesh_shape or {})
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = 0
    config.export = False
    config.model_overrides.num_layers = 1
    config.data.num_train = 64
    config.data.max_length = 24
    config.sampling.update(max_new_tokens=6, group_size=3)
    config.policy_eval.update(num_prompts=8, max_new_tokens=4)
    config.online_dpo.update({"beta": 0.5, **section})
    config.optimizer.update(name="sgd", learning_rate=0.5, warmup_steps=0)
    return config


def run_steps(config, num_steps, devices=None):
    """``num_steps`` steps; returns the states before every step and after the last, and the
    metrics (no compile after the first step)."""
    built = online_dpo.build(config, devices)
    data = sharding.batch_sharding(built.setup.mesh)
    state, states, history = built.state, [], []

    def step(state):
        states.append({"models": host(state.models), "frozen": host(state.frozen)})  # (donated)
        state, metrics = built.step(state, jax.device_put(next(built.data), data))
        history.append(jax.device_get(metrics))
        return state

    state = step(state)
    with count_compiles() as compiles:  # reference updates included
        for _ in range(num_steps - 1):
            state = step(state)
    assert compiles == []
    states.append({"models": host(state.models), "frozen": host(state.frozen)})
    return states, history


def test_soft_reference_update_every_m_steps():
    alpha = 0.25
    config = small_config(reference_update_every=2, reference_mixup=alpha)
    states, history = run_steps(config, 5, jax.devices()[:1])
    initial = states[0]["models"]["policy"].params
    equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    reference = initial
    for index in range(5):  # step `index` starts from states[index], ends at states[index + 1]
        if index in (2, 4):  # π_ref ← α π_θ + (1 − α) π_ref with π_θ before the step
            policy = states[index]["models"]["policy"].params
            reference = jax.tree.map(lambda p, r: alpha * p + (1 - alpha) * r, policy, reference)
        after = states[index + 1]
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            after["frozen"]["reference"],
            reference,
        )
        equal(after["frozen"]["initial"], initial)  # the evaluation's SFT policy stays
    moved = lambda a, b: float(np.abs(a - b).max())
    gap = jax.tree.map(moved, states[-1]["frozen"]["reference"], initial)
    assert max(jax.tree.leaves(gap)) > 1e-4  # the reference did move
    assert all(np.isfinite(m["loss"]) and 0 < m["pair_fraction"] <= 1 for m in history)
    assert history[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # π_θ = π_ref: −log σ(0)


def test_222_mesh_equals_one_device_with_a_fixed_reference():
    states1, history1 = run_steps(small_config({"data": 1}), 3, jax.devices()[:1])
    states8, history8 = run_steps(small_config({"data": 2, "fsdp": 2, "tensor": 2}), 3)
    for m1, m8 in zip(history1, history8):
        assert m1.keys() == m8.keys() >= {"loss", "accuracy", "label_margin", "pair_fraction"}
        for key in m1:
            np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, states1[-1]["models"], states8[-1]["models"])
    assert set(states1[-1]["frozen"]) == {"reference"}  # M = 0: the SFT policy throughout
    jax.tree.map(
        np.testing.assert_array_equal,
        states1[-1]["frozen"]["reference"],
        states1[0]["models"]["policy"].params,
    )


def test_kill_and_resume_between_hard_reference_updates_is_exact(tmp_path):
    compiled = []

    def run(workdir, num_steps):
        """``online_dpo.train`` on one device without the final evaluation; the three runs
        share the jitted step's one compilation (the same pure function either way)."""
        config = small_config(reference_update_every=2, reference_mixup=1.0)
        config.num_steps = num_steps
        config.optimizer.update(name="adamw", learning_rate=1e-3, schedule="constant")
        built = online_dpo.build(config, jax.devices()[:1])
        compiled.append(built.step)
        setup_lib.run(
            built.setup,
            str(workdir),
            state=built.state,
            shardings=built.shardings,
            step=compiled[0],
            data=built.data,
            evaluate=None,
            description="online_dpo",
        )

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 3)  # killed after step 3: its reference is the step-2 iterate
    run(tmp_path / "resumed", 4)  # rebuilt, resumed at 3
    saved = [CheckpointManager(str(tmp_path / name)) for name in ("straight", "resumed")]
    straight, resumed = (manager.read(4) for manager in saved)
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    gap = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()),
        straight["frozen"]["reference"],
        straight["frozen"]["initial"],
    )
    assert max(jax.tree.leaves(gap)) > 0  # the hard update happened
    assert saved[0].read_data(4) == saved[1].read_data(4)
    for manager in saved:
        manager.close()


def test_config_errors_name_the_field(tmp_path):
    def error(match, sampling=None, **section):
        config = small_config(**section)
        config.sampling.update(sampling or {})
        with pytest.raises(ConfigError, match=match):
            algorithms.run(config, str(tmp_path / "run"))

    error(r"config.sampling.group_size: a pair needs K >= 2", dict(group_size=1))
    error(r"config.online_dpo.reference_mixup: must be in \(0, 1\]", reference_mixup=0.0)
    error(r"config.online_dpo.reference_update_every: must be >= 0", reference_update_every=-1)
    error(
        r"config.online_dpo.reference_update_every: 'simpo' uses no reference",
        loss="simpo",
        reference_update_every=4,
    )
    error(r"config.online_dpo.loss: 'kto' is not one of", loss="kto")
    error(r"config.online_dpo.beta: must be positive", beta=0.0)
    assert not (tmp_path / "run").exists()
