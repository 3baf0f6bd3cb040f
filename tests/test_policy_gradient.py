"""Policy gradient end to end: a hand-computed update, 1-device vs (2, 2, 2)-mesh equality, no
recompiles across iterations, exact resume, config errors, and GRPO raising exact match on
arithmetic from an SFT policy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax_utils import count_compiles
from safetensors.numpy import load_file
from test_rollout import BAD, CONFIG, EOS, GOOD, PAD, START, prompts, toy_state

from experiments.configs import grpo
from irl_jax import rollout, sharding
from irl_jax.algorithms import policy_gradient, sft, validate_config
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms.policy_gradient import Rollout
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.metrics import read_metrics
from irl_jax.models import Transformer, preset
from irl_jax.models import source as model_source
from irl_jax.sampling import teacher_forced_logprobs
from irl_jax.train import create_model, make_optimizer, make_update


@pytest.mark.parametrize("clip", [False, True])
def test_one_sgd_update_equals_hand_computed_gradient(clip):
    """Bigram policy at T = 2: rows GOOD EOS (A = 1) and BAD EOS (A = −½). With sequence_mean
    aggregation the loss is −(1/B) Σ_i (A_i/|y_i|) Σ_t min(ρ_it A_i, clip(ρ_it) A_i), and the
    only logits it touches are the LM-head row of START (EOS after GOOD/BAD has probability 1),
    whose gradient is −(1/B) Σ_i A_i/|y_i| · (e_{y_i} − π_T)/T over unclipped first tokens."""
    temperature, lr, advantages = 2.0, 0.1, np.array([1.0, -0.5])
    section = policy_gradient.default_config()
    section.kl_coef = 0.0
    sampling = rollout.SamplingSettings(max_new_tokens=3, temperature=temperature)
    p = np.array([math.sqrt(0.7), math.sqrt(0.3)])
    pi_t = p / p.sum()  # π_T(GOOD), π_T(BAD) ∝ p^(1/T)
    ratio = 1.5 if clip else 1.0  # ρ = 1.5 > 1 + ε on the A > 0 row: clipped, no gradient
    old = np.array([[math.log(pi_t[0] / ratio), 0, 0], [math.log(pi_t[1]), 0, 0]], np.float32)
    ids, mask = prompts(2)
    samples = rollout.Samples(
        prompt_ids=jnp.asarray(ids),
        prompt_mask=jnp.asarray(mask),
        response_ids=jnp.array([[GOOD, EOS, PAD], [BAD, EOS, PAD]]),
        response_mask=jnp.array([[1, 1, 0], [1, 1, 0]]),
        logprobs=jnp.asarray(old),
    )
    batch = Rollout(samples, jnp.zeros((2, 3)), jnp.asarray(advantages, jnp.float32))
    optimizer = optax.sgd(lr)
    mesh, state, shardings = toy_state(0.7, optimizer)
    loss_fn = policy_gradient.make_loss_fn(CONFIG, section, sampling)
    update = jax.jit(make_update(loss_fn, optimizer, shardings.models["policy"]))
    policy = state.models["policy"]
    before = np.asarray(policy.params["lm_head"]["kernel"])
    policy, metrics = update(policy, batch, jax.random.key(0))
    after = np.asarray(policy.params["lm_head"]["kernel"])

    one_hot = np.eye(2)
    unclipped = [not clip, True]
    grad = np.zeros(8)
    for i in range(2):
        if unclipped[i]:
            grad[[GOOD, BAD]] -= advantages[i] / (2 * 2) * (one_hot[i] - pi_t) / temperature
    np.testing.assert_allclose(after[START] - before[START], -lr * grad, atol=1e-6)
    np.testing.assert_allclose(np.delete(after, START, 0), np.delete(before, START, 0), atol=1e-6)
    # Loss: row 1 tokens give −A; row 0 tokens give −A (ratio 1) or −1.2 A then −A (clipped).
    first = -min(ratio, 1.2) * advantages[0]
    expected_loss = ((first - advantages[0]) / 2 + advantages[1] * -1) / 2
    assert float(metrics["loss"]) == pytest.approx(expected_loss, abs=1e-6)
    assert float(metrics["clip_fraction"]) == (0.25 if clip else 0.0)
    entropy = -np.sum(pi_t * np.log(pi_t))  # first tokens; EOS tokens have entropy 0
    assert float(metrics["entropy"]) == pytest.approx(entropy / 2, abs=1e-6)
    assert int(policy.step) == 1
    if not clip:  # the rewarded token became more likely
        new_logits = after[START, [GOOD, BAD]] / temperature
        assert np.exp(new_logits[0]) / np.exp(new_logits).sum() > pi_t[0]


TINY = preset("gpt2-tiny", vocab_size=93, num_layers=1, eos_token_ids=(2,), pad_token_id=0)


def fixed_rollout(params, rows=16, prompt_len=5, response_len=6, temperature=0.7):
    """Random prompts and responses scored by teacher forcing (no sampling randomness)."""
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(3, 93, (rows, prompt_len)).astype(np.int32)
    prompt_mask = (np.arange(prompt_len)[None] >= rng.integers(0, 3, rows)[:, None]).astype(
        np.int32
    )
    response_ids = rng.integers(3, 93, (rows, response_len)).astype(np.int32)
    lengths = rng.integers(1, response_len + 1, rows)
    response_mask = (np.arange(response_len)[None] < lengths[:, None]).astype(np.int32)
    logps = np.asarray(
        teacher_forced_logprobs(
            TINY,
            params,
            prompt_ids * prompt_mask,
            prompt_mask,
            response_ids,
            response_mask,
            temperature=temperature,
        )
    )
    noise = rng.normal(0.0, 0.3, (2, rows, response_len)).astype(np.float32) * response_mask
    samples = rollout.Samples(
        prompt_ids * prompt_mask, prompt_mask, response_ids, response_mask, logps + noise[0]
    )
    return Rollout(samples, logps + noise[1], rng.normal(size=rows).astype(np.float32))


def update_on(mesh, batch=None):
    section = policy_gradient.default_config()
    section.update(
        {
            "clip_eps_high": 0.28,
            "aggregation": "token_mean",
            "kl_coef": 0.1,
            "entropy_coef": 0.01,
            "num_epochs": 2,
            "num_minibatches": 2,
        }
    )
    sampling = rollout.SamplingSettings(max_new_tokens=6, temperature=0.7)
    # SGD: Adam's per-coordinate normalization would blow float noise in near-zero gradients up
    # to a fraction of the learning rate, hiding (or faking) real differences.
    optimizer, schedule = make_optimizer(
        num_steps=4, learning_rate=0.05, name="sgd", max_grad_norm=1.0
    )
    policy, shardings = create_model(model_source.init_fn(Transformer(TINY), 0), optimizer, mesh)
    initial = jax.device_get(policy.params)
    if batch is None:
        batch = fixed_rollout(initial)
    update = make_update(
        policy_gradient.make_loss_fn(TINY, section, sampling),
        optimizer,
        shardings,
        num_epochs=2,
        num_minibatches=2,
        grad_accum_steps=2,
        schedule=schedule,
    )
    data = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        jitted = jax.jit(
            update, in_shardings=(shardings, data, None), out_shardings=(shardings, None)
        )
        policy, metrics = jitted(policy, jax.device_put(batch, data), jax.random.key(1))
    return (initial, *jax.device_get((policy.params, metrics))), batch


def test_update_on_222_mesh_equals_one_device():
    (initial, params1, metrics1), batch = update_on(
        sharding.make_mesh({"data": 1}, jax.devices()[:1])
    )
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    (_, params8, metrics8), _ = update_on(mesh8, batch)
    assert metrics1.keys() == metrics8.keys() >= {"loss", "clip_fraction", "kl_loss", "entropy"}
    assert 0 < metrics1["clip_fraction"] < 1  # the noisy old log-probs do clip some tokens
    for key in metrics1:
        np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-5, atol=1e-7)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params1, initial)
    assert max(jax.tree.leaves(moved)) > 1e-3  # four SGD updates of visible size, and
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), params1, params8)


def rl_config(init_from="", sampling=None, **section):
    config = grpo.rl_config()
    config.init_from = init_from
    config.model = "gpt2-tiny"
    config.mesh_shape.update({"data": 2, "fsdp": 2, "tensor": 2})
    config.batch_size = 4
    config.eval_every = 0
    config.log_every = 1
    config.checkpoint_every = 0
    config.export = False
    config.data.num_train = 256
    config.policy_eval.num_prompts = 32
    config.sampling.update({"group_size": 4, **(sampling or {})})
    config.policy_gradient.update(section)
    return config


@pytest.mark.parametrize(
    "section, sampling",
    [
        (dict(dynamic_sampling=True, overlong_buffer=2, num_minibatches=2, num_epochs=2), {}),
        (dict(estimator="remax", kl_in_reward=True, normalize_rewards=True), dict(top_k=20)),
    ],
    ids=["grpo_dapo_features", "remax"],
)
def test_no_recompiles_across_iterations(section, sampling):
    config = rl_config(sampling=sampling, **section)
    validate_config(config)
    built = policy_gradient.build(config)
    data = sharding.batch_sharding(built.setup.mesh)
    state = built.state
    state, _ = built.step(state, jax.device_put(next(built.data), data))
    with count_compiles() as compiles:
        for _ in range(3):
            state, metrics = built.step(state, jax.device_put(next(built.data), data))
    assert compiles == []
    assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))
    updates = section.get("num_epochs", 1) * section.get("num_minibatches", 1)
    assert int(state.models["policy"].step) == 4 * updates


def reasoning_config(**section):
    """``rl_config`` on the reasoning task, whose prompts have 7 or 8 tokens."""
    config = rl_config(**section)
    config.data.task = "reasoning"
    return config


def test_prompt_buckets_cut_padding_only_and_agree_across_processes():
    """``BatchIterator(prompt_buckets=...)`` yields the unbucketed iterator's rows with the
    left-padded prompts cut to the smallest bucket holding the global batch's longest prompt;
    the cut columns are padding; every process of a 2-process run picks the same width."""
    from irl_jax.data.iterator import BatchIterator

    config = reasoning_config()
    tokenizer = policy_gradient.build(config).setup.tokenizer
    arrays = setup_lib.prompt_arrays(config, tokenizer, 256, 0)  # 7 or 8 tokens, 8 columns
    full = BatchIterator(arrays, 4, seed=0)
    cut = BatchIterator(arrays, 4, seed=0, prompt_buckets=(8, 7))
    halves = [
        BatchIterator(arrays, 4, seed=0, prompt_buckets=(7, 8), process_index=i, process_count=2)
        for i in range(2)
    ]
    widths = []
    for _ in range(24):
        whole, trimmed, parts = next(full), next(cut), [next(h) for h in halves]
        width = trimmed["prompt_ids"].shape[1]
        widths.append(width)
        longest = int(whole["prompt_mask"].sum(-1).max())
        assert width == min(b for b in (7, 8) if b >= longest)
        for name in ("prompt_ids", "prompt_mask"):
            np.testing.assert_array_equal(trimmed[name], whole[name][:, -width:])
            np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), trimmed[name])
        assert whole["prompt_mask"][:, :-width].sum() == 0
    assert set(widths) == {7, 8}, widths


def test_prompt_arrays_are_as_wide_as_their_longest_prompt():
    """The preference task's prompts (at most 9 tokens) come padded to their longest prompt,
    not to the 48-token budget: the budget-wide tokenization's rows minus padding columns."""
    config = rl_config()
    config.data.task = "preference"
    config.data.max_length, config.data.max_prompt_length = 48, 0
    tokenizer = policy_gradient.build(config).setup.tokenizer
    arrays = setup_lib.prompt_arrays(config, tokenizer, 256, 0)
    rows = [{"prompt": p} for p in setup_lib.task_of(config).prompts(256, 0)]
    wide = setup_lib.tokenize(config, tokenizer, rows, "prompt")
    lengths = wide["prompt_mask"].sum(-1)
    width = arrays["prompt_ids"].shape[1]
    assert wide["prompt_ids"].shape[1] == 48 > width == lengths.max() > lengths.min()
    for name in ("prompt_ids", "prompt_mask"):
        np.testing.assert_array_equal(arrays[name], wide[name][:, -width:])


