"""Reward-model ensembles: independent members as one reward source, and their disagreement."""

import numpy as np
import pytest

from irl_jax.evaluation import ensemble


def test_disagreement_by_hand():
    # three pairs, two members; gold prefers the first response of pairs 0 and 1, the second
    # of pair 2
    chosen = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
    rejected = np.array([[0.0, 0.0], [3.0, 1.0], [1.0, -3.0]])
    gold_chosen, gold_rejected = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    # margins: [1, 3] (mean 2, right), [-1, 1] (mean 0: sign 0 != 1, wrong), [-1, 3] (mean 1,
    # gold −1: wrong); variances 1, 1, 4
    out = ensemble.disagreement(chosen, rejected, gold_chosen, gold_rejected)
    assert out["var_right"] == pytest.approx(1.0)
    assert out["var_wrong"] == pytest.approx(2.5)
    assert out["wrong_fraction"] == pytest.approx(2 / 3)
    scores = np.concatenate([chosen, rejected])
    assert out["mean_correlation"] == pytest.approx(np.corrcoef(scores[:, 0], scores[:, 1])[0, 1])


def test_copies_correlate_perfectly_and_bad_shapes_are_refused():
    scores = np.random.default_rng(0).normal(size=(20, 1))
    assert np.allclose(ensemble.member_correlations(np.repeat(scores, 3, axis=1)), 1.0)
    with pytest.raises(ValueError, match="members >= 2"):
        ensemble.member_correlations(scores)
