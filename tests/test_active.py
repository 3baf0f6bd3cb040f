"""Active preference selection: D-optimal greedy vs random and max-uncertainty baselines."""

import math

import numpy as np
import pytest

from irl_jax.evaluation import active


def pool(num=400, dim=6, seed=0):
    """A fixed candidate pool: Δφ with uneven per-feature scales, p from a linear BT model."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(size=(num, dim)) * rng.uniform(0.2, 2.0, size=dim)
    weights = rng.normal(size=dim)
    return diffs, active.bt_probabilities(weights, diffs)


def test_information_log_det_hand_value():
    # λ = 1, one pair Δφ = (1, 0) with p = ½: det diag(1 + ¼, 1) = 1.25.
    value = active.information_log_det(np.array([[1.0, 0.0]]), np.array([0.5]), 1.0)
    assert value == pytest.approx(math.log(1.25))
    # No pair: log det(λ I) = d log λ.
    assert active.information_log_det(np.zeros((0, 3)), np.zeros(0), 2.0) == pytest.approx(
        3 * math.log(2.0)
    )
    np.testing.assert_allclose(active.bt_probabilities([2.0], [[1.0], [0.0]]), [0.8807971, 0.5])


def test_greedy_rank_one_updates_equal_direct_log_dets():
    diffs, p = pool()
    indices, log_dets = active.d_optimal_selection(diffs, p, 15, regularization=0.5)
    assert len(set(indices.tolist())) == 15
    direct = [
        active.information_log_det(diffs[indices[: i + 1]], p[indices[: i + 1]], 0.5)
        for i in range(15)
    ]
    np.testing.assert_allclose(log_dets, direct, rtol=1e-4)
    # With A = λI the first gain is log(1 + w‖Δφ‖²/λ): the first pick maximizes w‖Δφ‖².
    assert indices[0] == np.argmax(p * (1 - p) * np.sum(diffs**2, axis=1))


def test_d_optimal_beats_random_and_max_uncertainty_on_log_det():
    diffs, p = pool()
    batch = 20
    d_optimal = active.select_pairs("d_optimal", diffs, p, batch)
    log_det = lambda idx: active.information_log_det(diffs[idx], p[idx])
    uncertain = active.select_pairs("max_uncertainty", diffs, p, batch)
    assert np.all(np.abs(p[uncertain] - 0.5) <= np.sort(np.abs(p - 0.5))[batch - 1])
    randoms = [log_det(active.select_pairs("random", diffs, p, batch, seed=s)) for s in range(10)]
    assert log_det(d_optimal) > max(randoms)
    assert log_det(d_optimal) > log_det(uncertain)
    # The margins on this pool (nats of log det): well beyond rounding.
    assert log_det(d_optimal) - max(randoms) > 1.0
    assert log_det(d_optimal) - log_det(uncertain) > 1.0


def test_selection_errors_name_the_argument():
    diffs, p = pool(num=10)
    with pytest.raises(ValueError, match=r"batch_size=11 must be in \[1, 10\]"):
        active.d_optimal_selection(diffs, p, 11)
    with pytest.raises(ValueError, match="regularization must be > 0"):
        active.d_optimal_selection(diffs, p, 2, regularization=0.0)
    with pytest.raises(ValueError, match="selection method 'greedy'"):
        active.select_pairs("greedy", diffs, p, 2)