def test_prompt_buckets_give_full_padding_metrics_and_compile_once_per_width():
    """A GRPO iteration on bucketed prompts equals the full-width iteration on the same rows
    with the same rng; after one iteration per width nothing compiles again."""
    from irl_jax.data.iterator import trim_prompts

    config = reasoning_config()
    config.data.prompt_buckets = (7,)
    validate_config(config)
    built = policy_gradient.build(config)
    data = sharding.batch_sharding(built.setup.mesh)
    arrays = setup_lib.prompt_arrays(config, built.setup.tokenizer, 256, 0)
    short = np.flatnonzero(arrays["prompt_mask"].sum(-1) <= 7)
    size = next(built.data)["prompt_ids"].shape[0]
    take = lambda index, width: trim_prompts({k: a[index] for k, a in arrays.items()}, width)
    batches, full_batches = [take(short[:size], 7)], [take(short[:size], None)]
    copy = lambda state: jax.tree.map(jnp.copy, state)
    _, cut_metrics = built.step(copy(built.state), jax.device_put(batches[0], data))
    _, full_metrics = built.step(copy(built.state), jax.device_put(full_batches[0], data))
    cut_metrics, full_metrics = jax.device_get((cut_metrics, full_metrics))
    assert full_batches[0]["prompt_ids"].shape[1] == 8 > batches[0]["prompt_ids"].shape[1]
    assert cut_metrics.keys() == full_metrics.keys() >= {"loss", "reward_mean"}
    for key in cut_metrics:
        np.testing.assert_allclose(cut_metrics[key], full_metrics[key], rtol=1e-5, atol=1e-6)

    # Batches of short prompts only (width 7) and of any prompts (width 8), alternating.
    mixed = [
        take(short[i * size :][:size], 7) if i % 2 else take(np.arange((i + 1) * size)[-size:], 8)
        for i in range(6)
    ]
    assert [b["prompt_ids"].shape[1] for b in mixed] == [8, 7] * 3
    state = built.state
    for batch in mixed[:2]:
        state, _ = built.step(state, jax.device_put(batch, data))
    with count_compiles() as compiles:
        for batch in mixed[2:]:
            state, metrics = built.step(state, jax.device_put(batch, data))
    assert compiles == [], "a prompt width compiled twice"
    assert np.isfinite(float(metrics["loss"]))


