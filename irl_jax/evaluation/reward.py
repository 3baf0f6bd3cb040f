"""Reward-model evaluation against labels and against a known gold reward (SURVEY §6).

All functions take host arrays of scores (numpy) and return floats:

* ``pairwise_accuracy``: agreement of the score order with the labels (chosen vs rejected);
* ``gold_accuracy``: agreement with the gold reward's order on the same pairs;
* ``spearman_per_prompt``: Spearman ρ between scores and gold among each prompt's candidates;
* ``expected_calibration_error``: of the Bradley–Terry probability σ(r_w − r_l) (Guo et al. 2017);
* ``best_of_n``: gold reward of the best-scored candidate over the candidates' mean (and the
  oracle that picks by gold);
* ``step_metrics``, ``all_steps_correct_logprob``: process reward models at step boundaries;
* ``sequence_gold``: gold rewards of tokenized prompt + response rows (the truth to compare with).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from irl_jax.data.iterator import eval_batches


def pairwise_accuracy(chosen_scores: np.ndarray, rejected_scores: np.ndarray) -> float:
    """Fraction of pairs whose chosen response scores higher (a score tie counts ½).

    Args:
      chosen_scores, rejected_scores: ``[N]`` scores of the labelled chosen / rejected responses.
    """
    chosen, rejected = np.asarray(chosen_scores), np.asarray(rejected_scores)
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def gold_accuracy(
    chosen_scores: np.ndarray,
    rejected_scores: np.ndarray,
    chosen_gold: np.ndarray,
    rejected_gold: np.ndarray,
) -> float:
    """Fraction of pairs the scores order like the gold reward (labels ignored).

    Pairs with equal gold rewards carry no order and are left out; a score tie counts ½.

    Args:
      chosen_scores, rejected_scores: ``[N]`` model scores of the two responses.
      chosen_gold, rejected_gold: ``[N]`` their gold rewards.
    """
    gold_sign = np.sign(np.asarray(chosen_gold, np.float64) - np.asarray(rejected_gold))
    score_sign = np.sign(np.asarray(chosen_scores, np.float64) - np.asarray(rejected_scores))
    ordered = gold_sign != 0
    if not ordered.any():
        raise ValueError("gold_accuracy: every pair has equal gold rewards")
    agreement = 0.5 * (1.0 + gold_sign * score_sign)  # 1 agree, ½ score tie, 0 disagree
    return float(agreement[ordered].mean())


def spearman_per_prompt(
    scores: np.ndarray, gold: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Mean over prompts of Spearman's ρ between model scores and gold rewards.

    ρ is the Pearson correlation of the ranks (ties get their average rank). Prompts with fewer
    than 3 candidates, or whose scores or gold rewards are all equal (ρ undefined), are left out.

    Args:
      scores, gold: ``[N, K]`` scores and gold rewards of K candidates for each of N prompts.
      mask: optional ``[N, K]``, 1 for real candidates (prompts may have fewer than K).

    Returns:
      The mean ρ over the prompts kept (NaN if none is).
    """
    scores, gold = np.asarray(scores, np.float64), np.asarray(gold, np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and gold {gold.shape} must both be [N, K]")
    mask = np.ones(scores.shape, bool) if mask is None else np.asarray(mask, bool)
    rhos = []
    for s, g, m in zip(scores, gold, mask):
        s, g = s[m], g[m]
        if len(s) < 3 or np.all(s == s[0]) or np.all(g == g[0]):
            continue
        rs, rg = scipy.stats.rankdata(s), scipy.stats.rankdata(g)
        rhos.append(np.corrcoef(rs, rg)[0, 1])
    return float(np.mean(rhos)) if rhos else float("nan")


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 10
) -> float:
    """Top-label expected calibration error of binary predictions (Guo et al. 2017).

    The predicted class is 1 where p ≥ ½; its confidence is c = max(p, 1 − p). With equal-width
    bins B_b over [0, 1] of the confidences,
    ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|,
    acc = fraction of correct predictions in the bin, conf = mean confidence in the bin.

    Args:
      probabilities: ``[N]`` predicted P(label = 1), e.g. σ(r_w − r_l) for "chosen wins".
      labels: ``[N]`` binary labels (1 = the chosen response was preferred).
      num_bins: number of equal-width confidence bins.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    p = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels).astype(bool)
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1.0 - p)
    correct = (predicted == labels).astype(np.float64)
    bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(p))


def preference_calibration_error(
    chosen_scores: np.ndarray, rejected_scores: np.ndarray, num_bins: int = 10
) -> float:
    """ECE of the Bradley–Terry probability σ(r_w − r_l) that the labelled chosen response wins."""
    delta = np.asarray(chosen_scores, np.float64) - np.asarray(rejected_scores, np.float64)
    p = 0.5 * (1.0 + np.tanh(0.5 * delta))
    return expected_calibration_error(p, np.ones_like(p), num_bins)


def best_of_n(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Best-of-N selection among given candidates, scored by the gold reward.

    For each prompt, pick argmax_k scores (the first on ties); report means over prompts of

    * ``gold_selected``: r*(picked), ``gold_mean``: (1/K) Σ_k r*(y_k),
    * ``gain`` = gold_selected − gold_mean (the gold gain of selection over the base),
    * ``oracle_gain`` = max_k r*(y_k) − gold_mean (selection by gold itself),
    * ``fraction_of_oracle`` = gain / oracle_gain (NaN if the oracle gains nothing).

    Args:
      scores, gold: ``[N, K]`` model scores and gold rewards of K candidates per prompt.
    """
    scores, gold = np.asarray(scores, np.float64), np.asarray(gold, np.float64)
    if scores.shape != gold.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and gold {gold.shape} must both be [N, K]")
    picked = np.take_along_axis(gold, np.argmax(scores, axis=-1)[:, None], axis=-1)[:, 0]
    selected, mean, best = picked.mean(), gold.mean(), gold.max(axis=-1).mean()
    oracle_gain = best - mean
    return {
        "gold_selected": float(selected),
        "gold_mean": float(mean),
        "gain": float(selected - mean),
        "oracle_gain": float(oracle_gain),
        "fraction_of_oracle": float((selected - mean) / oracle_gain) if oracle_gain else np.nan,
    }


