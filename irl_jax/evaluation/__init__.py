"""Evaluation: how well a policy (or reward model) is aligned, scored against known truths."""

from irl_jax.evaluation.policy import (
    RewardFn,
    evaluate_policy,
    mean_and_stderr,
    sequence_kl,
    win_scores,
)

__all__ = ["RewardFn", "evaluate_policy", "mean_and_stderr", "sequence_kl", "win_scores"]
