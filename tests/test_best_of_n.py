"""Best-of-N: the order-statistics estimators against brute force over subsets, the exact KL of
the Best-of-N policy against closed forms and its bound, soft Best-of-N's limits, and the
sampling policy (N = 1 is plain sampling, chunking changes nothing) with the written report."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import algorithms, rollout, sharding
from irl_jax.algorithms import best_of_n as bon_policy
from irl_jax.algorithms import setup as setup_lib
from irl_jax.evaluation import best_of_n as bon
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.tasks import build_tokenizer, get_task

# Ten samples with ties in the proxy (1, 2, 4 repeat) and in the gold reward.
PROXY = np.array([3.0, 1, 2, 2, 5, 1, 2, 4, 4, 0])
GOLD = np.array([1.0, 0, 2, 1, 3, 1, 0, 2, 5, 1])


def pick_values(subset, values):
    """Best-of-N's pick from ``subset`` by the proxy, uniform over tied maxima: the mean of
    ``values`` over them."""
    best = PROXY[list(subset)].max()
    return np.mean([values[i] for i in subset if PROXY[i] == best])


def test_order_statistics_estimator_equals_brute_force_over_subsets():
    ranked = bon.rank(PROXY)
    m = len(PROXY)
    for n in range(1, m + 1):
        subsets = list(itertools.combinations(range(m), n))
        assert bon.max_weights(ranked, n).sum() == pytest.approx(1.0, abs=1e-12)
        for values in (PROXY, GOLD):
            brute = np.mean([pick_values(s, values) for s in subsets])
            estimate = bon.best_of_n_mean(ranked, values[None], n)[0]
            assert estimate == pytest.approx(brute, abs=1e-12), n
    # As Gao et al. would estimate it by hand: the max over disjoint N-subsets of many shuffles.
    rng = np.random.default_rng(0)
    n, maxima = 3, []
    for _ in range(40_000):
        for subset in rng.permutation(m)[: m // n * n].reshape(-1, n):
            maxima.append(pick_values(subset, GOLD))
    estimate = bon.best_of_n_mean(ranked, GOLD[None], n)[0]
    stderr = np.std(maxima) / math.sqrt(len(maxima))
    assert abs(np.mean(maxima) - estimate) < 4 * stderr < 0.025


def test_win_rate_estimator_equals_brute_force_over_subsets_and_references():
    ranked = bon.rank(PROXY)
    wins = bon.win_sums(ranked, GOLD[None])
    m = len(PROXY)
    win = lambda a, b: 0.5 * (1.0 + np.sign(a - b))
    for n in range(1, m):
        outcomes = []
        for subset in itertools.combinations(range(m), n):
            best = PROXY[list(subset)].max()
            picks = [i for i in subset if PROXY[i] == best]
            for j in set(range(m)) - set(subset):
                outcomes.append(np.mean([win(GOLD[i], GOLD[j]) for i in picks]))
        estimate = bon.best_of_n_win_rate(ranked, wins, n)[0]
        assert estimate == pytest.approx(np.mean(outcomes), abs=1e-12), n
    # Selecting by the gold reward itself (distinct values): P(best of n+1 is among the n).
    distinct = np.random.default_rng(1).permutation(20).astype(float)
    ranked = bon.rank(distinct)
    wins = bon.win_sums(ranked, distinct[None])
    for n in (1, 4, 19):
        assert bon.best_of_n_win_rate(ranked, wins, n)[0] == pytest.approx(n / (n + 1))


def test_exact_kl_equals_closed_form_with_ties():
    # p = (1/2, 1/4, 1/4) on rewards 0 < 1 < 2; F = 1/2, 3/4, 1; with N = 2:
    # q = F² − F⁻² = 1/4, 9/16 − 1/4 = 5/16, 1 − 9/16 = 7/16.
    rewards = np.array([2.0, 0, 1, 0, 0, 2, 1, 0])
    expected = 0.25 * math.log(0.5) + 5 / 16 * math.log(5 / 4) + 7 / 16 * math.log(7 / 4)
    assert bon.best_of_n_kl(bon.rank(rewards), 2)[0] == pytest.approx(expected, abs=1e-14)
    assert bon.best_of_n_kl(bon.rank(rewards), 1)[0] == pytest.approx(0.0, abs=1e-14)
    # N = 3: q = 1/8, 27/64 − 1/8 = 19/64, 1 − 27/64 = 37/64.
    q, p = np.array([8, 19, 37]) / 64, np.array([0.5, 0.25, 0.25])
    assert bon.best_of_n_kl(bon.rank(rewards), 3)[0] == pytest.approx(np.sum(q * np.log(q / p)))
    # One atom: Best-of-N is the base policy.
    assert bon.best_of_n_kl(bon.rank(np.ones(16)), 4)[0] == 0.0


def test_exact_kl_approaches_the_bound_as_rewards_become_distinct():
    rng = np.random.default_rng(0)
    for n in (2, 16, 64):
        bound = bon.kl_bound(n)
        kls = [bon.best_of_n_kl(bon.rank(rng.permutation(k)), n)[0] for k in (64, 1000, 10**5)]
        assert kls[0] < kls[1] < kls[2] <= bound
        assert kls[2] > 0.99 * bound, (n, kls[2], bound)
        # Ten values, each repeated 10⁴ times: a KL of at most log 10, whatever N.
        repeated = bon.best_of_n_kl(bon.rank(np.repeat(np.arange(10), 10**4)), n)[0]
        assert repeated < kls[2] and repeated <= math.log(10)
    assert repeated < 0.75 * bound


def test_the_bound_is_never_below_the_exact_kl():
    rng = np.random.default_rng(3)
    for _ in range(200):
        m = int(rng.integers(4, 200))
        rewards = rng.integers(0, rng.integers(1, 12), size=m).astype(float)  # many ties
        n = int(rng.integers(1, m // 4 + 1))
        exact = bon.best_of_n_kl(bon.rank(rewards), n)[0]
        assert -1e-12 <= exact <= bon.kl_bound(n) + 1e-12


def test_soft_best_of_n_limits():
    rewards = np.array([[2.0, 0, 1, 0, 0, 2, 1, 0]])
    values = {"reward": rewards}
    rng = np.random.default_rng(0)
    one = bon.soft_best_of_n(rewards, values, 1, 0.3, rng=rng)
    assert one["reward"][0] == pytest.approx(rewards.mean()) and one["kl"][0] == 0.0
    flat = bon.soft_best_of_n(rewards, values, 8, 1e4, rng=rng)  # β → ∞: the base policy
    assert flat["reward"][0] == pytest.approx(rewards.mean(), abs=1e-3)
    assert flat["kl"][0] == pytest.approx(0.0, abs=1e-6)
    # β → 0: Best-of-N with iid draws, q = F^N − F⁻^N (see test_exact_kl_...): N = 3.
    hard = bon.soft_best_of_n(rewards, values, 3, 1e-4, rng=rng, draws=50_000)
    q = np.array([8, 19, 37]) / 64
    assert hard["reward"][0] == pytest.approx(q @ [0.0, 1.0, 2.0], abs=0.01)
    assert hard["kl"][0] == pytest.approx(bon.best_of_n_kl(bon.rank(rewards), 3)[0], abs=0.01)
    middle = bon.soft_best_of_n(rewards, values, 3, 1.0, rng=rng, draws=50_000)
    assert 0.01 < middle["kl"][0] < hard["kl"][0]
    assert rewards.mean() < middle["reward"][0] < hard["reward"][0]


# ----------------------------------------------------------------------------- the policy

TOKENIZER = build_tokenizer()


def tiny_policy():
    config = algorithms.experiment_config("best_of_n")
    config.model_overrides.num_layers = 1
    model_config = model_source.resolve_config(
        config.model, tokenizer=TOKENIZER, overrides={"num_layers": 1}
    )
    ids = jnp.zeros((1, 2), jnp.int32)
    params = sharding.unbox(
        Transformer(model_config).init(jax.random.key(0), ids, jnp.ones_like(ids))["params"]
    )
    prompts = setup_lib.prompt_arrays(config, TOKENIZER, 4, seed=0)
    return model_config, params, prompts


def test_best_of_one_is_plain_sampling_and_chunks_do_not_change_the_draws():
    model_config, params, prompts = tiny_policy()
    settings = rollout.SamplingSettings(max_new_tokens=8)
    sources = {"gold": get_task("preference").gold_reward}
    rng = jax.random.key(7)
    draw = lambda num, chunk, **kw: bon_policy.best_of_n(
        model_config,
        params,
        prompts["prompt_ids"],
        prompts["prompt_mask"],
        sources=sources,
        rng=rng,
        settings=settings,
        num_samples=num,
        samples_per_chunk=chunk,
        select="gold",
        **kw,
    )
    _, _, one = draw(1, 1)
    plain = rollout.sample(
        model_config,
        params,
        prompts["prompt_ids"],
        prompts["prompt_mask"],
        rng=jax.random.split(jax.random.fold_in(rng, 0))[0],
        settings=settings,
    )
    np.testing.assert_array_equal(one.response_ids, plain.response_ids)
    np.testing.assert_array_equal(one.response_mask, plain.response_mask)
    np.testing.assert_array_equal(one.index, 0)

    scores, lengths, whole = draw(4, 4)
    with count_compiles() as compiles:  # the N = 1 call's shapes, four times: no new compile
        chunked_scores, chunked_lengths, chunked = draw(4, 1)
    assert compiles == []
    np.testing.assert_array_equal(scores["gold"], chunked_scores["gold"])
    np.testing.assert_array_equal(lengths, chunked_lengths)
    jax.tree.map(np.testing.assert_array_equal, whole, chunked)
    np.testing.assert_array_equal(scores["gold"][:, 0], one.score)  # sample 0 is the N = 1 draw
    assert np.ptp(scores["gold"], axis=1).min() > 0  # each prompt's four draws differ
    np.testing.assert_array_equal(whole.index, np.argmax(scores["gold"], axis=1))
    np.testing.assert_array_equal(whole.score, scores["gold"].max(axis=1))
    # Soft Best-of-N: the same draws; β → 0 picks a best one, a large β often another one.
    best = scores["gold"].max(axis=1)
    for beta, all_best in ((1e-6, True), (100.0, False)):
        soft_scores, _, soft = draw(4, 4, beta=beta)
        np.testing.assert_array_equal(soft_scores["gold"], scores["gold"])
        picked = np.take_along_axis(scores["gold"], np.asarray(soft.index)[:, None], 1)[:, 0]
        assert np.all(picked == best) == all_best, (beta, picked, best)


def test_report_of_every_n(tmp_path):
    config = algorithms.experiment_config("best_of_n")
    config.model_overrides.num_layers = 1
    config.sampling.max_new_tokens = 8
    config.policy_eval.num_samples_to_log = 2
    config.best_of_n.update(
        max_n=16, num_prompts=8, samples_per_chunk=4, prompts_per_chunk=8, soft_beta=0.5
    )
    metrics = algorithms.run(config, str(tmp_path))
    report = json.loads((tmp_path / "best_of_n.json").read_text())
    rows = report["best_of_n"]
    assert [row["n"] for row in rows] == list(range(1, 17))
    for row in rows:
        assert row["kl_bound"] == pytest.approx(math.log(row["n"]) - (row["n"] - 1) / row["n"])
        if row["n"] <= 4:  # M = 16 ≥ 4N samples define F
            assert 0 <= row["kl_exact"] <= row["kl_bound"] + 1e-12
        else:
            assert row["kl_exact"] is None
        assert row["gold_mean"] == row["proxy_mean"]  # the proxy is the gold reward
    gold = [row["gold_mean"] for row in rows]
    assert all(b >= a - 1e-12 for a, b in zip(gold, gold[1:])) and gold[-1] > gold[0]
    assert rows[0]["win_rate"] == pytest.approx(0.5)  # a sample against a sample
    assert rows[-1]["win_rate"] is None  # no reference left outside 16 of 16
    assert [row["n"] for row in report["soft_best_of_n"]] == [1, 2, 4]  # M ≥ 4N
    soft = report["soft_best_of_n"]
    assert soft[0]["gold_mean"] == pytest.approx(gold[0]) and soft[0]["kl"] == 0.0
    assert 0 < soft[2]["kl"] < rows[3]["kl_exact"]  # β = 0.5 stays closer to π than N = 4
    assert metrics["eval/best_of_4/reward/gold_mean"] == pytest.approx(gold[3])
    assert metrics["eval/best_of_4/kl_mean"] == pytest.approx(rows[3]["kl_exact"])
    assert (tmp_path / "best_of_n.png").stat().st_size > 10_000
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["response"] for s in samples)
