"""Gao et al. curve fits (irl_jax.evaluation.overoptimization)."""

import math

import numpy as np
import pytest

from irl_jax.evaluation import overoptimization as oo


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.35)])
def test_fits_recover_alpha_and_beta_from_noisy_points(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.05, 6.0, 40)
    reward = oo.curve(form, d, alpha, beta) + rng.normal(0.0, 0.02, d.shape)
    fit = oo.fit(form, d, reward)
    assert fit.alpha == pytest.approx(alpha, rel=0.05)
    assert fit.beta == pytest.approx(beta, rel=0.05)
    assert fit.r2 > 0.99
    # the peak of the fitted curve is where its derivative vanishes
    eps = 1e-4
    assert fit(fit.peak_d - eps) < fit(fit.peak_d) > fit(fit.peak_d + eps)


def test_peaks_in_closed_form():
    assert oo.peak_distance("bon", 1.0, 0.25) == pytest.approx(2.0)
    assert oo.peak_distance("rl", 1.0, 0.5) == pytest.approx(math.e)  # exp(α/β − 1)
    assert oo.peak_distance("rl", 1.0, -0.1) == math.inf
    fit = oo.fit("bon", [1.0, 2.0], [1.0, 2.0])  # a straight line: β = 0, no peak
    assert fit.beta == pytest.approx(0.0, abs=1e-12) and fit.peak_reward == math.inf


def test_exact_points_fit_exactly():
    d = np.array([0.5, 1.0, 2.0])
    fit = oo.fit("rl", d, d * (2.0 - 0.5 * np.log(d)))
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((2.0, 0.5, 1.0))


def test_bon_distance():
    assert oo.bon_distance(1) == 0.0
    assert oo.bon_distance(4) == pytest.approx(math.sqrt(math.log(4) - 0.75))


@pytest.mark.parametrize(
    "form, d, reward, message",
    [
        ("exp", [1, 2], [1, 2], "form must be one of"),
        ("bon", [1], [1], "two or more"),
        ("bon", [1, -1], [1, 2], ">= 0"),
        ("rl", [1, 2], [1, np.nan], "finite"),
    ],
)
def test_bad_points(form, d, reward, message):
    with pytest.raises(ValueError, match=message):
        oo.fit(form, d, reward)


def test_binned_means_of_equal_count_bins_sorted_by_distance():
    d, gold = oo.binned([3.0, 1.0, 2.0, 4.0, 5.0], [30.0, 10.0, 20.0, 40.0, 50.0], bins=2)
    np.testing.assert_allclose(d, [2.0, 4.5])  # sorted by d: {1, 2, 3}, {4, 5}
    np.testing.assert_allclose(gold, [20.0, 45.0])
    d, gold = oo.binned([2.0, 1.0], [20.0, 10.0], bins=12)  # fewer points than bins
    np.testing.assert_allclose(d, [1.0, 2.0])


def test_r_squared():
    assert oo.r_squared([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert oo.r_squared([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0  # the mean explains nothing
    assert oo.r_squared([1.0, 3.0], [2.0, 2.0]) == 0.0
    assert math.isnan(oo.r_squared([2.0, 2.0], [1.0, 3.0]))


def test_driver_runs_end_to_end_in_its_smoke_size(tmp_path, preference_sft):
    """(The session's SFT policy →) a proxy RM → Best-of-N and GRPO (two seeds, trained at once
    in two worker processes) against it → fits, JSON and PNG (PPO runs through the same code
    path; tests/test_ppo.py covers it)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "experiments.overoptimization", "--smoke"]
    command += [f"--workdir={tmp_path}", f"--sft={preference_sft}", "--sizes=small", "--rl=grpo"]
    command += ["--workers=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| grpo |" in result.stdout and "| small (" in result.stdout  # the fits' table
    with open(tmp_path / "overoptimization.json") as f:
        report = json.load(f)
    results = report["results"]["small"]
    assert set(results) == {"bon", "grpo"}
    assert report["settings"]["workers"] == 2
    assert {"rl", "grpo_small_seed0", "grpo_small_seed1"} <= set(report["stage_seconds"])
    bon = results["bon"]["points"]
    assert bon["n"] == [1, 2, 3, 4] and bon["gold"][0] == 0.0
    np.testing.assert_allclose(bon["d"], oo.bon_distance(np.arange(1, 5)))
    # Best-of-1 is the SFT policy's mean over all draws: the baseline of the RL gains too
    scores = np.load(tmp_path / "bon_scores.npz")
    assert scores["gold"].shape == scores["small"].shape == (8, 4)
    assert report["sft_baseline"]["gold"] == pytest.approx(scores["gold"].mean())
    grpo = results["grpo"]
    assert [run["seed"] for run in grpo["runs"]] == [0, 1]
    for run in grpo["runs"]:
        assert run["step"] == [2, 4] and min(run["d"]) >= 0.0
        assert set(run["fit"]) == {"alpha", "beta", "r2", "peak_d", "peak_reward"}
    # the pooled fit sees every seed's points; the spread is (mean, sd) over the seeds
    assert grpo["points"]["gold"] == grpo["runs"][0]["gold"] + grpo["runs"][1]["gold"]
    finals = [run["gold"][-1] for run in grpo["runs"]]
    np.testing.assert_allclose(
        grpo["spread"]["final_gold"], [np.mean(finals), np.std(finals, ddof=1)]
    )
    assert set(grpo["fit"]) == {"alpha", "beta", "r2", "peak_d", "peak_reward"}
    assert len(grpo["binned"]["d"]) == 4  # 4 points in up to 12 bins: one point each
    assert grpo["measured_peak"]["gold"] == max(grpo["points"]["gold"])
    from PIL import Image

    with Image.open(tmp_path / "overoptimization.png") as image:
        assert image.size == (576, 2 * 432)  # one column (one size), two rows (methods)
