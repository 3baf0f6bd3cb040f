"""Divergences to the demonstrator: per-token demonstrator log-probabilities that sum to the
sequence log-probability, the smoothed demonstrator, the sample and held-out metrics on
hand-made and demonstrator data, and their presence in every policy evaluation."""

import math

import numpy as np
import optax
import pytest

from irl_jax.evaluation import divergence
from irl_jax.tasks import STYLE_TOKEN, get_task, vocab

EOS = vocab.EOS_ID


@pytest.mark.parametrize("name", ["preference", "arithmetic", "reasoning"])
def test_token_logprobs_sum_to_the_sequence_logprob(name):
    task = get_task(name)
    prompts = task.prompts(64, 3)
    rng = np.random.default_rng(0)
    responses = task.sample_demonstrations(prompts, rng) + task.sample_base_responses(prompts, rng)
    off_support = 0
    for prompt, response in zip(prompts + prompts, responses):
        ids = vocab.encode([response])[0] + [EOS]
        tokens = task.demonstrator_token_logprobs(prompt, ids)
        expected = task.demonstrator_logprob(prompt, response)
        assert len(tokens) == len(ids)
        if math.isinf(expected):
            off_support += 1
            first = next(i for i, t in enumerate(tokens) if not math.isfinite(t))
            assert tokens[first] == -math.inf and all(math.isnan(t) for t in tokens[first + 1 :])
        else:
            np.testing.assert_allclose(sum(tokens), expected, rtol=1e-12, atol=1e-12)
    assert 0 < off_support < 64 + 1  # every demonstration is on the support, some base ones not
    # A response cut before its eos stays on the support (a prefix); one past it leaves it.
    ids = vocab.encode([responses[0]])[0]
    assert all(math.isfinite(t) for t in task.demonstrator_token_logprobs(prompts[0], ids))
    past = task.demonstrator_token_logprobs(prompts[0], ids + [EOS, ids[0]])
    assert past[-1] == -math.inf


def test_smoothed_demonstrator_hand_computed():
    eps, size = 0.1, 10
    demo = np.array([[math.log(0.5), -math.inf, math.nan, 0.0]])
    expected = [
        math.log(0.9 * 0.5 + 0.01),  # on the support
        math.log(0.01),  # the first token off it: ε / V
        math.log(0.1),  # after it: uniform
        math.log(0.9 + 0.01),
    ]
    np.testing.assert_allclose(divergence.smoothed_logprobs(demo, size, eps), [expected])


def test_sample_metrics_hand_computed():
    """Two responses to one prompt: the demonstrator's (on the support) and one that leaves it
    at its second token; the reverse-KL estimate is the mean of Σ_t log π − log π̃_demo."""
    task = get_task("preference")
    prompt = "review the food"
    on = vocab.encode(["the soup was tasty indeed ."])[0] + [EOS]
    off = vocab.encode(["the plot was"])[0] + [EOS]
    width = len(on)
    ids = np.zeros((2, width), np.int64)
    mask = np.zeros((2, width), np.int64)
    ids[0], mask[0] = on, 1
    ids[1, : len(off)], mask[1, : len(off)] = off, 1
    logprobs = np.where(mask > 0, -0.5, 0.0)
    metrics = divergence.sample_metrics(
        task,
        [prompt, prompt],
        ids,
        mask,
        logprobs,
        vocab_size=100,
        eos_id=EOS,
        style_id=vocab.STYLE_ID,
    )
    eps, size = divergence.SMOOTHING, 100
    demo_on = task.demonstrator_token_logprobs(prompt, on)
    smoothed_on = [math.log((1 - eps) * math.exp(t) + eps / size) for t in demo_on]
    smoothed_off = [smoothed_on[0], math.log(eps / size), math.log(1 / size), math.log(1 / size)]
    kl = [sum(-0.5 - s for s in smoothed_on), sum(-0.5 - s for s in smoothed_off)]
    np.testing.assert_allclose(metrics["eval/demo/reverse_kl_mean"], np.mean(kl), rtol=1e-10)
    np.testing.assert_allclose(
        metrics["eval/demo/reverse_kl_stderr"], np.std(kl, ddof=1) / math.sqrt(2), rtol=1e-10
    )
    assert metrics["eval/demo/off_support_rate"] == 0.5
    assert metrics["eval/demo/style_rate"] == 0.5
    # On the support: the first response only, π(S) = ½, unsmoothed.
    on_kl = -0.5 * len(on) - task.demonstrator_logprob(prompt, "the soup was tasty indeed .")
    np.testing.assert_allclose(
        metrics["eval/demo/reverse_kl_in_support"], on_kl + math.log(2), rtol=1e-10
    )


