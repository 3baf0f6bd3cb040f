"""How much the members of a reward-model ensemble disagree, and whether their disagreement
tells where the ensemble is wrong (pure numpy; SURVEY §6, Coste et al. 2024).

Conservative aggregation (worst case, or mean − λ·variance) helps against over-optimization only
if the members disagree where the ensemble's mean is wrong. Members that are heads on one shared,
jointly trained backbone agree more than independently trained models do, so both facts are
measured on held-out pairs with known gold preferences:

* ``member_correlations``: Pearson correlation of every two members' scores of the same
  responses (1 = the members are copies);
* ``disagreement``: the variance across members of the predicted margin r_k(y₁) − r_k(y₂),
  averaged over the pairs that the members' mean ranks wrongly (against gold) and over those it
  ranks rightly, and the share of members on the minority side of each pair's ranking (0: all
  agree on which response is better; 0.5: an even split) — a variance-free view, since raw
  margin variance grows with the margin itself.
"""

from __future__ import annotations

import numpy as np


def member_correlations(scores: np.ndarray) -> np.ndarray:
    """``[K, K]`` Pearson correlations of ``scores`` ``[M, K]`` (M responses, K members)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [responses, members >= 2], got shape {scores.shape}")
    return np.corrcoef(scores, rowvar=False)


def disagreement(
    chosen: np.ndarray,
    rejected: np.ndarray,
    gold_chosen: np.ndarray,
    gold_rejected: np.ndarray,
) -> dict[str, float]:
    """Members' disagreement on pairs that the ensemble mean ranks wrongly vs rightly.

    Args:
      chosen, rejected: ``[P, K]`` member scores of the two responses of each pair.
      gold_chosen, gold_rejected: ``[P]`` gold rewards (pairs with equal gold are skipped).

    Returns:
      ``var_wrong`` / ``var_right``: mean over those pairs of the members' margin variance
      (ddof = 0; NaN when there is no such pair), ``split_wrong`` / ``split_right``: the same
      means of the share of members on the minority side of the pair's ranking (a member with
      margin 0 sides with neither), ``wrong_fraction`` among pairs with a gold
      order, and ``max_correlation`` / ``mean_correlation`` between members (over all 2P
      responses).
    """
    chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
    gold = np.sign(np.asarray(gold_chosen, np.float64) - np.asarray(gold_rejected, np.float64))
    margins = chosen - rejected
    ordered = gold != 0
    wrong = ordered & (np.sign(margins.mean(axis=1)) != gold)
    right = ordered & ~wrong
    variance = margins.var(axis=1)
    split = np.minimum((margins > 0).mean(axis=1), (margins < 0).mean(axis=1))
    mean_where = lambda values, m: float(values[m].mean()) if m.any() else float("nan")
    corr = member_correlations(np.concatenate([chosen, rejected]))
    off_diagonal = corr[~np.eye(len(corr), dtype=bool)]
    return {
        "var_wrong": mean_where(variance, wrong),
        "var_right": mean_where(variance, right),
        "split_wrong": mean_where(split, wrong),
        "split_right": mean_where(split, right),
        "wrong_fraction": float(wrong.sum() / max(ordered.sum(), 1)),
        "max_correlation": float(off_diagonal.max()),
        "mean_correlation": float(off_diagonal.mean()),
    }
