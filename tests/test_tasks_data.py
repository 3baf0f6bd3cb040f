"""Data generators of the synthetic tasks: determinism, formats, annotation noise, entropy."""

import math

import numpy as np
import pytest

from irl_jax.data.formats import detect_format
from irl_jax.tasks import TASKS, ReasoningTask, build_tokenizer, get_task, vocab
from irl_jax.tasks.base import split_of

NAMES = sorted(TASKS)


def generate_all(task, seed):
    """Every generator's output at small n, as plain Python objects."""
    out = {
        "prompts": task.prompts(40, seed),
        "base_corpus": task.base_corpus(40, seed).to_dict(),
        "demonstrations": task.demonstrations(40, seed).to_dict(),
        "same_prompt": task.preferences(40, seed, beta_ann=2.0)[0].to_dict(),
        "cross_prompt": task.preferences(40, seed, 2.0, pairing="cross_prompt")[0].to_dict(),
        "rankings": task.rankings(40, seed, k=3, beta_ann=2.0).to_dict(),
        "unpaired": task.unpaired(40, seed, beta_ann=2.0).to_dict(),
    }
    if isinstance(task, ReasoningTask):
        out["stepwise"] = task.stepwise(40, seed).to_dict()
    return out


@pytest.mark.parametrize("name", NAMES)
def test_generators_are_deterministic_by_seed(name):
    task = get_task(name)
    first, again, other = generate_all(task, 0), generate_all(task, 0), generate_all(task, 1)
    assert first == again
    for key in first:
        assert first[key] != other[key], key
    assert first["demonstrations"]["prompt"] == first["prompts"]


@pytest.mark.parametrize("name", NAMES)
def test_columns_follow_the_standard_formats(name):
    task = get_task(name)
    data = generate_all(task, 0)
    expected = {
        "base_corpus": ("text", ["text"]),
        "demonstrations": ("prompt_completion", ["prompt", "completion"]),
        "same_prompt": ("preference", ["prompt", "chosen", "rejected"]),
        "cross_prompt": (
            "cross_prompt_preference",
            ["chosen_prompt", "chosen", "rejected_prompt", "rejected"],
        ),
        "rankings": ("ranking", ["prompt", "completions", "scores"]),
        "unpaired": ("unpaired", ["prompt", "completion", "label", "score"]),
        "stepwise": ("stepwise", ["prompt", "completions", "labels", "completion"]),
    }
    for key, rows in data.items():
        if key == "prompts":
            continue
        fmt, columns = expected[key]
        assert set(columns) <= set(rows), key
        assert detect_format(rows).name == fmt, key
    for key in ("same_prompt", "cross_prompt"):
        rows = data[key]
        assert rows["chosen_score"] and len(rows["rejected_score"]) == 40
        prompts = rows.get("chosen_prompt", rows.get("prompt"))
        np.testing.assert_allclose(
            task.gold_reward_text(prompts, rows["chosen"]), rows["chosen_score"], rtol=1e-6
        )
    rankings = data["rankings"]
    assert all(len(c) == len(s) == 3 for c, s in zip(rankings["completions"], rankings["scores"]))
    unpaired = data["unpaired"]
    assert all(isinstance(label, bool) for label in unpaired["label"])


