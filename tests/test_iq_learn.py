"""IQ-Learn wiring: χ² = 0 is SFT's loss on a real batch, the implied reward source inside jit,
a (2, 2, 2) mesh equals one device, one compile, exact resume, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import rewards, sharding
from irl_jax.algorithms import experiment_config, iq_learn, sft, validate_config
from irl_jax.algorithms import setup as setup_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.evaluation import divergence
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.objectives.logprobs import next_token_logprobs
from irl_jax.policy_rewards import ImpliedReward
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step


def small_config(**section):
    config = experiment_config("iq_learn")
    config.batch_size = 16
    config.eval_every = 0
    config.log_every = 1
    config.export = False
    config.data.num_train = 64
    config.data.num_eval = 16
    config.data.max_length = 40
    config.iq_learn.update({"num_eval_prompts": 0, "samples_per_prompt": 1, **section})
    config.policy_eval.num_prompts = 8
    config.policy_eval.max_new_tokens = 8
    return config


def build(config, mesh, loss_fn_of):
    cfg = model_source.resolve_config(config.model, tokenizer=TOKENIZER)
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=1e-2, warmup_steps=0)
    policy = create_model(model_source.init_fn(Transformer(cfg), 0), optimizer, mesh)
    state, shardings = create_state(mesh, seed=0, models={"policy": policy})
    step = supervised_step(loss_fn_of(cfg), optimizer, shardings, mesh)
    return cfg, state, step


def init_params(cfg):
    ids = jnp.zeros((1, 2), jnp.int32)
    model = Transformer(cfg)
    return sharding.unbox(model.init(jax.random.key(0), ids, jnp.ones_like(ids))["params"])


def batches(config, n, batch_size=16):
    train, _ = setup_lib.demonstrations(config, TOKENIZER)
    return [
        {k: v[i * batch_size : (i + 1) * batch_size] for k, v in train.items()} for i in range(n)
    ]


def run_steps(mesh, state, step, data):
    sharding_ = sharding.batch_sharding(mesh)
    history = []
    for batch in data:
        state, metrics = step(state, jax.device_put(batch, sharding_))
        history.append(jax.device_get(metrics))
    return state, history


from irl_jax.tasks import build_tokenizer  # noqa: E402

TOKENIZER = build_tokenizer()


def test_without_chi2_the_loss_and_gradient_are_sfts():
    config = small_config(chi2_coef=0.0)
    cfg = model_source.resolve_config(config.model, tokenizer=TOKENIZER)
    params = init_params(cfg)
    batch = jax.tree.map(jnp.asarray, batches(config, 1)[0])

    def loss(loss_fn):
        value = lambda p: loss_fn(p, batch, None, None)[0].value
        return jax.jit(jax.value_and_grad(value))(params)

    iq_value, iq_grad = loss(iq_learn.make_loss_fn(cfg, config.iq_learn))
    sft_value, sft_grad = loss(sft.make_loss_fn(cfg))
    np.testing.assert_allclose(iq_value, sft_value, rtol=1e-5)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    jax.tree.map(close, iq_grad, sft_grad)
    chi2_value, _ = loss(iq_learn.make_loss_fn(cfg, small_config(chi2_coef=0.5).iq_learn))
    assert chi2_value > iq_value + 1e-3


def test_222_mesh_equals_one_device_and_compiles_once():
    config = small_config(chi2_coef=0.5, gamma=0.9, entropy_coef=0.01)
    loss_fn_of = lambda cfg: iq_learn.make_loss_fn(cfg, config.iq_learn)
    data = batches(config, 4)
    mesh1 = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    _, state, step = build(config, mesh1, loss_fn_of)
    _, history1 = run_steps(mesh1, state, step, data[:3])
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh8):
        _, state, step = build(config, mesh8, loss_fn_of)
        state, history8 = run_steps(mesh8, state, step, data[:1])
        with count_compiles() as compiles:
            state, more = run_steps(mesh8, state, step, data[1:3])
    assert compiles == [], "the IQ-Learn step recompiled"
    history8 += more
    for m1, m8 in zip(history1, history8):
        for key in ("loss", "nll", "chi2", "reward_mean", "entropy"):
            np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert abs(history1[2]["loss"] - history1[0]["loss"]) > 1e-3


def test_implied_reward_source_is_logp_plus_v0_inside_jit():
    """The source (a pytree, its params an argument of the jitted call) on prompt + response
    at γ = 1 equals log π(y|x) + V(s₀) for responses that end in eos."""
    config = small_config()
    cfg = model_source.resolve_config(config.model, tokenizer=TOKENIZER)
    params = init_params(cfg)
    prompts = setup_lib.prompt_arrays(config, TOKENIZER, 8, 0)
    eos = cfg.eos_token_ids[0]
    response_ids = jnp.array(np.random.default_rng(0).integers(5, 40, (8, 6)))
    response_ids = response_ids.at[:, 4].set(eos)
    response_mask = jnp.array([[1] * 5 + [0]] * 8)
    source = rewards.as_pytree(ImpliedReward(params, cfg, 1.0))
    assert isinstance(source, ImpliedReward)
    reward = jax.jit(rewards.call)(
        source, prompts["prompt_ids"], prompts["prompt_mask"], response_ids, response_mask
    )
    ids = jnp.concatenate([prompts["prompt_ids"], response_ids], 1)
    mask = jnp.concatenate([prompts["prompt_mask"], response_mask], 1)
    logits = Transformer(cfg).apply({"params": params}, ids, mask).logits
    target = jnp.concatenate([jnp.zeros_like(prompts["prompt_mask"]), response_mask], 1)
    logp = (next_token_logprobs(logits, ids) * target).sum(-1)
    p = prompts["prompt_ids"].shape[1]
    v0 = jax.nn.logsumexp(logits[:, p - 1], axis=-1)  # the state before the first response token
    np.testing.assert_allclose(reward, logp + v0, rtol=1e-5, atol=1e-4)


def test_exact_resume(tmp_path, monkeypatch):
    def run(workdir, num_steps):
        config = small_config(chi2_coef=0.3)
        config.num_steps = num_steps
        config.checkpoint_every = 2
        config.optimizer.schedule = "constant"
        config.optimizer.warmup_steps = 0
        return iq_learn.train(config, str(workdir))

    # The evaluation (sampling) is left out: the runs check the state, not the metrics.
    monkeypatch.setattr(iq_learn, "make_evaluator", lambda setup: lambda state: ({}, []))
    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    straight, resumed = (
        CheckpointManager(str(tmp_path / n)).read(4) for n in ("straight", "resumed")
    )
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_reverse_kl_in_support():
    """Samples of π = (½ on y₁ ∈ S, ¼ on y₂ ∈ S, ¼ on y₃ ∉ S), π_demo = (½, ½, 0): π_S = (⅔, ⅓),
    KL(π_S ‖ π_demo) = ⅔ log(4/3) + ⅓ log(2/3)."""
    logps = np.log([0.5, 0.5, 0.25, 0.25])
    demo = np.array([np.log(0.5), np.log(0.5), np.log(0.5), -np.inf])
    expected = 2 / 3 * np.log(4 / 3) + 1 / 3 * np.log(2 / 3)
    assert divergence.reverse_kl_in_support(logps, demo) == pytest.approx(expected)
    assert np.isnan(divergence.reverse_kl_in_support(logps, np.full(4, -np.inf)))


def test_config_errors_name_the_field():
    for field, value, message in [
        ("chi2_coef", -1.0, "config.iq_learn.chi2_coef: must be >= 0"),
        ("gamma", 0.0, r"config.iq_learn.gamma: must be in \(0, 1\]"),
        ("gamma", 1.5, r"config.iq_learn.gamma: must be in \(0, 1\]"),
        ("entropy_coef", -0.1, "config.iq_learn.entropy_coef: must be >= 0"),
        ("samples_per_prompt", 0, "config.iq_learn.samples_per_prompt: must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_config(small_config(**{field: value}))
