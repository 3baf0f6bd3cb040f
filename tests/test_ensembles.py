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
    # minority side: pair 0 none (0), pairs 1 and 2 one member of two (0.5)
    assert out["split_right"] == pytest.approx(0.0)
    assert out["split_wrong"] == pytest.approx(0.5)
    assert out["wrong_fraction"] == pytest.approx(2 / 3)
    scores = np.concatenate([chosen, rejected])
    assert out["mean_correlation"] == pytest.approx(np.corrcoef(scores[:, 0], scores[:, 1])[0, 1])


def test_copies_correlate_perfectly_and_bad_shapes_are_refused():
    scores = np.random.default_rng(0).normal(size=(20, 1))
    assert np.allclose(ensemble.member_correlations(np.repeat(scores, 3, axis=1)), 1.0)
    with pytest.raises(ValueError, match="members >= 2"):
        ensemble.member_correlations(scores)


def test_driver_runs_end_to_end_in_its_smoke_size(tmp_path, preference_sft):
    """(The session's SFT policy →) two independent BT members and a two-head shared-backbone
    ensemble → agreement on held-out pairs → one Best-of-N draw scored by the UWO ensemble, and
    GRPO (one seed) against it → JSON, PNG and the markdown tables (the single-member, mean and WCO
    proxies run through the same code path)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "experiments.ensembles", "--smoke"]
    command += [f"--workdir={tmp_path}", f"--sft={preference_sft}", "--proxies=uwo"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "ensembles.json") as f:
        results = json.load(f)
    assert set(results["agreement"]) == {"independent", "shared"}
    for a in results["agreement"].values():
        assert -1.0 <= a["mean_correlation"] <= a["max_correlation"] <= 1.0
        assert a["var_wrong"] >= 0.0 and a["var_right"] >= 0.0 and 0 <= a["wrong_fraction"] <= 1
        assert 0.0 <= a["split_wrong"] <= 0.5 and 0.0 <= a["split_right"] <= 0.5
    # members from different seeds (init and data order) are different functions
    assert results["agreement"]["independent"]["max_correlation"] < 0.99
    assert set(results["proxies"]) == {"uwo"}
    bon, grpo = results["proxies"]["uwo"]["bon"], results["proxies"]["uwo"]["grpo"]
    assert bon["n"] == [1, 2, 3, 4] and bon["kl"][0] == 0.0 and np.all(np.isfinite(bon["gold"]))
    scores = np.load(tmp_path / "bon_scores.npz")  # one draw, scored by gold and the proxy
    assert scores["gold"].shape == scores["uwo"].shape == (8, 4)
    assert bon["gold"][-1] == pytest.approx(
        scores["gold"][np.arange(8), scores["uwo"].argmax(1)].mean()
    )
    # one seed of four GRPO steps from the SFT policy: one final evaluation, still near the
    # start (the KL is a sample mean of log-ratios, so it can be slightly negative)
    assert len(grpo) == 1 and grpo[0]["step"] == [4] and abs(grpo[0]["kl"][0]) < 0.5
    assert np.isfinite(grpo[0]["gold"][0])
    assert os.path.getsize(tmp_path / "ensembles.png") > 0
    assert "| uwo |" in result.stdout