@pytest.mark.parametrize("name", NAMES)
def test_sequences_fit_the_tiny_model_budgets(name):
    tokenizer = build_tokenizer()
    demos = get_task(name).demonstrations(500, 0)
    prompt_lens = [len(ids) for ids in tokenizer(list(demos["prompt"])).input_ids]
    response_lens = [len(ids) + 1 for ids in tokenizer(list(demos["completion"])).input_ids]
    if name == "reasoning_long":  # 6-12 steps: a prompt of <= 32 tokens, responses of 40-128
        assert max(prompt_lens) <= 32 and min(response_lens) >= 40 and max(response_lens) <= 128
        return
    assert max(p + r for p, r in zip(prompt_lens, response_lens)) <= 48
    if name == "preference":
        # "[opener noun copula intensifier adjective .] verb the topic": at most 9 words.
        assert max(prompt_lens) <= 9 and min(response_lens) >= 5 and max(response_lens) <= 16


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_prompts_never_occur_in_training(name):
    """Every prompt belongs to one split by a hash of its text: the generators' eval prompts are
    disjoint from their train prompts, and the prompt spaces hold thousands of prompts."""
    task = get_task(name)
    train = set(task.prompts(4096, 0))
    held_out = set(task.prompts(512, 1, split="eval"))
    assert not train & held_out
    assert all(split_of(p) == "train" for p in train)
    assert all(split_of(p) == "eval" for p in held_out)
    assert len(held_out) > 256 and len(train) > 2048  # thousands of distinct prompts
    demos = task.demonstrations(64, 1, split="eval")
    assert set(demos["prompt"]) <= set(task.prompts(64, 1, split="eval"))
    with pytest.raises(ValueError, match="split must be one of"):
        task.prompts(4, 0, split="test")


def test_preference_remarks_are_distractors_of_the_gold_reward():
    """The remark before the request changes nothing: the topic is the request's (the last
    topic name), so the same response scores the same after any remark."""
    task = get_task("preference")
    response = ["the soup was very tasty indeed and fresh ."] * 3
    prompts = [
        "review the food",
        "my plot was dull . review the food",
        "the hero is fun . rate the food",
    ]
    scores = task.gold_reward_text(prompts, response)
    assert scores[0] == scores[1] == scores[2] > 1.0
    assert task.demonstrator_logprob(prompts[1], response[0]) == task.demonstrator_logprob(
        prompts[0], response[0]
    )


def test_flip_rate_matches_the_annotation_model():
    task = get_task("preference")
    beta = 2.0
    for pairing in ("same_prompt", "cross_prompt"):
        data, stats = task.preferences(4000, 7, beta_ann=beta, pairing=pairing)
        delta = np.asarray(data["chosen_score"]) - np.asarray(data["rejected_score"])
        expected = np.mean(1.0 / (1.0 + np.exp(beta * np.abs(delta))))
        assert stats["expected_flip_rate"] == pytest.approx(expected, rel=1e-9)
        assert stats["flip_rate"] == pytest.approx(np.mean(delta < 0) + 0.5 * np.mean(delta == 0))
        assert 0.05 < stats["flip_rate"] < 0.4
        assert stats["flip_rate_stderr"] < 0.008
        assert abs(stats["flip_rate"] - expected) < 3 * stats["flip_rate_stderr"], stats
    noiseless = task.preferences(500, 7, beta_ann=math.inf)[1]
    assert noiseless["flip_rate"] == 0.5 * noiseless["tie_rate"]
    assert noiseless["expected_flip_rate"] == pytest.approx(noiseless["flip_rate"])
    # A 0/1 gold reward gives ties, each counted as half a flip.
    ties = get_task("arithmetic").preferences(1000, 7, beta_ann=4.0)[1]
    assert 0.2 < ties["tie_rate"] < 0.8
    assert abs(ties["flip_rate"] - ties["expected_flip_rate"]) < 4 * ties["flip_rate_stderr"]


def test_rankings_follow_plackett_luce():
    task = get_task("preference")
    beta, k = 1.5, 4
    data = task.rankings(3000, 3, k=k, beta_ann=beta)
    scores = np.asarray(data["scores"])
    row = data[5]
    np.testing.assert_allclose(
        task.gold_reward_text([row["prompt"]] * k, row["completions"]), row["scores"], rtol=1e-6
    )
    # P(top item = j) = softmax(β r)_j, so P(top item has the max gold) = Σ_{j ∈ argmax} softmax_j.
    weights = np.exp(beta * (scores - scores.max(axis=1, keepdims=True)))
    softmax = weights / weights.sum(axis=1, keepdims=True)
    p_best = np.sum(softmax * (scores == scores.max(axis=1, keepdims=True)), axis=1)
    empirical = np.mean(scores[:, 0] == scores.max(axis=1))
    stderr = np.sqrt(np.sum(p_best * (1 - p_best))) / len(p_best)
    assert abs(empirical - p_best.mean()) < 3 * stderr
    assert 0.3 < empirical < 0.95
    exact = np.asarray(task.rankings(200, 3, k=k, beta_ann=math.inf)["scores"])
    assert np.all(np.diff(exact, axis=1) <= 0)


