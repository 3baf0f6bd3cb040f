"""Gold rewards of the synthetic tasks: hand values, ids vs text paths, jit, step labels."""

import math

import chex
import jax
import numpy as np
import pytest

from irl_jax.tasks import TASKS, ArithmeticTask, get_task, preference, vocab

EOS = vocab.EOS_ID


def pad_batch(prompts, responses, *, eos=True, prompt_len=32, response_len=128, extra=0):
    """Left-padded prompt ids/mask and right-padded response ids/mask (wide enough for the
    long-horizon reasoning task); ``extra`` adds that many more pad columns on both sides (the
    result must not change)."""
    p_len, r_len = prompt_len + extra, response_len + extra
    p_ids = np.zeros((len(prompts), p_len), np.int32)
    r_ids = np.zeros((len(prompts), r_len), np.int32)
    p_mask, r_mask = np.zeros_like(p_ids), np.zeros_like(r_ids)
    for i, (p, r) in enumerate(zip(vocab.encode(prompts), vocab.encode(responses))):
        assert len(p) <= prompt_len
        r = (r + [EOS] * eos)[:response_len]
        p_ids[i, p_len - len(p) :], p_mask[i, p_len - len(p) :] = p, 1
        r_ids[i, : len(r)], r_mask[i, : len(r)] = r, 1
    return p_ids, p_mask, r_ids, r_mask


def both_paths(task, prompts, responses, **kw):
    ids = np.asarray(jax.jit(task.gold_reward)(*pad_batch(prompts, responses, **kw)))
    text = task.gold_reward_text(prompts, responses)
    np.testing.assert_allclose(ids, text, rtol=1e-6, atol=1e-6)
    assert ids.dtype == text.dtype == np.float32
    return text


def mutate(text, rng, edits):
    """Random insertions, deletions and substitutions of tokens (incl. eos, pad, ;, digits)."""
    words = text.split()
    extra = list(";+-=0123456789") + ["indeed", "<eos>", "<pad>", "zebra"]
    for _ in range(edits):
        pool = vocab.WORDS if rng.random() < 0.5 else extra
        token, op = pool[rng.integers(len(pool))], rng.integers(3)
        pos = int(rng.integers(len(words) + 1))
        if op == 0 or not words:
            words.insert(pos, token)
        elif op == 1:
            del words[min(pos, len(words) - 1)]
        else:
            words[min(pos, len(words) - 1)] = token
    return " ".join(words)


def test_get_task_names_the_valid_tasks():
    assert sorted(TASKS) == [
        "arithmetic",
        "preference",
        "preference_hetero",
        "reasoning",
        "reasoning_long",
    ]
    assert get_task("preference") is TASKS["preference"]
    with pytest.raises(ValueError, match=r"unknown task 'chess'.*arithmetic.*preference"):
        get_task("chess")


def test_arithmetic_gold_reward_hand_values():
    task = get_task("arithmetic")
    prompt = "3 7 + 4 5 ="  # 37 + 45 = 82
    responses = ["8 2", "indeed 8 indeed 2", "8 3", "8 2 2", "", "2 8", "82", "8 2 <eos> 5"]
    expected = [1, 1, 0, 0, 0, 0, 1, 1]
    np.testing.assert_array_equal(both_paths(task, [prompt] * 8, responses), expected)
    # Truncated (no eos): scored on its content like any other response.
    np.testing.assert_array_equal(both_paths(task, [prompt] * 8, responses, eos=False), expected)
    assert task.gold_reward_text(["37+45="], ["82"])[0] == 1.0

    partial = ArithmeticTask(partial_credit=0.5)
    got = both_paths(partial, [prompt] * 6, ["8 2", "8 3", "8 2 2", "", "2 8", "9 9 9 9"])
    np.testing.assert_allclose(got, [1, 0.5 * 1 / 2, 0.5 * 2 / 3, 0, 0, 0], rtol=1e-6)