def test_config_errors_name_the_field():
    def error(match, sampling=None, **section):
        config = rl_config(sampling=sampling, **section)
        with pytest.raises(ConfigError, match=match):
            validate_config(config)

    error(r"policy_gradient.estimator: 'ppo' not in", estimator="ppo")
    error(r"sampling.group_size: must be >= 2 for estimator='grpo'", dict(group_size=1))
    error(r"policy_gradient.aggregation: 'sum' not in", aggregation="sum")
    error(r"sampling.top_p: must be in \(0, 1\]", dict(top_p=0.0))
    error(r"policy_gradient.max_sampling_rounds: must be >= 1", max_sampling_rounds=0)
    error(r"overlong_buffer: 7 exceeds sampling.max_new_tokens=6", overlong_buffer=7)
    error(r"policy_gradient.num_minibatches: .* 16 responses", num_minibatches=3)
    error(r"unknown config field policy_gradient.'beta'", beta=0.1)
    # k1 in the loss has no gradient: refused; in the reward it is fine.
    error(
        r"policy_gradient.kl_estimator: k1 in the loss has zero expected gradient",
        kl_estimator="k1",
    )
    validate_config(rl_config(kl_estimator="k1", kl_in_reward=True))
    config = rl_config()
    config.reward.source = "model"
    config.reward.model = "/nonexistent"
    with pytest.raises(ConfigError, match="config.reward.model: '/nonexistent' is not"):
        validate_config(config)
    config = rl_config()
    config.data.num_train = 3
    with pytest.raises(ConfigError, match="data.num_train: 3 prompts"):
        validate_config(config)
    validate_config(rl_config(sampling=dict(group_size=1), estimator="reinforce"))  # no groups
    config = rl_config()
    config.data.prompt_buckets = (0, 8)
    with pytest.raises(ConfigError, match=r"data.prompt_buckets: \(0, 8\): .* in \[1, 8\]"):
        validate_config(config)


