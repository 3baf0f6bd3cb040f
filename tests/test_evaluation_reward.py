"""Reward-model evaluation metrics against hand-computed values."""

import math

import numpy as np
import pytest
import scipy.stats

from irl_jax.data import load_and_tokenize
from irl_jax.evaluation import reward
from irl_jax.tasks import build_tokenizer, get_task


def test_pairwise_accuracy_counts_ties_half():
    assert reward.pairwise_accuracy([3.0, 1.0, 2.0], [1.0, 1.0, 5.0]) == pytest.approx(0.5)


def test_gold_accuracy_ignores_labels_and_gold_ties():
    # Pair 0: gold and scores agree (1); pair 1: score tie (½); pair 2: the label is against gold
    # but the scores follow gold (1); pair 3: a gold tie, left out.
    accuracy = reward.gold_accuracy(
        chosen_scores=[3.0, 1.0, 2.0, 0.0],
        rejected_scores=[1.0, 1.0, 5.0, 4.0],
        chosen_gold=[1.0, 2.0, 0.0, 7.0],
        rejected_gold=[0.0, 1.0, 1.0, 7.0],
    )
    assert accuracy == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="equal gold"):
        reward.gold_accuracy([1.0], [0.0], [2.0], [2.0])


def test_spearman_per_prompt():
    scores = np.array([[1.0, 2.0, 3.0, 0.0], [3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    gold = np.array([[10.0, 30.0, 20.0, 0.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    # Prompt 0 (3 candidates): d = (0, 1, 1), ρ = 1 − 6·2 / (3·8) = 0.5; prompt 1: ρ = −1;
    # prompt 2: constant gold, ρ undefined, left out.
    assert reward.spearman_per_prompt(scores, gold, mask) == pytest.approx(-0.25)
    # Tied scores take their average rank: ranks (1.5, 1.5, 3) vs (1, 2, 3): ρ = 1.5 / √3.
    tied = reward.spearman_per_prompt(np.array([[1.0, 1.0, 2.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert tied == pytest.approx(1.5 / math.sqrt(3.0))
    expected = scipy.stats.spearmanr([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]).statistic
    assert tied == pytest.approx(expected)
    # Fewer than 3 candidates: no prompt qualifies.
    assert math.isnan(reward.spearman_per_prompt(scores[:, :2], gold[:, :2]))


def test_expected_calibration_error():
    p = np.array([0.92, 0.81, 0.33, 0.56])
    labels = np.array([1, 0, 0, 1])
    # Predicted (1, 1, 0, 1), confidences (.92, .81, .67, .56), correct (1, 0, 1, 1): with 10 bins
    # every prediction has its own bin: (.08 + .81 + .33 + .44) / 4.
    assert reward.expected_calibration_error(p, labels, 10) == pytest.approx(1.66 / 4)
    # Two bins: all confidences fall in [0.5, 1]: |3/4 − 2.96/4|.
    assert reward.expected_calibration_error(p, labels, 2) == pytest.approx(0.01)
    # σ(r_w − r_l) = σ(2) for one labelled pair: ECE = 1 − σ(2).
    sigma2 = 1 / (1 + math.exp(-2.0))
    assert reward.preference_calibration_error([2.0], [0.0]) == pytest.approx(1 - sigma2)
    with pytest.raises(ValueError, match="num_bins"):
        reward.expected_calibration_error(p, labels, 0)


def test_best_of_n():
    scores = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]])
    gold = np.array([[0.0, 1.0, 5.0], [2.0, 4.0, 0.0]])
    # Picks: gold 1 (row 0), gold 2 (row 1, the first of the tied scores); candidate means 2, 2.
    out = reward.best_of_n(scores, gold)
    assert out["gold_selected"] == pytest.approx(1.5)
    assert out["gold_mean"] == pytest.approx(2.0)
    assert out["gain"] == pytest.approx(-0.5)
    assert out["oracle_gain"] == pytest.approx(2.5)
    assert out["fraction_of_oracle"] == pytest.approx(-0.2)
    oracle = reward.best_of_n(gold, gold)
    assert oracle["gain"] == pytest.approx(oracle["oracle_gain"])
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        reward.best_of_n(scores[0], gold[0])


def test_pair_and_candidate_metrics_bundle_the_above():
    metrics = reward.pair_metrics([2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0])
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["gold_accuracy"] == pytest.approx(0.5)
    assert metrics["reward_margin"] == pytest.approx(0.5)
    assert "gold_accuracy" not in reward.pair_metrics([1.0], [0.0])
    candidates = reward.candidate_metrics(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert candidates["spearman"] == pytest.approx(1.0)
    assert candidates["bon_gain"] == pytest.approx(1.0)
    assert candidates["bon_fraction_of_oracle"] == pytest.approx(1.0)


def test_sequence_gold_matches_the_gold_scores_of_the_data():
    task = get_task("preference")
    dataset, _ = task.preferences(40, seed=3, beta_ann=2.0, pairing="cross_prompt")
    arrays, stats = load_and_tokenize(dataset, build_tokenizer(), "preference", 40)
    assert stats.rows_kept == 40
    for side in ("chosen", "rejected"):
        gold = reward.sequence_gold(
            task.gold_reward,
            arrays[f"{side}_input_ids"],
            arrays[f"{side}_attention_mask"],
            arrays[f"{side}_loss_mask"],
            batch_size=16,
        )
        np.testing.assert_allclose(gold, dataset[f"{side}_score"], atol=1e-5)
    # Leading shapes are kept (candidate sets [N, K, T] -> [N, K]).
    ranked = task.rankings(6, seed=1, k=3)
    arrays, _ = load_and_tokenize(ranked, build_tokenizer(), "ranking", 40)
    gold = reward.sequence_gold(
        task.gold_reward, arrays["input_ids"], arrays["attention_mask"], arrays["loss_mask"]
    )
    np.testing.assert_allclose(gold, np.array(ranked["scores"]), atol=1e-5)


def test_process_reward_helpers():
    scores = np.array([[2.0, 0.0, -1.0, 4.0]])
    mask = np.array([[1, 0, 1, 0]])
    labels = np.array([[1.0, 0.0, 0.0, 0.0]])
    metrics = reward.step_metrics(scores, mask, labels)
    assert metrics["step_accuracy"] == pytest.approx(1.0)
    expected_bce = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert metrics["step_bce"] == pytest.approx(expected_bce)
    logprob = reward.all_steps_correct_logprob(np.array([[0.0, 5.0, 0.0]]), np.array([[1, 0, 1]]))
    np.testing.assert_allclose(logprob, [2 * math.log(0.5)])
    better, worse = reward.ranked_pairs(np.array([[3.0, 2.0, 1.0]]))
    np.testing.assert_array_equal(better, [3.0, 3.0, 2.0])
    np.testing.assert_array_equal(worse, [2.0, 1.0, 1.0])


def test_held_out_comparisons_score_the_gold_reward_perfectly():
    """Scoring every sequence by its own gold reward: gold accuracy 1, Best-of-N = the oracle."""
    task, tokenizer = get_task("preference"), build_tokenizer()
    pairs, _ = task.preferences(64, seed=5, beta_ann=1.0)
    pairs, _ = load_and_tokenize(pairs, tokenizer, "preference", 40)
    sets, _ = load_and_tokenize(task.rankings(16, seed=6, k=4), tokenizer, "ranking", 40)
    gold_scores = lambda a: reward.sequence_gold(
        task.gold_reward, a["input_ids"], a["attention_mask"], a["loss_mask"]
    )
    held_out = reward.HeldOutComparisons("preference", pairs, sets, gold_fn=task.gold_reward)
    metrics = held_out(gold_scores)
    assert metrics["gold_accuracy"] == pytest.approx(1.0)
    assert 0.6 < metrics["accuracy"] < 0.95  # β_ann = 1: noisy labels
    assert metrics["spearman"] > 0.99
    assert metrics["bon_gain"] == pytest.approx(metrics["bon_oracle_gain"])
    # Rankings sorted by gold (β_ann = ∞): every ordered pair is right.
    ranked, _ = load_and_tokenize(task.rankings(16, 7, 3, math.inf), tokenizer, "ranking", 40)
    metrics = reward.HeldOutComparisons("ranking", ranked, gold_fn=task.gold_reward)(gold_scores)
    assert metrics["gold_accuracy"] == pytest.approx(1.0)
    assert metrics["accuracy"] > 0.95  # gold ties among the ranked pairs count ½
    with pytest.raises(ValueError, match="kind='sft'"):
        reward.HeldOutComparisons("sft", pairs)