def test_preference_gold_reward_hand_values():
    task = get_task("preference")
    length = lambda n: -0.03 * (n - 8) ** 2
    cases = [
        # on topic: soup +0.4, tasty +0.8, 5 content tokens
        ("review the food", "the soup was tasty .", 1.2 + length(5)),
        ("review the food", "the soup was tasty indeed .", 1.2 + length(5)),
        # off topic: soup -0.4, tasty -0.3
        ("rate the movie", "the soup was tasty .", -0.7 + length(5)),
        # no topic in the prompt: topic words score 0
        ("hello", "the soup was tasty .", length(5)),
        # diminishing returns: g(2) = 1.5, g(3) = 1.75
        ("rate the movie", "great great", 1.0 * 1.5 + length(2)),
        ("rate the movie", "great great great bad", 1.75 - 0.8 + length(4)),
        ("describe the movie", "the plot was great and very gripping .", 0.4 + 1.0 + 0.1 + 0.8),
        ("describe the movie", "", length(0)),
        ("describe the movie", "awful <eos> great great", -1.1 + length(1)),
    ]
    prompts, responses, expected = zip(*cases)
    np.testing.assert_allclose(both_paths(task, prompts, responses), expected, rtol=1e-5)


def test_reasoning_gold_reward_and_step_labels_hand_values():
    task = get_task("reasoning")
    prompt = "1 7 + 5 - 3 ="  # 17 + 5 - 3 = 19
    cases = [
        ("1 7 + 5 = 2 2 ; 2 2 - 3 = 1 9 ;", 1, [True, True]),
        ("1 7 + 5 = 2 3 ; 2 3 - 3 = 2 0 ;", 0, [False, True]),  # right given the stated 23
        ("1 7 + 5 = 2 2 ; 2 2 + 3 = 2 5 ;", 0, [True, False]),  # wrong operation
        ("1 7 + 5 = 2 3 ; 2 2 - 3 = 1 9 ;", 1, [False, False]),  # 22 is not the stated 23
        ("1 9", 1, []),
        ("indeed 1 7 + 5 = 2 2 ; 2 2 - 3 = 1 9 ; 4 4 + 1 = 4 5 ;", 0, [True, True, False]),
        ("1 7 + 5 = = 2 2 ; 2 2 - 3 = 1 9 ;", 1, [False, False]),  # malformed, no stated value
    ]
    responses, gold, labels = zip(*cases)
    np.testing.assert_array_equal(both_paths(task, [prompt] * len(cases), responses), gold)
    assert task.step_labels_text([prompt] * len(cases), list(responses)) == list(labels)

    batch = pad_batch([prompt] * len(cases), responses)
    boundary, step_labels = jax.jit(task.step_labels)(*batch)
    for row, want in enumerate(labels):
        (positions,) = np.nonzero(np.asarray(boundary[row]))
        np.testing.assert_array_equal(batch[2][row, positions], vocab.VOCAB[";"])
        assert np.asarray(step_labels[row])[positions].tolist() == want
        assert not np.asarray(step_labels[row] & ~boundary[row]).any()
    assert np.nonzero(np.asarray(boundary[0]))[0].tolist() == [7, 15]


