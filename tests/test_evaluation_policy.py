"""Policy evaluation on a toy bigram policy whose rewards, KL and win rate are hand-computable.

The toy model is a real ``Transformer`` with attention and MLP outputs zeroed, one-hot
embeddings and a final norm that returns the one-hot: its logits are a row of the LM head, so
π(next | context) depends only on the last token — a bigram table written by hand.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import sharding
from irl_jax.evaluation import evaluate_policy, mean_and_stderr, sequence_kl, win_scores
from irl_jax.models import ModelConfig, Transformer

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


def bigram_params(p_good: float) -> dict:
    """After START: GOOD w.p. ``p_good``, else BAD; after any other token: EOS."""
    ids = jnp.zeros((1, 2), jnp.int32)
    params = sharding.unbox(Transformer(CONFIG).init(jax.random.key(0), ids, ids + 1)["params"])
    params["embed"]["embedding"] = jnp.eye(VOCAB)
    params["layer_0"]["attn"]["o"]["kernel"] = jnp.zeros_like(
        params["layer_0"]["attn"]["o"]["kernel"]
    )
    params["layer_0"]["mlp"]["down"]["kernel"] = jnp.zeros_like(
        params["layer_0"]["mlp"]["down"]["kernel"]
    )
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


def gold_reward(prompt_ids, prompt_mask, response_ids, response_mask):
    """1 if the response contains GOOD."""
    return jnp.any((response_ids == GOOD) & (response_mask > 0), axis=-1).astype(jnp.float32)


def length_reward(prompt_ids, prompt_mask, response_ids, response_mask):
    """A stand-in learned reward: 0.5 per real token, + the prompt length."""
    return 0.5 * response_mask.sum(-1) + prompt_mask.sum(-1)


class CharTokenizer:
    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


REWARDS = {"gold": gold_reward, "length": length_reward}


def test_helpers_match_hand_values():
    mean, stderr = mean_and_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5
    assert stderr == pytest.approx(math.sqrt(5 / 3) / 2)  # std(ddof=1) = sqrt(5/3)
    assert math.isnan(mean_and_stderr(np.array([3.0]))[1])
    np.testing.assert_array_equal(
        win_scores(jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 0.0, 3.0])), [1.0, 0.5, 0.0]
    )


def test_toy_policy_logits_are_the_bigram_table():
    ids, mask = prompts(3)
    logits = Transformer(CONFIG).apply({"params": bigram_params(0.75)}, ids, mask).logits[:, -1]
    logps = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(np.exp(logps[:, GOOD]), 0.75, atol=1e-6)
    np.testing.assert_allclose(np.exp(logps[:, BAD]), 0.25, atol=1e-6)


def test_deterministic_policy_against_stochastic_reference():
    """π: START → GOOD → EOS surely; π_ref: GOOD w.p. 1/4. Per sample KL = log 1 − log 1/4."""
    n = 10
    ids, mask = prompts(n)
    metrics, samples = evaluate_policy(
        CONFIG,
        bigram_params(1.0),
        bigram_params(0.25),
        ids,
        mask,
        reward_fns=REWARDS,
        rng=jax.random.key(0),
        max_new_tokens=3,
        num_samples_to_log=n,
        batch_size=4,  # 3 batches, the last padded
        tokenizer=CharTokenizer(),
    )
    assert len(samples) == n
    assert metrics["eval/num_samples"] == n
    assert metrics["eval/reward/gold_mean"] == 1.0 and metrics["eval/reward/gold_stderr"] == 0.0
    prompt_lengths = mask.sum(-1)
    expected_length, expected_length_se = mean_and_stderr(1.0 + prompt_lengths)
    assert metrics["eval/reward/length_mean"] == pytest.approx(expected_length)
    assert metrics["eval/reward/length_stderr"] == pytest.approx(expected_length_se)
    assert metrics["eval/kl_mean"] == pytest.approx(math.log(4), abs=1e-5)
    assert metrics["eval/kl_stderr"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["eval/response_length_mean"] == 2.0
    for row, entry in enumerate(samples):
        assert entry["response_ids"] == [GOOD, EOS]
        assert entry["response"] == f"t{GOOD} t{EOS}"
        assert entry["prompt_ids"] == [3, 4, START][-(1 + row % 3) :]
        assert entry["kl"] == pytest.approx(math.log(4), abs=1e-5)
        assert entry["ref_response_ids"] in ([GOOD, EOS], [BAD, EOS])
    # Win: the reference drew BAD (gold 0 < 1); tie (0.5): it drew GOOD too.
    ref_good = np.array([entry["ref_response_ids"][0] == GOOD for entry in samples])
    assert 0 < ref_good.sum() < n  # both outcomes occur with this seed
    wins = np.where(ref_good, 0.5, 1.0)
    assert metrics["eval/win_rate"] == pytest.approx(wins.mean())
    assert metrics["eval/win_rate_stderr"] == pytest.approx(wins.std(ddof=1) / math.sqrt(n))
    assert metrics["eval/ref_reward/gold_mean"] == pytest.approx(ref_good.mean())
    assert [entry["ref_reward/gold"] for entry in samples] == ref_good.astype(float).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_stochastic_policy_numbers_equal_hand_computation(temperature):
    """π: GOOD w.p. 3/4; π_ref: GOOD w.p. 1/4. Per-sample log-ratio ±log 3 (EOS adds 0)."""
    n = 24
    ids, mask = prompts(n)
    metrics, samples = evaluate_policy(
        CONFIG,
        bigram_params(0.75),
        bigram_params(0.25),
        ids,
        mask,
        reward_fns=REWARDS,
        rng=jax.random.key(1),
        max_new_tokens=4,
        temperature=temperature,
        num_samples_to_log=n,
        batch_size=8,
    )
    good = np.array([entry["response_ids"] == [GOOD, EOS] for entry in samples])
    assert all(entry["response_ids"] in ([GOOD, EOS], [BAD, EOS]) for entry in samples)
    assert 0 < good.sum() < n
    kl = np.where(good, math.log(3), -math.log(3))
    np.testing.assert_allclose([entry["kl"] for entry in samples], kl, atol=1e-5)
    assert metrics["eval/kl_mean"] == pytest.approx(kl.mean(), abs=1e-5)
    assert metrics["eval/kl_stderr"] == pytest.approx(kl.std(ddof=1) / math.sqrt(n), abs=1e-5)
    assert metrics["eval/reward/gold_mean"] == pytest.approx(good.mean())
    assert metrics["eval/reward/gold_stderr"] == pytest.approx(good.std(ddof=1) / math.sqrt(n))
    ref_good = np.array([entry["ref_response_ids"][0] == GOOD for entry in samples])
    wins = 0.5 * (1 + np.sign(good.astype(float) - ref_good))
    assert metrics["eval/win_rate"] == pytest.approx(wins.mean())
    assert metrics["eval/win_rate_stderr"] == pytest.approx(wins.std(ddof=1) / math.sqrt(n))
    if temperature == 0.5:
        # Tempered: π_T(GOOD) = 9/10, so GOOD dominates (24 draws; P(fewer than 16) < 1e-3).
        assert good.sum() >= 16


def test_without_gold_reward_no_win_rate_and_sequence_kl_zero_for_identical_policies():
    ids, mask = prompts(6)
    params = bigram_params(0.6)
    metrics, samples = evaluate_policy(
        CONFIG,
        params,
        params,
        ids,
        mask,
        reward_fns={"length": length_reward},
        rng=jax.random.key(2),
        max_new_tokens=2,
        num_samples_to_log=2,
    )
    assert "eval/win_rate" not in metrics and "ref_response_ids" not in samples[0]
    assert len(samples) == 2
    assert metrics["eval/kl_mean"] == pytest.approx(0.0, abs=1e-6)
    response = np.array([[GOOD, EOS], [BAD, EOS]] * 3)
    kl = sequence_kl(
        CONFIG, params, bigram_params(0.2), ids, mask, response, np.ones_like(response)
    )
    expected = np.log(np.array([0.6 / 0.2, 0.4 / 0.8] * 3))
    np.testing.assert_allclose(np.asarray(kl), expected, atol=1e-5)


def test_batch_sharded_evaluation_equals_one_device():
    ids, mask = prompts(16)
    kwargs = dict(reward_fns=REWARDS, rng=jax.random.key(3), max_new_tokens=3, batch_size=8)
    policy, ref = bigram_params(0.75), bigram_params(0.25)
    expected, _ = evaluate_policy(CONFIG, policy, ref, ids, mask, **kwargs)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        metrics, _ = evaluate_policy(
            CONFIG, policy, ref, ids, mask, data_sharding=sharding.batch_sharding(mesh), **kwargs
        )
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-5), name


def test_repeated_evaluation_does_not_recompile():
    ids, mask = prompts(6)
    kwargs = dict(reward_fns=REWARDS, max_new_tokens=3, batch_size=4)
    evaluate_policy(
        CONFIG, bigram_params(0.7), bigram_params(0.2), ids, mask, rng=jax.random.key(0), **kwargs
    )
    policy, ref = bigram_params(0.6), bigram_params(0.3)
    with count_compiles() as compiles:
        evaluate_policy(CONFIG, policy, ref, ids, mask, rng=jax.random.key(1), **kwargs)
    assert not compiles
