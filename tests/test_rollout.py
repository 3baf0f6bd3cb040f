"""Rollout stages (``irl_jax.rollout``) and the policy-gradient rollout composed of them: group
selection over sampling rounds, advantage dispatch, reward sources passed as arguments, and
whole rollouts of a toy bigram policy whose samples, log-probs and advantages are
hand-computable.

The toy policy is a real ``Transformer`` with attention and MLP outputs zeroed, one-hot
embeddings and a final norm that returns the one-hot: its logits are a row of the LM head, so
π(next | context) depends only on the last token. After START it says GOOD w.p. p, else BAD;
after anything else EOS. The reward is 1 for a response containing GOOD.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax import rewards, rollout, sharding
from irl_jax.algorithms import experiment_config, policy_gradient
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives import policy_gradient as pg
from irl_jax.tasks import build_tokenizer, get_task
from irl_jax.train import create_model, create_state

VOCAB, PAD, EOS, START, GOOD, BAD = 8, 0, 2, 5, 6, 7
CONFIG = ModelConfig(
    architecture="llama",
    vocab_size=VOCAB,
    hidden_size=VOCAB,
    num_layers=1,
    num_heads=1,
    num_kv_heads=1,
    head_dim=VOCAB,
    intermediate_size=4,
    eos_token_ids=(EOS,),
    pad_token_id=PAD,
)


def init_boxed():
    ids = jnp.zeros((1, 2), jnp.int32)
    return Transformer(CONFIG).init(jax.random.key(0), ids, ids + 1)["params"]


def bigram_params(p_good: float) -> dict:
    """After START: GOOD w.p. ``p_good``, else BAD; after any other token: EOS."""
    params = sharding.unbox(init_boxed())
    params["embed"]["embedding"] = jnp.eye(VOCAB)
    for path in (("attn", "o"), ("mlp", "down")):
        layer = params["layer_0"][path[0]][path[1]]
        layer["kernel"] = jnp.zeros_like(layer["kernel"])
    # RMSNorm(e_i) = e_i / sqrt(1/D + eps) * scale = e_i.
    params["final_norm"]["scale"] = jnp.full((VOCAB,), math.sqrt(1 / VOCAB + CONFIG.norm_eps))
    probs = np.zeros((VOCAB, VOCAB))
    probs[:, EOS] = 1.0
    probs[START] = 0.0
    probs[START, GOOD], probs[START, BAD] = p_good, 1 - p_good
    with np.errstate(divide="ignore"):
        table = np.maximum(np.log(probs), -1e4)  # exp(-1e4) is exactly 0 in float32
    params["lm_head"]["kernel"] = jnp.asarray(table, jnp.float32)
    return params


def prompts(n: int):
    """``n`` left-padded prompts ending in START, with 3 different lengths."""
    ids = np.zeros((n, 4), np.int32)
    mask = np.zeros((n, 4), np.int32)
    for row in range(n):
        length = 1 + row % 3
        ids[row, 4 - length :] = [3, 4, START][-length:]
        mask[row, 4 - length :] = 1
    return ids, mask


def says_good(prompt_ids, prompt_mask, response_ids, response_mask):
    return jnp.any((response_ids == GOOD) & (response_mask > 0), axis=-1).astype(jnp.float32)


def toy_state(p_good: float, optimizer):
    """A one-device state whose policy is the bigram policy (frozen reference: the same)."""
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    policy = create_model(init_boxed, optimizer, mesh, params=bigram_params(p_good))
    state, shardings = create_state(
        mesh,
        seed=0,
        models={"policy": policy},
        frozen={"reference": (policy[0].params, policy[1].params)},
        extras=policy_gradient.init_extras,
    )
    return mesh, state, shardings


def pg_config(num_prompts=4, sampling=None, **section):
    config = experiment_config("policy_gradient")
    config.batch_size = num_prompts
    config.sampling.update({"max_new_tokens": 3, "group_size": 4, **(sampling or {})})
    config.policy_gradient.update({"kl_coef": 0.0, **section})
    return config


def run_rollout(config, p_good=0.7, ref_p_good=0.7, source=says_good, prompts_given=None):
    """One jitted ``make_rollout`` call on the bigram policy and reference."""
    collect = jax.jit(policy_gradient.make_rollout(CONFIG, config))
    ids, mask = prompts(policy_gradient.prompts_per_iteration(config))
    out = collect(
        bigram_params(p_good),
        bigram_params(ref_p_good),
        policy_gradient.init_extras(),
        {"prompt_ids": ids, "prompt_mask": mask},
        rewards.as_pytree(source),
        jax.random.key(0),
    )
    return jax.device_get(out)


def test_learned_reward_source_scores_the_rollout():
    """A learned reward model (here w · [response says GOOD]) enters the jitted rollout as an
    argument and scores the same samples as the function it wraps, scaled by its params; a
    new value of its params is a new argument, not a recompile."""

    def apply_fn(variables, ids, mask):
        return variables["w"] * jnp.any((ids == GOOD) & (mask > 0), axis=-1).astype(jnp.float32)

    config = pg_config(num_prompts=8)
    _, _, expected = run_rollout(config, p_good=0.5)
    learned = rewards.reward_model(apply_fn, {"w": jnp.float32(3.0)})
    _, _, metrics = run_rollout(config, p_good=0.5, source=learned)
    assert 0 < expected["reward_mean"] < 1
    np.testing.assert_allclose(metrics["reward_mean"], 3.0 * expected["reward_mean"], rtol=1e-6)


def scripted_draw(rounds_rewards):
    """``draw(round)`` returning fixed samples (row r of round k has prompt id 10k + r) and the
    scripted rewards, as a jittable function of the round index."""
    table = jnp.asarray(rounds_rewards, jnp.float32)  # [rounds, N · G]
    rows = table.shape[1]

    def draw(k):
        ids = (10 * k + jnp.arange(rows))[:, None].astype(jnp.int32)
        ones = jnp.ones((rows, 2), jnp.int32)
        samples = rollout.Samples(ids, ones[:, :1], ids * ones, ones, jnp.zeros((rows, 2)))
        return samples, table[k]

    return draw


def test_select_groups_fills_from_later_rounds_and_masks_what_stays_empty():
    # N = 2 groups of G = 2. Round 0: group 0 all equal, group 1 varies; round 1: group 0 all
    # equal, group 1 varies; round 2 would vary everywhere but is never drawn.
    script = [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    select = lambda rounds: jax.jit(
        lambda: rollout.select_groups(
            scripted_draw(script), num_groups=2, group_size=2, max_rounds=rounds
        )
    )()
    samples, scores, metrics = jax.device_get(select(3))
    np.testing.assert_array_equal(samples.prompt_ids[:, 0], [2, 3, 12, 13])  # variance first
    np.testing.assert_array_equal(scores, [0.0, 1.0, 1.0, 0.0])
    assert metrics["fill_rate"] == 1.0 and metrics["sampling_rounds"] == 2.0
    assert metrics["groups_with_variance"] == 0.5  # 2 of the 4 groups drawn
    # One round only: the second slot stays empty — no tokens, no reward, never a zero-variance
    # group standing in for it.
    samples, scores, metrics = jax.device_get(select(1))
    np.testing.assert_array_equal(samples.response_mask[2:], 0)
    np.testing.assert_array_equal(scores[2:], 0.0)
    assert metrics["fill_rate"] == 0.5 and metrics["sampling_rounds"] == 1.0
    np.testing.assert_array_equal(
        rollout.group_has_variance(jnp.asarray(script[2]), 2), [True, True]
    )


def test_advantage_dispatch_hand_values():
    rewards_ = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    grpo = pg.advantages("grpo", rewards_, 4, eps=0.0)
    # Group 1: mean .5, unbiased std sqrt(1/3); group 2: mean .75, std .5.
    s1 = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(grpo, [s1, -s1, -s1, s1, 0.5, 0.5, 0.5, -1.5], rtol=1e-6)
    dr = pg.advantages("grpo", rewards_, 4, scale="none")
    np.testing.assert_allclose(dr, [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    rloo = pg.advantages("rloo", rewards_, 4)
    third = 1 / 3
    np.testing.assert_allclose(
        rloo, [1 - third, -2 * third, -2 * third, 1 - third, third, third, third, -1], rtol=1e-6
    )
    remax = pg.advantages("remax", rewards_, 4, greedy_rewards=jnp.full(8, 0.5))
    np.testing.assert_allclose(remax, rewards_ - 0.5)
    reinforce = pg.advantages("reinforce", rewards_, 1, baseline=0.25)
    np.testing.assert_allclose(reinforce, rewards_ - 0.25)
    with pytest.raises(ValueError, match="advantage estimator 'ppo'"):
        pg.advantages("ppo", rewards_, 4)


def test_ema_baseline_is_bias_corrected():
    baseline = rewards.EmaBaseline.create()
    assert float(baseline.estimate) == 0.0
    baseline = baseline.update(jnp.array([1.0, 0.0]), decay=0.9)
    np.testing.assert_allclose(baseline.estimate, 0.5, rtol=1e-6)  # one batch: its mean
    baseline = baseline.update(jnp.array([1.0, 1.0, 5.0]), 0.9, weights=jnp.array([1, 1, 0]))
    # (0.9 · 0.05 + 0.1 · 1) / (1 − 0.81): the weight-0 row does not count.
    np.testing.assert_allclose(baseline.estimate, 0.145 / 0.19, rtol=1e-6)


def test_verifier_and_gold_reward_agree_on_arithmetic():
    task, tokenizer = get_task("arithmetic"), build_tokenizer()
    texts = task.prompts(24, seed=3)
    responses = task.sample_base_responses(texts, np.random.default_rng(0))
    expected = task.gold_reward_text(texts, responses)
    assert 0 < expected.sum() < len(texts)  # both right and wrong answers
    prompt_ids = np.array([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"] + [EOS] for r in responses]
    response_ids = np.zeros((len(rows), 6), np.int32)
    response_mask = np.zeros_like(response_ids)
    for i, row in enumerate(rows):
        response_ids[i, : len(row)], response_mask[i, : len(row)] = row, 1
    batch = (prompt_ids, np.ones_like(prompt_ids), response_ids, response_mask)
    sources = {
        "gold": rewards.as_pytree(task.gold_reward),
        "verifier": rewards.verifier(task.gold_reward_text, tokenizer),
    }
    for name, source in sources.items():
        np.testing.assert_array_equal(
            jax.jit(rewards.call)(rewards.as_pytree(source), *batch), expected, err_msg=name
        )


def expected_rows(batch):
    """Every response is GOOD EOS or BAD EOS: rewards and first-token log-probs."""
    samples = batch.samples
    good = samples.response_ids[:, 0] == GOOD
    assert np.all(good | (samples.response_ids[:, 0] == BAD))
    np.testing.assert_array_equal(samples.response_ids[:, 1:], [[EOS, PAD]] * len(good))
    np.testing.assert_array_equal(samples.response_mask, [[1, 1, 0]] * len(good))
    return good.astype(np.float32)


def test_remax_rollout_uses_the_greedy_baseline():
    batch, _, metrics = run_rollout(pg_config(estimator="remax"))
    reward = expected_rows(batch)
    assert 0 < reward.sum() < len(reward)
    logprobs = batch.samples.logprobs
    np.testing.assert_allclose(logprobs[:, 0], np.log(np.where(reward > 0, 0.7, 0.3)), atol=1e-5)
    np.testing.assert_allclose(logprobs[:, 1:], 0.0, atol=1e-6)
    # The greedy response is GOOD EOS (reward 1), so A = r − 1.
    assert metrics["greedy_reward_mean"] == 1.0
    np.testing.assert_allclose(batch.advantages, reward - 1.0)
    ids, mask = prompts(4)
    np.testing.assert_array_equal(batch.samples.prompt_ids, np.repeat(ids, 4, axis=0))
    np.testing.assert_array_equal(batch.samples.prompt_mask, np.repeat(mask, 4, axis=0))
    assert metrics["reward_mean"] == pytest.approx(reward.mean())


def test_reinforce_with_kl_in_reward_overlong_penalty_and_normalization():
    """π says GOOD w.p. .7, π_ref w.p. .5; k3 per token with d = log π − log π_ref."""
    config = pg_config(
        estimator="reinforce",
        kl_coef=0.5,
        kl_estimator="k3",
        kl_in_reward=True,
        overlong_buffer=2,  # budget 3, buffer 2: a 2-token response scores (1 − 2) / 2
        normalize_rewards=True,
    )
    batch, extras, metrics = run_rollout(config, p_good=0.7, ref_p_good=0.5)
    reward = expected_rows(batch)
    d = np.log(np.where(reward > 0, 0.7 / 0.5, 0.3 / 0.5))
    np.testing.assert_allclose(batch.ref_logprobs[:, 0], np.log(0.5), atol=1e-5)
    assert metrics["kl"] == pytest.approx(d.mean(), abs=1e-5)
    assert metrics["reward_mean"] == pytest.approx(reward.mean() - 0.5)
    shaped = reward - 0.5 - 0.5 * (np.exp(-d) + d - 1)
    normalized = (shaped - shaped.mean()) / np.sqrt(shaped.var(ddof=1) + 1e-8)
    # First iteration: the moving-average baseline has no estimate yet (0).
    np.testing.assert_allclose(batch.advantages, normalized, rtol=1e-4, atol=1e-5)
    stats = extras["reward_stats"]
    assert float(stats.count) == len(reward)
    np.testing.assert_allclose(stats.mean, shaped.mean(), rtol=1e-5)
    np.testing.assert_allclose(extras["baseline"].estimate, normalized.mean(), atol=1e-6)


def test_dynamic_sampling_trains_only_on_groups_with_variance():
    config = pg_config(
        num_prompts=2, sampling={"group_size": 2}, dynamic_sampling=True, max_sampling_rounds=4
    )
    batch, _, metrics = run_rollout(config, p_good=0.5)
    filled = batch.samples.response_mask.sum(-1) > 0
    assert batch.advantages.shape == (4,)  # N · G rows, whatever the rounds
    assert metrics["fill_rate"] == filled.reshape(2, 2).all(-1).mean()
    reward = np.where(filled, batch.samples.response_ids[:, 0] == GOOD, 0).astype(np.float32)
    for group in np.flatnonzero(filled.reshape(2, 2).all(-1)):  # each kept group varies
        np.testing.assert_array_equal(sorted(reward.reshape(2, 2)[group]), [0.0, 1.0])
    np.testing.assert_allclose(np.abs(batch.advantages[filled]), 1 / math.sqrt(2), rtol=1e-3)
    np.testing.assert_array_equal(batch.advantages[~filled], 0.0)
    assert 1 <= metrics["sampling_rounds"] <= 4
    drawn = metrics["sampling_rounds"] * 2
    assert metrics["groups_with_variance"] * drawn >= metrics["fill_rate"] * 2