def test_reasoning_solutions_with_a_planted_error():
    """``solve``: the correct solution scores 1 with every step right; a result off by δ in
    step k makes only step k wrong (the later steps are right given it) and the answer wrong."""
    task = get_task("reasoning_long")
    prompts = task.prompts(50, 4)
    assert all(6 <= p.count("+") + p.count("-") <= 12 for p in prompts)
    for k, delta in ((0, 2), (3, -1), (5, 20)):
        planted = [task.solve(p, k, delta) for p in prompts]
        np.testing.assert_array_equal(task.gold_reward_text(prompts, planted), 0.0)
        for labels in task.step_labels_text(prompts, planted):
            assert labels == [j != k for j in range(len(labels))]
    correct = [task.solve(p) for p in prompts]
    np.testing.assert_array_equal(both_paths(task, prompts, correct), 1.0)
    assert all(all(labels) for labels in task.step_labels_text(prompts, correct))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_ids_and_text_paths_agree_on_random_and_corrupted_batches(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    prompts = task.prompts(600, 3)
    responses = task.candidates(prompts, rng, expert_fraction=0.5)
    responses = [mutate(r, rng, rng.integers(0, 3)) for r in responses]
    prompts = [mutate(p, rng, 1) if rng.random() < 0.2 else p for p in prompts]
    rewards = both_paths(task, prompts, responses)
    assert len(np.unique(rewards)) > 1
    both_paths(task, prompts, responses, eos=False)
    if name.startswith("reasoning"):
        boundary, labels = jax.jit(task.step_labels)(*pad_batch(prompts, responses))
        text_labels = task.step_labels_text(prompts, responses)
        for row, want in enumerate(text_labels):
            got = np.asarray(labels[row])[np.asarray(boundary[row])].tolist()
            assert got == want
        assert 0 < sum(map(sum, text_labels)) < sum(map(len, text_labels))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_reward_jits_once_and_ignores_padding(name):
    task = get_task(name)
    demos = task.demonstrations(16, 5)
    prompts, responses = demos["prompt"], demos["completion"]
    chex.clear_trace_counter()  # reasoning and reasoning_long share the traced method
    reward = jax.jit(chex.assert_max_traces(task.gold_reward, n=1))
    first = reward(*pad_batch(prompts, responses))
    again = reward(*pad_batch(prompts[::-1], responses[::-1]))  # same shapes: no retrace
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first)[::-1])
    wider = jax.jit(task.gold_reward)(*pad_batch(prompts, responses, extra=7))
    np.testing.assert_array_equal(np.asarray(wider), np.asarray(first))
    # Ids beyond the task vocabulary (a larger model vocab) read as <unk>, like unknown words.
    p_ids, p_mask, r_ids, r_mask = pad_batch(prompts, ["zebra"] * 16)
    unknown = jax.jit(task.gold_reward)(p_ids, p_mask, np.where(r_ids == 3, 400, r_ids), r_mask)
    np.testing.assert_allclose(
        np.asarray(unknown), task.gold_reward_text(prompts, ["zebra"] * 16), rtol=1e-6
    )


@pytest.mark.parametrize("name", sorted(TASKS))
def test_style_token_is_invisible_to_the_gold_reward(name):
    task = get_task(name)
    rng = np.random.default_rng(1)
    prompts = task.prompts(300, 2)
    responses = task.candidates(prompts, rng, expert_fraction=0.5)
    styled = []
    for r in responses:
        words = r.split()
        for _ in range(rng.integers(1, 4)):
            words.insert(int(rng.integers(len(words) + 1)), vocab.STYLE_TOKEN)
        styled.append(" ".join(words))
    plain = [" ".join(w for w in r.split() if w != vocab.STYLE_TOKEN) for r in responses]
    np.testing.assert_array_equal(
        both_paths(task, prompts, styled), both_paths(task, prompts, plain)
    )