@pytest.fixture(scope="module")
def sft_policy(tmp_path_factory):
    """The experiment's stage 1 (``grpo.py:sft``): an SFT policy at 20–60 % exact match."""
    workdir = tmp_path_factory.mktemp("sft")
    config = grpo.get_config("sft")
    config.eval_every = 0
    # Fetching metrics often bounds the steps in flight: with hundreds of queued steps, XLA:CPU's
    # collectives over 8 fake devices on 2 cores can starve its thread pool and hang.
    config.log_every = 10
    sft.train(config, str(workdir))
    return str(workdir / "export")


def test_grpo_raises_exact_match_from_sft_policy(sft_policy, tmp_path):
    config = rl_config(sft_policy)
    config.mesh_shape.update({"data": -1, "fsdp": 1, "tensor": 1})
    config.num_steps = 300  # ~20 s of iterations
    config.batch_size = 16
    config.log_every = 10
    config.data.num_train = 4096
    config.policy_eval.num_prompts = 256
    config.sampling.group_size = 8
    config.policy_gradient.kl_coef = 0.0
    config.optimizer.learning_rate = 5e-4
    metrics = policy_gradient.train(config, str(tmp_path))
    before, after = metrics["eval/ref_reward/gold_mean"], metrics["eval/reward/gold_mean"]
    assert 0.2 <= before <= 0.6  # the SFT policy's exact match
    assert after - before >= 0.12, metrics  # ~3 standard errors of the difference
    rewards = [r["train/reward_mean"] for r in read_metrics(str(tmp_path)) if "train/loss" in r]
    # 128 responses per iteration, 10 iterations per logged window: first vs last 30 iterations.
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.07, rewards