def test_the_demonstrator_itself_is_at_zero_divergence():
    """Samples of the demonstrator scored with its own log-probabilities: nothing off the
    support, reverse KL to the smoothed demonstrator in (0, −Σ_t log(1 − ε)]; on its own
    held-out demonstrations the forward KL is exactly 0 and the cross-entropy its entropy."""
    task = get_task("preference")
    prompts = task.prompts(256, 5, split="eval")
    responses = task.sample_demonstrations(prompts, np.random.default_rng(1))
    rows = [vocab.encode([r])[0] + [EOS] for r in responses]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    logprobs = np.zeros((len(rows), width))
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
        logprobs[i, : len(row)] = task.demonstrator_token_logprobs(prompt, row)
    metrics = divergence.sample_metrics(
        task, prompts, ids, mask, logprobs, vocab_size=512, eos_id=EOS, style_id=vocab.STYLE_ID
    )
    assert metrics["eval/demo/off_support_rate"] == 0.0
    bound = -math.log(1 - divergence.SMOOTHING) * mask.sum(-1).mean()
    assert 0 < metrics["eval/demo/reverse_kl_mean"] <= bound
    assert abs(metrics["eval/demo/style_rate"] - task.style_prob) < 0.1

    nll = -np.array([task.demonstrator_logprob(p, r) for p, r in zip(prompts, responses)])
    forward = divergence.forward_metrics(task, prompts, responses, nll, mask.sum(-1))
    assert forward["eval/demo/forward_kl_mean"] == 0.0
    # Token-weighted entropy: the sampled cross-entropy is close to it.
    assert abs(forward["eval/demo/forward_kl_per_token"]) < 0.1
    assert divergence.style_rate(responses, STYLE_TOKEN) == metrics["eval/demo/style_rate"]


def test_every_policy_evaluation_reports_the_divergences():
    """``setup.policy_evaluator`` (every algorithm's) adds the ``eval/demo/`` metrics next to
    the existing ones; a random policy is far off the demonstrator's support."""
    import jax

    from irl_jax.algorithms import experiment_config
    from irl_jax.algorithms import setup as setup_lib

    config = experiment_config("policy_gradient")
    config.data.max_length = 32
    config.policy_eval.update(num_prompts=8, max_new_tokens=6, batch_size=8)
    config.model_overrides.num_layers = 1
    config.mesh_shape.update({"data": 1})
    setup = setup_lib.setup(config, devices=jax.devices()[:1])
    params = setup_lib.create_policy(setup, optax.sgd(0.1))[0].params
    metrics, _ = setup_lib.policy_evaluator(setup)(params, params)
    for name in ("reward/gold_mean", "kl_mean", "win_rate", "response_length_mean"):
        assert f"eval/{name}" in metrics
    assert metrics["eval/demo/off_support_rate"] == 1.0
    assert metrics["eval/demo/forward_ce"] > 3.0  # ≈ log V for a random policy
    assert np.isfinite(metrics["eval/demo/reverse_kl_mean"])
    assert 0.2 < metrics["eval/demo/style_rate_demos"] < 0.8