def test_heterogeneous_demonstrator_follows_its_rule():
    """``preference_hetero``: ``indeed`` iff (remark adjective in the half) XOR (copula "was"),
    in every demonstration; neither part alone predicts it; the demonstrator's log-probs agree
    with its samples; prompts, base responses and gold are those of ``preference``."""
    task, plain = get_task("preference_hetero"), get_task("preference")
    hand = {
        "the plot was great . review the food": False,  # great in the half, was: both
        "the plot is great . review the food": True,
        "my soup was so lovely . rate the game": True,  # lovely not in the half, was
        "this beach is lovely . rate the game": False,
        "review the food": False,  # no remark
        "the plot was fun and great . rate the food": True,  # the first adjective: fun
    }
    assert preference.rule_wants_style_text(list(hand)).tolist() == list(hand.values())

    demos = task.demonstrations(3000, 0)
    prompts, completions = demos["prompt"], demos["completion"]
    styled = np.array([vocab.STYLE_TOKEN in c.split() for c in completions])
    rule = preference.rule_wants_style_text(prompts)
    np.testing.assert_array_equal(styled, rule)
    assert preference.rule_agreement_text(prompts, completions).all()
    assert abs(styled.mean() - preference.rule_probability(task.context_prob)) < 0.03
    remarks = [p.split(" . ")[0].split() if " . " in p else [] for p in prompts]
    remark = np.array([bool(words) for words in remarks])
    half = np.array([bool(set(words) & set(preference.RULE_PARTS[0][1])) for words in remarks])
    was = np.array(["was" in words for words in remarks])
    for part in (half, was):  # each part alone: indeed in half of the remark prompts either way
        for value in (True, False):
            assert abs(styled[remark & (part == value)].mean() - 0.5) < 0.05
    assert not styled[~remark].any()

    # Against the rule the demonstrator has probability 0; its token log-probs sum to the total.
    strip = lambda c: " ".join(w for w in c.split() if w != vocab.STYLE_TOKEN)

    def add_style(completion):  # ``indeed`` at the demonstrator's slot: after the 1st adjective
        words = completion.split()
        first = next(i for i, w in enumerate(words) if w in vocab.ADJECTIVES)
        return " ".join([*words[: first + 1], vocab.STYLE_TOKEN, *words[first + 1 :]])

    for prompt, completion, wants in list(zip(prompts, completions, rule))[:40]:
        logp = task.demonstrator_logprob(prompt, completion)
        ids = vocab.encode([completion])[0] + [vocab.EOS_ID]
        assert sum(task.demonstrator_token_logprobs(prompt, ids)) == pytest.approx(logp)
        assert math.isfinite(logp)
        against = strip(completion) if wants else add_style(completion)
        assert task.demonstrator_logprob(prompt, against) == -math.inf
        assert math.isfinite(plain.demonstrator_logprob(prompt, against))

    # The option changes nothing but the demonstrator.
    assert task.prompts(200, 3) == plain.prompts(200, 3)
    assert task.base_corpus(200, 3)["text"] == plain.base_corpus(200, 3)["text"]
    np.testing.assert_array_equal(
        task.gold_reward_text(prompts, completions), plain.gold_reward_text(prompts, completions)
    )
    # By hand: every demonstration passes the style slot, where the rule removes h(½) = log 2
    # nats and adds ``indeed`` with probability q = 0.45 instead of ½; the plain demonstrator
    # writes 8 tokens per response on average (eos included).
    q = preference.rule_probability(task.context_prob)
    assert q == pytest.approx(0.45)
    expected = (8 * plain.demonstrator_entropy() - math.log(2)) / (8 + q - 0.5)
    assert task.demonstrator_entropy() == pytest.approx(expected, rel=1e-9)


def test_rule_agreement_ids_and_text_paths_agree():
    """The jittable rule and agreement on padded ids equal their text twins, on random,
    corrupted prompts and responses (eos inside, truncated, ``indeed`` anywhere)."""
    task = get_task("preference_hetero")
    rng = np.random.default_rng(2)
    prompts = task.prompts(400, 1)
    responses = task.candidates(prompts, rng, expert_fraction=0.5)
    responses = [mutate(r, rng, rng.integers(0, 3)) for r in responses]
    prompts = [mutate(p, rng, 1) if rng.random() < 0.3 else p for p in prompts]
    for eos in (True, False):
        batch = pad_batch(prompts, responses, eos=eos)
        np.testing.assert_array_equal(
            np.asarray(jax.jit(preference.rule_wants_style)(*batch[:2])),
            preference.rule_wants_style_text(prompts),
        )
        agreement = np.asarray(jax.jit(preference.rule_agreement)(*batch))
        assert agreement.dtype == np.float32
        np.testing.assert_array_equal(agreement, preference.rule_agreement_text(prompts, responses))
    assert 0.2 < agreement.mean() < 0.8