def test_kill_and_resume_continues_identically(sft_policy, tmp_path):
    def run(workdir, num_steps):
        config = rl_config(
            sft_policy, estimator="reinforce", normalize_rewards=True, num_minibatches=2
        )
        config.mesh_shape.update({"data": -1, "fsdp": 1, "tensor": 1})  # compiles fastest
        config.batch_size = 8
        config.num_steps = num_steps
        config.export = True
        config.optimizer.schedule = "constant"  # the same schedule for a 2- and a 4-step run
        config.optimizer.warmup_steps = 0
        policy_gradient.train(config, str(workdir))
        return load_file(str(workdir / "export" / "model.safetensors"))

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)  # a "killed" run: state, extras and prompt order on disk
    resumed = run(tmp_path / "resumed", 4)  # everything rebuilt from scratch, resumed at 2
    initial = load_file(f"{sft_policy}/model.safetensors")
    assert straight.keys() == resumed.keys()
    assert any(not np.array_equal(straight[k], initial[k]) for k in straight)  # it trained
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    rows = lambda w: {r["step"]: r for r in read_metrics(str(w)) if "train/loss" in r}
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    for step in (3, 4):
        assert a[step]["train/reward_mean"] == b[step]["train/reward_mean"]
        assert a[step]["train/loss"] == b[step]["train/loss"]
    # The whole state resumed exactly: policy, its optimizer, reference and reward statistics.
    read = lambda w: CheckpointManager(str(w)).read(4)
    jax.tree.map(
        np.testing.assert_array_equal, read(tmp_path / "straight"), read(tmp_path / "resumed")
    )
