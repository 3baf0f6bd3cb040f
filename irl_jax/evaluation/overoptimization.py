"""Gao et al. (2023) over-optimization curves: gold reward as a function of the distance from
the initial policy (pure numpy; SURVEY §6).

With d = √KL(π‖π_init), Gao et al. fit the gold reward R (measured from the initial policy's
level, so R(0) = 0) by

    Best-of-N:  R_bon(d) = d (α − β d)
    RL:         R_rl(d)  = d (α − β log d)

Both are linear in (α, β) — R = α·d − β·d² and R = α·d − β·d·log d — so least squares has a
closed form (no intercept: both curves pass through the origin). The gold reward peaks where
dR/dd = 0: d* = α / (2β) for Best-of-N, and α − β log d − β = 0, i.e. d* = exp(α/β − 1), for RL
(a peak only when β > 0; otherwise R rises without bound over the fitted range).

For Best-of-N Gao et al. take KL = log N − (N − 1)/N (``bon_distance``), the bound of Beirami et
al. (2024) that the exact KL of ``evaluation.best_of_n`` reaches only without ties.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

FORMS = ("bon", "rl")


@dataclasses.dataclass(frozen=True)
class Fit:
    """A least-squares fit of one functional form.

    Attributes:
      form: ``"bon"`` (d(α − βd)) or ``"rl"`` (d(α − β log d)).
      alpha, beta: the coefficients.
      r2: the coefficient of determination, 1 − SS_res / SS_tot (SS_tot about the mean).
      peak_d: the distance at which the fitted gold reward peaks (``inf`` when β ≤ 0).
      peak_reward: the fitted gold reward there (``inf`` when β ≤ 0).
    """

    form: str
    alpha: float
    beta: float
    r2: float
    peak_d: float
    peak_reward: float

    def __call__(self, d: np.ndarray | float) -> np.ndarray:
        return curve(self.form, np.asarray(d, np.float64), self.alpha, self.beta)


def curve(form: str, d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R(d) of ``form`` (``d · log d`` taken as 0 at d = 0)."""
    if form == "bon":
        return d * (alpha - beta * d)
    if form == "rl":
        return alpha * d - beta * d * np.log(np.where(d > 0, d, 1.0))
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _features(form: str, d: np.ndarray) -> np.ndarray:
    """The columns whose coefficients are (α, −β)."""
    if form == "bon":
        return np.stack([d, d * d], axis=1)
    return np.stack([d, d * np.log(np.where(d > 0, d, 1.0))], axis=1)


def fit(form: str, d: Sequence[float], reward: Sequence[float]) -> Fit:
    """Least-squares (α, β) of ``form`` through points (d_i, R_i); R is the gold reward minus
    the initial policy's, so the curve passes through the origin.

    Raises:
      ValueError: an unknown form, fewer than two points, a negative or non-finite distance.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d, reward = np.asarray(d, np.float64), np.asarray(reward, np.float64)
    if d.shape != reward.shape or d.ndim != 1 or d.size < 2:
        raise ValueError(f"need two or more (d, reward) points, got {d.shape} and {reward.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0) or not np.all(np.isfinite(reward)):
        raise ValueError("distances must be finite and >= 0 and rewards finite")
    (alpha, minus_beta), *_ = np.linalg.lstsq(_features(form, d), reward, rcond=None)
    alpha, beta = float(alpha), float(-minus_beta)
    r2 = r_squared(reward, curve(form, d, alpha, beta))
    peak_d = peak_distance(form, alpha, beta)
    peak = curve(form, np.asarray(peak_d), alpha, beta) if peak_d < math.inf else math.inf
    return Fit(form, alpha, beta, r2, peak_d, float(peak))


def r_squared(reward: np.ndarray, predicted: np.ndarray) -> float:
    """1 − SS_res / SS_tot (SS_tot about the mean of ``reward``); NaN when ``reward`` is
    constant."""
    reward, predicted = np.asarray(reward, np.float64), np.asarray(predicted, np.float64)
    total = float(np.sum((reward - reward.mean()) ** 2))
    return 1.0 - float(np.sum((reward - predicted) ** 2)) / total if total > 0 else float("nan")


def binned(d: Sequence[float], reward: Sequence[float], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean curve of scattered points (e.g. several RL seeds, which pass the same d at
    different steps): mean d and mean reward of ``bins`` equal-count bins of the points sorted
    by d (fewer bins when there are fewer points)."""
    d, reward = np.asarray(d, np.float64), np.asarray(reward, np.float64)
    parts = np.array_split(np.argsort(d, kind="stable"), min(bins, d.size))
    return np.array([d[p].mean() for p in parts]), np.array([reward[p].mean() for p in parts])


def peak_distance(form: str, alpha: float, beta: float) -> float:
    """Where d(α − βd) (``bon``) or d(α − β log d) (``rl``) is largest; ``inf`` when β ≤ 0."""
    if beta <= 0:
        return math.inf
    if form == "bon":
        return max(alpha / (2 * beta), 0.0)
    return math.exp(alpha / beta - 1.0)


def bon_distance(n: np.ndarray | int) -> np.ndarray:
    """Gao et al.'s Best-of-N distance √(log N − (N − 1)/N)."""
    n = np.asarray(n, np.float64)
    return np.sqrt(np.log(n) - (n - 1) / n)
