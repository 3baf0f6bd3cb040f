"""Rollouts: group selection, advantage dispatch, reward sources, and whole rollouts of a toy
bigram policy whose samples, log-probs and advantages are hand-computable.

The toy policy is a real ``Transformer`` with attention and MLP outputs zeroed, one-hot
embeddings and a final norm that returns the one-hot: its logits are a row of the LM head, so
π(next | context) depends only on the last token. After START it says GOOD w.p. p, else BAD;
after anything else EOS. The reward is 1 for a response containing GOOD.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from irl_jax import rewards, sharding
from irl_jax.algorithms import policy_gradient
from irl_jax.algorithms import rollout as rollout_lib
from irl_jax.models import ModelConfig, Transformer
from irl_jax.tasks import build_tokenizer, get_task
from irl_jax.train import create_train_state

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


def settings(**changes):
    section = policy_gradient.default_config()
    section.update({"max_new_tokens": 3, "group_size": 4, "kl_coef": 0.0, **changes})
    return section


def toy_state(p_good: float, optimizer=None):
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, shardings = create_train_state(
        init_boxed,
        optimizer or optax.sgd(0.0),
        mesh,
        seed=0,
        extras=rollout_lib.init_extras,
        params=bigram_params(p_good),
    )
    return mesh, state, shardings


def run_rollout(section, p_good=0.7, ref_p_good=0.7, num_prompts=4):
    mesh, state, shardings = toy_state(p_good)
    fn = rollout_lib.make_rollout_fn(CONFIG, section, says_good, shardings, mesh)
    ids, mask = prompts(num_prompts)
    batch, extras, metrics = fn(state, ids, mask, bigram_params(ref_p_good))
    return jax.device_get((batch, extras, metrics))


def test_learned_reward_source_scores_the_rollout():
    """A learned reward model (here w · [response says GOOD]) enters the jitted rollout as an
    argument and scores the same samples as the function it wraps, scaled by its params."""

    def apply_fn(variables, ids, mask):
        return variables["w"] * jnp.any((ids == GOOD) & (mask > 0), axis=-1).astype(jnp.float32)

    mesh, state, shardings = toy_state(0.5)
    ids, mask = prompts(8)
    reference = bigram_params(0.5)
    plain = rollout_lib.make_rollout_fn(CONFIG, settings(), says_good, shardings, mesh)
    learned = rollout_lib.make_rollout_fn(
        CONFIG, settings(), rewards.reward_model(apply_fn, {"w": jnp.float32(3.0)}), shardings, mesh
    )
    _, _, expected = jax.device_get(plain(state, ids, mask, reference))
    _, _, metrics = jax.device_get(learned(state, ids, mask, reference))
    assert 0 < expected["reward_mean"] < 1
    np.testing.assert_allclose(metrics["reward_mean"], 3.0 * expected["reward_mean"], rtol=1e-6)


def test_select_groups_prefers_groups_with_variance():
    rewards = jnp.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.5])
    kept, has_variance = rollout_lib.select_groups(rewards, group_size=2, num_groups=3)
    np.testing.assert_array_equal(has_variance, [False, True, False, True, False])
    np.testing.assert_array_equal(kept, [1, 3, 0])  # variance first, then sampling order
    rows = jnp.arange(10)[:, None] * jnp.ones((1, 3), jnp.int32)
    np.testing.assert_array_equal(rollout_lib.take_groups(rows, kept, 2)[:, 0], [2, 3, 6, 7, 0, 1])


def test_advantage_dispatch_hand_values():
    rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    grpo = rollout_lib.estimate_advantages(settings(advantage_eps=0.0), rewards)
    # Group 1: mean .5, unbiased std sqrt(1/3); group 2: mean .75, std .5.
    s1 = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(grpo, [s1, -s1, -s1, s1, 0.5, 0.5, 0.5, -1.5], rtol=1e-6)
    dr = rollout_lib.estimate_advantages(settings(advantage_scale="none"), rewards)
    np.testing.assert_allclose(dr, [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    rloo = rollout_lib.estimate_advantages(settings(estimator="rloo"), rewards)
    third = 1 / 3
    np.testing.assert_allclose(
        rloo, [1 - third, -2 * third, -2 * third, 1 - third, third, third, third, -1], rtol=1e-6
    )
    remax = rollout_lib.estimate_advantages(
        settings(estimator="remax"), rewards, greedy_rewards=jnp.full(8, 0.5)
    )
    np.testing.assert_allclose(remax, rewards - 0.5)
    reinforce = rollout_lib.estimate_advantages(
        settings(estimator="reinforce"), rewards, baseline=0.25
    )
    np.testing.assert_allclose(reinforce, rewards - 0.25)


def test_ema_baseline_is_bias_corrected():
    baseline = rollout_lib.EmaBaseline.create()
    assert float(baseline.estimate) == 0.0
    baseline = baseline.update(jnp.array([1.0, 0.0]), decay=0.9)
    np.testing.assert_allclose(baseline.estimate, 0.5, rtol=1e-6)  # one batch: its mean
    baseline = baseline.update(jnp.array([1.0, 1.0]), decay=0.9)
    # (0.9 · 0.05 + 0.1 · 1) / (1 − 0.81)
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
    for name in ("gold", "verifier"):
        fn = jax.jit(rollout_lib.make_reward_fn(name, task, tokenizer))
        np.testing.assert_array_equal(fn(*batch), expected, err_msg=name)
    with pytest.raises(ValueError, match="policy_gradient.reward='oracle'"):
        rollout_lib.make_reward_fn("oracle", task, tokenizer)


def expected_rows(batch):
    """Every response is GOOD EOS or BAD EOS: rewards and first-token log-probs."""
    good = batch.response_ids[:, 0] == GOOD
    assert np.all(good | (batch.response_ids[:, 0] == BAD))
    np.testing.assert_array_equal(batch.response_ids[:, 1:], [[EOS, PAD]] * len(good))
    np.testing.assert_array_equal(batch.response_mask, [[1, 1, 0]] * len(good))
    return good.astype(np.float32)


def test_remax_rollout_uses_the_greedy_baseline():
    batch, _, metrics = run_rollout(settings(estimator="remax"))
    reward = expected_rows(batch)
    assert 0 < reward.sum() < len(reward)
    np.testing.assert_allclose(
        batch.old_logprobs[:, 0], np.log(np.where(reward > 0, 0.7, 0.3)), atol=1e-5
    )
    np.testing.assert_allclose(batch.old_logprobs[:, 1:], 0.0, atol=1e-6)
    # The greedy response is GOOD EOS (reward 1), so A = r − 1.
    assert metrics["greedy_reward_mean"] == 1.0
    np.testing.assert_allclose(batch.advantages, reward - 1.0)
    ids, mask = prompts(4)
    np.testing.assert_array_equal(batch.prompt_ids, np.repeat(ids, 4, axis=0))
    np.testing.assert_array_equal(batch.prompt_mask, np.repeat(mask, 4, axis=0))
    assert metrics["reward_mean"] == pytest.approx(reward.mean())


def test_reinforce_with_kl_in_reward_overlong_penalty_and_normalization():
    """π says GOOD w.p. .7, π_ref w.p. .5; k3 per token with d = log π − log π_ref."""
    section = settings(
        estimator="reinforce",
        kl_coef=0.5,
        kl_estimator="k3",
        kl_in_reward=True,
        overlong_buffer=2,  # budget 3, buffer 2: a 2-token response scores (1 − 2) / 2
        normalize_rewards=True,
    )
    batch, extras, metrics = run_rollout(section, p_good=0.7, ref_p_good=0.5)
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


def test_dynamic_sampling_keeps_groups_with_variance_at_static_shapes():
    section = settings(group_size=2, dynamic_sampling=True, oversample=4)
    batch, _, metrics = run_rollout(section, p_good=0.5, num_prompts=8)
    reward = expected_rows(batch)
    assert batch.advantages.shape == (4,)  # 8 prompts sampled, 2 groups of 2 kept
    assert metrics["kept_with_variance"] == 1.0
    np.testing.assert_array_equal(reward.reshape(2, 2).sum(axis=1), [1.0, 1.0])
    assert 2 / 8 <= metrics["groups_with_variance"] < 1.0
    np.testing.assert_array_equal(batch.prompt_ids[0::2], batch.prompt_ids[1::2])
    np.testing.assert_allclose(np.abs(batch.advantages), 1 / math.sqrt(2), rtol=1e-3)
