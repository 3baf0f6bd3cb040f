"""The core with two trained models and two data streams: a toy actor–critic on the arithmetic
task, written only from the core's pieces (setup, create_model/create_state, make_update,
the rollout stages, train_loop). The policy learns from advantages r − V(x) of a critic
V(x) (a ``ValueModel`` read at the last prompt token) plus an SFT term on a second stream of
demonstrations; the critic regresses the rewards. Shown: one compile per shape, a (2, 2, 2)
mesh equals one device, and a killed run resumes bit-identically for both models, both
optimizers, the algorithm's arrays and both streams' positions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax_utils import count_compiles

from irl_jax import rewards, rollout, sharding
from irl_jax.algorithms import experiment_config
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms.sft import make_loss_fn as sft_loss_fn
from irl_jax.checkpoint import CheckpointManager
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.models.heads import ValueModel
from irl_jax.objectives.logprobs import masked_sum, next_token_logprobs
from irl_jax.rewards import concat_prompt_response
from irl_jax.train import (
    Loss,
    create_model,
    create_state,
    jit_step,
    make_optimizer,
    make_update,
    train_loop,
)


def toy_config(mesh_shape):
    config = experiment_config("policy_gradient")
    config.mesh_shape.update(mesh_shape)
    config.batch_size = 8
    config.data.task = "arithmetic"
    config.data.max_length = 16
    config.data.max_prompt_length = 8
    config.data.num_train = 64
    config.data.num_eval = 16
    config.model_overrides.num_layers = 1
    config.sampling.update(max_new_tokens=4, group_size=2)
    return config


def load_data(config, tokenizer):
    prompts = setup_lib.prompt_arrays(config, tokenizer, config.data.num_train, config.data.seed)
    demonstrations, _ = setup_lib.demonstrations(config, tokenizer)
    return prompts, demonstrations


def build(config, devices=None):
    """The state of two trained models (policy, critic), the frozen initial policy and a reward
    baseline array; the jitted step over two streams."""
    setup = setup_lib.setup(config, load_data, devices=devices)
    cfg, mesh = setup.model_config, setup.mesh
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    # Optimizers without a per-coordinate normalization (Adam's √v turns float noise in
    # near-zero gradients into visible updates, which would blur the mesh comparison); the
    # critic's momentum is optimizer state that must resume exactly.
    policy_optimizer, _ = make_optimizer(num_steps=10, learning_rate=1e-3, name="sgd")
    critic_optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9))
    policy = setup_lib.create_policy(setup, policy_optimizer)
    critic_init = model_source.init_fn(ValueModel(cfg), config.seed + 1)
    critic = create_model(critic_init, critic_optimizer, mesh)
    state, shardings = create_state(
        mesh,
        seed=config.seed,
        models={"policy": policy, "critic": critic},
        frozen={"reference": (policy[0].params, policy[1].params)},
        extras=lambda: {"baseline": rewards.EmaBaseline.create()},
    )
    model, value_model, imitation = Transformer(cfg), ValueModel(cfg), sft_loss_fn(cfg)

    def value_of(params, prompt_ids, prompt_mask):
        return value_model.apply({"params": params}, prompt_ids, prompt_mask)[:, -1]

    def policy_loss(params, batch, rng):
        samples, advantages, demonstrations = batch
        ids, mask = concat_prompt_response(
            samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask
        )
        logits = model.apply({"params": params}, ids, mask).logits
        logps = next_token_logprobs(logits, ids)[:, samples.prompt_ids.shape[1] :]
        pg = -jnp.sum(advantages * masked_sum(logps, samples.response_mask))
        sft, _ = imitation(params, demonstrations, rng, {})
        rows = jnp.float32(advantages.shape[0])
        return Loss(pg + rows * sft.value, rows), {"imitation_nll": sft.value}

    def critic_loss(params, batch, rng):
        prompt_ids, prompt_mask, returns = batch
        errors = (value_of(params, prompt_ids, prompt_mask) - returns) ** 2
        return Loss.mean(errors), {"value_error": errors.mean()}

    update_policy = make_update(policy_loss, policy_optimizer, shardings.models["policy"])
    update_critic = make_update(critic_loss, critic_optimizer, shardings.models["critic"])

    def step(state, batches, source):
        policy, critic = state.models["policy"], state.models["critic"]
        sample_key, update_key = jax.random.split(state.step_rng())
        prompts = batches["prompts"]
        samples = rollout.sample(
            cfg,
            policy.params,
            prompts["prompt_ids"],
            prompts["prompt_mask"],
            rng=sample_key,
            settings=sampling,
        )
        scores = rollout.score(source, samples)
        values = value_of(critic.params, samples.prompt_ids, samples.prompt_mask)
        advantages = jax.lax.stop_gradient(scores - values) / scores.shape[0]
        batch = (samples, advantages, batches["demonstrations"])
        policy, policy_metrics = update_policy(policy, batch, update_key)
        critic_batch = (samples.prompt_ids, samples.prompt_mask, scores)
        critic, critic_metrics = update_critic(critic, critic_batch, update_key)
        extras = {"baseline": state.extras["baseline"].update(scores, 0.9)}
        state = state.with_model("policy", policy).with_model("critic", critic)
        metrics = {
            **{f"policy_{k}": v for k, v in policy_metrics.items()},
            **{f"critic_{k}": v for k, v in critic_metrics.items()},
            "loss": policy_metrics["loss"],
            "reward_mean": scores.mean(),
        }
        return state.replace(step=state.step + 1, extras=extras), metrics

    jitted = jit_step(step, shardings, mesh, num_args=1)
    # Exact match, minus 0.1 per token: a random policy's rewards vary, so the critic learns.
    source = rewards.weighted_sum(
        [(1.0, setup.task.gold_reward), (1.0, rewards.length_penalty(0.1))]
    )
    prompts, demonstrations = setup.data
    streams = {
        "prompts": BatchIterator(prompts, config.batch_size, seed=1),
        "demonstrations": BatchIterator(demonstrations, config.batch_size, seed=2),
    }
    return setup, state, shardings, lambda state, batch: jitted(state, batch, source), streams


def run_steps(config, num_steps, devices=None):
    setup, state, _, step, streams = build(config, devices)
    data = sharding.batch_sharding(setup.mesh)
    history = []
    for _ in range(num_steps):
        batches = {name: jax.device_put(next(s), data) for name, s in streams.items()}
        state, metrics = step(state, batches)
        history.append(jax.device_get(metrics))
    return state, history


def test_one_compile_and_both_models_train():
    config = toy_config({"data": -1})
    setup, state, _, step, streams = build(config)
    data = sharding.batch_sharding(setup.mesh)
    before = jax.device_get(state.models)
    batches = lambda: {name: jax.device_put(next(s), data) for name, s in streams.items()}
    state, _ = step(state, batches())
    with count_compiles() as compiles:
        for _ in range(3):
            state, metrics = step(state, batches())
    assert compiles == []
    after = jax.device_get(state.models)
    for name in ("policy", "critic"):
        assert int(after[name].step) == 4
        moved = jax.tree.map(
            lambda a, b: np.abs(a - b).max(), after[name].params, before[name].params
        )
        assert max(jax.tree.leaves(moved)) > 1e-4, name
    reference = jax.device_get(state.frozen["reference"])
    jax.tree.map(np.testing.assert_array_equal, reference, before["policy"].params)  # frozen
    assert np.isfinite(metrics["critic_value_error"]) and np.isfinite(metrics["loss"])


def test_222_mesh_equals_one_device():
    state1, history1 = run_steps(toy_config({"data": 1}), 3, jax.devices()[:1])
    state8, history8 = run_steps(toy_config({"data": 2, "fsdp": 2, "tensor": 2}), 3)
    for m1, m8 in zip(history1, history8):
        for key in m1:
            np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, jax.device_get(state1.models), jax.device_get(state8.models))


def loop(config, workdir, num_steps):
    setup, state, shardings, step, streams = build(config)
    state, _ = train_loop(
        state=state,
        state_shardings=shardings,
        train_step=step,
        batches=streams,
        mesh=setup.mesh,
        workdir=str(workdir),
        num_steps=num_steps,
        log_every=1,
    )
    return state


def test_kill_and_resume_is_bit_identical_for_both_models(tmp_path):
    config = toy_config({"data": -1})
    loop(config, tmp_path / "straight", 4)
    loop(config, tmp_path / "resumed", 2)  # "killed" after step 2
    loop(config, tmp_path / "resumed", 4)  # rebuilt from scratch, resumed at 2
    saved = [CheckpointManager(str(tmp_path / name)) for name in ("straight", "resumed")]
    straight, resumed = (manager.read(4) for manager in saved)
    # Both models' params and Adam/SGD states, the frozen reference, the baseline, the key.
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    assert set(straight["models"]) == {"policy", "critic"}
    data = [manager.read_data(4) for manager in saved]
    assert data[0] == data[1] and set(data[0]["streams"]) == {"prompts", "demonstrations"}