def pair_metrics(
    chosen_scores: np.ndarray,
    rejected_scores: np.ndarray,
    chosen_gold: np.ndarray | None = None,
    rejected_gold: np.ndarray | None = None,
    num_bins: int = 10,
) -> dict[str, float]:
    """``accuracy`` (vs labels), ``calibration_error``, ``reward_margin`` (mean r_w − r_l) and,
    given gold rewards, ``gold_accuracy`` of labelled pairs."""
    chosen, rejected = np.asarray(chosen_scores), np.asarray(rejected_scores)
    metrics = {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "calibration_error": preference_calibration_error(chosen, rejected, num_bins),
        "reward_margin": float(np.mean(chosen - rejected)),
    }
    if chosen_gold is not None and rejected_gold is not None:
        metrics["gold_accuracy"] = gold_accuracy(chosen, rejected, chosen_gold, rejected_gold)
    return metrics


def candidate_metrics(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``spearman`` per prompt and Best-of-N (``bon_gain``, ``bon_oracle_gain``,
    ``bon_fraction_of_oracle``) of ``[N, K]`` candidate scores against their gold rewards."""
    selection = best_of_n(scores, gold)
    return {
        "spearman": spearman_per_prompt(scores, gold),
        "bon_gain": selection["gain"],
        "bon_oracle_gain": selection["oracle_gain"],
        "bon_fraction_of_oracle": selection["fraction_of_oracle"],
    }


def ranked_pairs(ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` values in ranking order (best first) → the ``(better, worse)`` values of all
    C(K, 2) ordered pairs, flattened ``[N · C(K, 2)]``."""
    i, j = np.triu_indices(ranked.shape[1], 1)
    return ranked[:, i].ravel(), ranked[:, j].ravel()


def step_metrics(
    token_scores: np.ndarray, step_mask: np.ndarray, step_labels: np.ndarray
) -> dict[str, float]:
    """A process reward model at its step boundaries: ``step_accuracy`` (σ(s_t) > ½ vs the
    step's label) and ``step_bce`` (mean BCE), over every step of every row ``[N, T]``."""
    steps = np.asarray(step_mask) > 0
    scores = np.asarray(token_scores, np.float64)[steps]
    labels = np.asarray(step_labels)[steps] > 0.5
    bce = np.logaddexp(0.0, np.where(labels, -scores, scores))  # −log σ(±s)
    return {
        "step_accuracy": float(np.mean((scores > 0) == labels)),
        "step_bce": float(bce.mean()),
    }


def all_steps_correct_logprob(token_scores: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """A PRM's response score Σ_{t ∈ steps} log σ(s_t) ``[N]``: the log-probability that every
    step is correct (Lightman et al. 2023's product aggregation)."""
    log_sigmoid = -np.logaddexp(0.0, -np.asarray(token_scores, np.float64))
    return np.sum(np.where(steps, log_sigmoid, 0.0), axis=-1)


def side_arrays(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """``chosen_input_ids`` … → ``input_ids`` … of one side (``name``) of preference arrays."""
    return {k.removeprefix(f"{name}_"): v for k, v in arrays.items() if k.startswith(f"{name}_")}


def flatten_sets(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ranking / candidate-set sequences ``[N, K, T]`` → ``[N · K, T]``."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in arrays.items() if v.ndim == 3}


class HeldOutComparisons:
    """A reward model's held-out data and its gold rewards (computed once); called with the
    model's scorers, returns every metric of this module that the data supports.

    Args:
      kind: the data kind: ``preference`` (labelled pairs), ``ranking`` (``[N, K, T]``, best
        first: all C(K, 2) pairs are scored) or ``stepwise`` (``step_mask``/``step_labels``).
      arrays: the tokenized held-out data of that kind.
      candidates: optional ``[N, K, T]`` ranking arrays of same-prompt candidates (Spearman ρ,
        Best-of-N); used only with a ``gold_fn``.
      gold_fn: a task's jittable gold reward, or ``None`` (no gold metrics).
      num_bins: calibration bins.
    """

    def __init__(
        self,
        kind: str,
        arrays: dict[str, np.ndarray],
        candidates: dict[str, np.ndarray] | None = None,
        *,
        gold_fn: Callable | None = None,
        num_bins: int = 10,
    ):
        if kind not in ("preference", "ranking", "stepwise"):
            raise ValueError(f"kind={kind!r}; expected preference, ranking or stepwise")
        self.kind, self.arrays, self.num_bins = kind, arrays, num_bins
        gold = lambda a: (
            None
            if gold_fn is None
            else sequence_gold(gold_fn, a["input_ids"], a["attention_mask"], a["loss_mask"])
        )
        self.pair_gold: list[np.ndarray | None] = [None, None]
        if kind == "preference":
            self.pair_gold = [gold(side_arrays(arrays, side)) for side in ("chosen", "rejected")]
        elif kind == "ranking" and gold_fn is not None:
            self.pair_gold = list(ranked_pairs(gold(arrays)))
        self.candidates = candidates if gold_fn is not None else None
        self.candidate_gold = None if self.candidates is None else gold(candidates)

    def __call__(
        self,
        sequence_scores: Callable[[dict[str, np.ndarray]], np.ndarray],
        token_scores: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Metrics from ``sequence_scores(arrays [M, T]) -> [M]`` (and, for stepwise data,
        ``token_scores(arrays) -> [M, T]``)."""
        metrics: dict[str, float] = {}
        if self.kind == "stepwise":
            scores = token_scores(self.arrays)
            metrics.update(
                step_metrics(scores, self.arrays["step_mask"], self.arrays["step_labels"])
            )
        else:
            if self.kind == "ranking":
                k = self.arrays["input_ids"].shape[1]
                ranked = sequence_scores(flatten_sets(self.arrays)).reshape(-1, k)
                chosen, rejected = ranked_pairs(ranked)
            else:
                sides = (side_arrays(self.arrays, side) for side in ("chosen", "rejected"))
                chosen, rejected = (sequence_scores(a) for a in sides)
            metrics.update(pair_metrics(chosen, rejected, *self.pair_gold, num_bins=self.num_bins))
        if self.candidates is not None:
            k = self.candidates["input_ids"].shape[1]
            scores = sequence_scores(flatten_sets(self.candidates)).reshape(-1, k)
            metrics.update(candidate_metrics(scores, self.candidate_gold))
        return metrics


@functools.cache
def _jitted_gold(gold_fn: Callable) -> Callable:
    """One jitted function per gold reward (so repeated evaluations compile once per shape)."""

    @jax.jit
    def gold(batch):
        prompt_mask = batch["mask"] * (1 - batch["loss"])
        return gold_fn(batch["ids"], prompt_mask, batch["ids"], batch["loss"])

    return gold


def sequence_gold(
    gold_fn: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    loss_mask: np.ndarray,
    batch_size: int = 512,
) -> np.ndarray:
    """Gold rewards of tokenized ``prompt + response`` rows (the data pipeline's layout).

    The prompt is the attended tokens outside ``loss_mask``, the response the tokens in it
    (response and eos): a gold reward reads only the tokens its masks select, so the full row
    serves as both.

    Args:
      gold_fn: a task's jittable ``gold_reward(prompt_ids, prompt_mask, response_ids,
        response_mask)``.
      input_ids, attention_mask, loss_mask: ``[..., T]`` tokenized rows (any leading shape).
      batch_size: rows per jitted call.

    Returns:
      ``[...]`` float32 gold rewards.
    """
    shape = input_ids.shape[:-1]
    flat = {
        "ids": input_ids.reshape(-1, input_ids.shape[-1]),
        "mask": attention_mask.reshape(-1, input_ids.shape[-1]),
        "loss": loss_mask.reshape(-1, input_ids.shape[-1]),
    }
    rows = len(flat["ids"])
    gold = _jitted_gold(gold_fn)
    batches = eval_batches(flat, min(batch_size, rows))
    out = np.concatenate([np.asarray(gold(jax.tree.map(jnp.asarray, b))) for b in batches])
    return out[:rows].reshape(shape).astype(np.float32)