def test_unpaired_labels_follow_the_threshold_model():
    task = get_task("preference")
    data = task.unpaired(4000, 4, beta_ann=2.0)
    scores, labels = np.asarray(data["score"]), np.asarray(data["label"])
    p = 1.0 / (1.0 + np.exp(-2.0 * (scores - task.label_threshold)))
    stderr = np.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(labels.mean() - p.mean()) < 3 * stderr
    assert 0.3 < labels.mean() < 0.7
    assert scores[labels].mean() > scores[~labels].mean() + 0.5
    np.testing.assert_allclose(
        task.gold_reward_text(data["prompt"][:50], data["completion"][:50]), scores[:50], rtol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_demonstrator_entropy_matches_a_monte_carlo_estimate(name):
    """Σ −log π_demo(y, eos | x) / Σ (|y| + 1) over sampled demonstrations → the stated entropy."""
    task = get_task(name)
    demos = task.demonstrations(4000, 11)
    nll = -np.array(
        [task.demonstrator_logprob(p, y) for p, y in zip(demos["prompt"], demos["completion"])]
    )
    tokens = np.array([len(ids) + 1 for ids in vocab.encode(demos["completion"])])
    assert np.all(np.isfinite(nll))
    estimate = nll.sum() / tokens.sum()
    stderr = np.sqrt(np.sum((nll - estimate * tokens) ** 2)) / tokens.sum()  # ratio estimator
    assert abs(estimate - task.demonstrator_entropy()) < 3.5 * stderr, (estimate, stderr)
    assert stderr < 0.05 * task.demonstrator_entropy()
    assert task.demonstrator_logprob(demos["prompt"][0], "zebra") == -math.inf


@pytest.mark.parametrize("name", NAMES)
def test_spurious_style_token_is_frequent_in_demonstrations_only(name):
    task = get_task(name)
    count = lambda texts: np.mean([vocab.STYLE_TOKEN in t.split() for t in texts])
    demo_rate = count(task.demonstrations(2000, 0)["completion"])
    base_rate = count(task.base_corpus(2000, 0)["text"])
    assert demo_rate >= 0.25 and base_rate <= 0.06
    demos = task.demonstrations(1000, 0)
    gold = task.gold_reward_text(demos["prompt"], demos["completion"])
    styled = np.array([vocab.STYLE_TOKEN in c.split() for c in demos["completion"]])
    # The style token is independent of quality: demos with and without it score alike.
    assert abs(gold[styled].mean() - gold[~styled].mean()) < 0.15


def test_demonstrations_beat_the_base_distribution_on_gold():
    for task in TASKS.values():
        demos = task.demonstrations(1000, 0)
        prompts = task.prompts(1000, 0)
        base = task.sample_base_responses(prompts, np.random.default_rng(0))
        demo_gold = task.gold_reward_text(demos["prompt"], demos["completion"]).mean()
        assert demo_gold > task.gold_reward_text(prompts, base).mean() + 0.2, task.name


def test_stepwise_rows_are_consistent_with_the_flat_completion():
    task = get_task("reasoning")
    data = task.stepwise(300, 0)
    tokenizer = build_tokenizer()
    separator = tokenizer(";", add_special_tokens=False).input_ids
    for row in data:
        assert len(row["labels"]) == len(row["completions"]) >= 1
        assert " ".join(f"{s} ;" for s in row["completions"]) == row["completion"]
        pieces = [tokenizer(s).input_ids + separator for s in row["completions"]]
        assert sum(pieces, []) == tokenizer(row["completion"]).input_ids
    labels = sum(data["labels"], [])
    assert 0.4 < np.mean(labels) < 0.95
    exact = ReasoningTask(noise=0.0).demonstrations(200, 0)
    steps = ReasoningTask().step_labels_text(exact["prompt"], exact["completion"])
    assert all(all(s) and 2 <= len(s) <= 4 for s in steps)
