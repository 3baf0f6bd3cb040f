"""Best-of-N from one fixed sample of rewards per prompt (pure numpy; SURVEY §4 and §6).

For each prompt, y_1 … y_M ∼ π are drawn once and scored by the proxy reward r (what Best-of-N
selects by) and by other rewards g (the gold reward). Best-of-N for every N ≤ M follows from
these M scores, without drawing again:

* **Expected reward of the best of N** — the order-statistics estimator behind Gao et al.'s
  (2023) Best-of-N curves. With the samples sorted by r, the one at position s (0-based: s
  samples before it) is the best of a uniformly random N-subset with probability
  C(s, N−1)/C(M, N), so

      Ê_N[g] = Σ_s C(s, N−1)/C(M, N) · g_(s)

  is the mean of g(best) over all C(M, N) subsets: an unbiased estimate of E[g(y_BoN)] for iid
  draws (a U-statistic). Best-of-N picks uniformly among responses whose proxies tie for the
  maximum; a tie group's total weight does not depend on the order inside it, so averaging the
  weights within each tie group makes the estimate exact for that rule.
* **Win rate** against an independent y' ∼ π under the gold reward (win 1, tie ½): the same
  U-statistic over pairs (N-subset S, reference j ∉ S), C(M, N)(M − N) of them.
* **KL(π_BoN ‖ π)**: π_BoN(y) = π(y) q(r(y))/p(r(y)) depends on y only through r(y), so the KL
  is that of the reward distributions,

      KL = Σ_r q(r) log(q(r)/p(r)),   q(r) = F(r)^N − F(r⁻)^N,

  with F the empirical CDF of r (ties included: p(r) is the mass of the atom at r). Beirami et
  al. (2024) bound it by log N − (N−1)/N, which is reached only without atoms (all rewards
  distinct, M → ∞); repeated rewards make the KL smaller. The plug-in KL of M samples
  saturates at log M, so it is reported where M ≥ 4N (``KL_SAMPLES_PER_N``).
* **Reports** (``report_rows``, ``soft_rows``): each estimate per prompt, then its mean ± stderr
  over prompts.
* **Soft Best-of-N** (Verdun et al. 2025): draw N, pick index i ∼ softmax(r_i/β). Then
  π_β(y) = π(y) ρ(r(y)) with ρ(r) = N · E[σ(r/β − log Σ_{j=2}^{N} e^{r_j/β})] over iid r_j, so
  the expected reward is E_π[ρ g] and KL(π_β ‖ π) = E_π[ρ log ρ]. ρ is estimated by Monte Carlo
  over the empirical distribution (a plug-in estimate); β → 0 gives Best-of-N, β → ∞ the base
  policy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from scipy import special

from irl_jax.evaluation.policy import mean_and_stderr

KL_SAMPLES_PER_N = 4  # the plug-in KL of N is reported when M ≥ 4N samples define F


def kl_bound(n: int) -> float:
    """log N − (N−1)/N: Beirami et al.'s (2024) upper bound on KL(π_BoN ‖ π), an equality only
    for a reward without atoms."""
    return float(np.log(n) - (n - 1) / n)


def _log_comb(n: np.ndarray, k: int) -> np.ndarray:
    """log C(n, k) elementwise; −inf where n < k (no such subset)."""
    n = np.asarray(n, np.float64)
    valid = n >= k
    safe = np.where(valid, n, k)
    value = special.gammaln(safe + 1) - special.gammaln(k + 1) - special.gammaln(safe - k + 1)
    return np.where(valid, value, -np.inf)


@dataclasses.dataclass(frozen=True)
class Ranked:
    """P prompts' M samples sorted by the proxy reward (ascending), with their tie groups.

    Attributes:
      proxy: ``[P, M]`` sorted proxy rewards.
      order: ``[P, M]`` the sort (``proxy = take_along_axis(raw, order)``).
      start: ``[P, M]`` the first position of each position's tie group (samples before it).
      size: ``[P, M]`` the size of each position's tie group.
    """

    proxy: np.ndarray
    order: np.ndarray
    start: np.ndarray
    size: np.ndarray

    @property
    def num_samples(self) -> int:
        return self.proxy.shape[1]

    def sorted(self, values: np.ndarray) -> np.ndarray:
        """``[P, M]`` values (aligned with the raw proxy) in the proxy's order."""
        return np.take_along_axis(np.asarray(values, np.float64), self.order, axis=1)

    def group_mean(self, values: np.ndarray) -> np.ndarray:
        """``[P, M]`` (sorted) values averaged within each tie group."""
        sums = np.pad(np.cumsum(values, axis=1), ((0, 0), (1, 0)))
        end = np.take_along_axis(sums, self.start + self.size, axis=1)
        return (end - np.take_along_axis(sums, self.start, axis=1)) / self.size


def rank(proxy: np.ndarray) -> Ranked:
    """Sorts ``[P, M]`` proxy rewards (or ``[M]``: one prompt) and finds their tie groups."""
    proxy = np.atleast_2d(np.asarray(proxy, np.float64))
    order = np.argsort(proxy, axis=1, kind="stable")
    ranked = np.take_along_axis(proxy, order, axis=1)
    positions = np.broadcast_to(np.arange(proxy.shape[1]), proxy.shape)
    new_group = np.pad(ranked[:, 1:] != ranked[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    start = np.maximum.accumulate(np.where(new_group, positions, 0), axis=1)
    is_end = np.pad(new_group[:, 1:], ((0, 0), (0, 1)), constant_values=True)
    end = np.minimum.accumulate(np.where(is_end, positions, proxy.shape[1])[:, ::-1], axis=1)
    size = end[:, ::-1] + 1 - start
    return Ranked(ranked, order, start, size)


def max_weights(ranked: Ranked, n: int) -> np.ndarray:
    """``[P, M]``: the probability that the sample at each sorted position is Best-of-n's pick
    from a uniformly random n-subset (C(s, n−1)/C(M, n), averaged within tie groups); rows
    sum to 1."""
    m = ranked.num_samples
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}], got {n}")
    positions = np.arange(m)
    weights = np.exp(_log_comb(positions, n - 1) - _log_comb(m, n))
    return ranked.group_mean(np.broadcast_to(weights, ranked.proxy.shape))


def best_of_n_mean(ranked: Ranked, values: np.ndarray, n: int) -> np.ndarray:
    """``[P]`` unbiased estimates of E[g(y_BoN)] for Best-of-n by the proxy (module docstring);
    ``values`` ``[P, M]`` is g of the raw (unsorted) samples."""
    return np.sum(max_weights(ranked, n) * ranked.sorted(values), axis=1)


@dataclasses.dataclass(frozen=True)
class WinSums:
    """Per sorted sample s, Σ_j win(g_s, g_j) over the samples j below its tie group, inside it
    (j ≠ s) and above it; ``[P, M]`` each (``win_sums``)."""

    below: np.ndarray
    group: np.ndarray
    above: np.ndarray


def win_sums(ranked: Ranked, gold: np.ndarray) -> WinSums:
    """The pairwise gold comparisons that ``best_of_n_win_rate`` needs (O(M²) per prompt, done
    once for every n)."""
    gold = ranked.sorted(gold)
    parts = {name: np.zeros_like(gold) for name in ("below", "group", "above")}
    for p, row in enumerate(gold):
        win = 0.5 * (1.0 + np.sign(row[:, None] - row[None, :]))  # [s, j]
        sums = np.pad(np.cumsum(win, axis=1), ((0, 0), (1, 0)))  # [s, j]: Σ over the first j
        lo, hi = ranked.start[p], ranked.start[p] + ranked.size[p]
        below = np.take_along_axis(sums, lo[:, None], axis=1)[:, 0]
        through = np.take_along_axis(sums, hi[:, None], axis=1)[:, 0]
        parts["below"][p] = below
        parts["group"][p] = through - below - 0.5  # minus the sample against itself
        parts["above"][p] = sums[:, -1] - through
    return WinSums(**parts)


def best_of_n_win_rate(ranked: Ranked, wins: WinSums, n: int) -> np.ndarray:
    """``[P]`` unbiased estimates of P(g(y_BoN) > g(y')) + ½ P(=) for y' ∼ π independent.

    Over all pairs (S, j), |S| = n, j ∉ S: the sample at position s (s samples before it) is
    S's pick with j outside S in C(s − 1, n − 1) ways when j is below it and C(s, n − 1) when
    j is above; inside a tie group its position u is uniform and j is below it with probability
    u/(g − 1). Needs n < M (a reference outside S)."""
    m = ranked.num_samples
    if not 1 <= n < m:
        raise ValueError(f"n must be in [1, {m - 1}] for a reference outside the n, got {n}")
    positions = np.arange(m, dtype=np.float64)
    norm = _log_comb(m, n) + np.log(m - n)
    j_below = np.exp(_log_comb(positions - 1, n - 1) - norm)
    j_above = np.exp(_log_comb(positions, n - 1) - norm)
    u = positions - ranked.start
    below_share = np.where(ranked.size > 1, u / np.maximum(ranked.size - 1, 1), 0.0)
    in_group = below_share * j_below + (1 - below_share) * j_above
    shape = ranked.proxy.shape
    total = (
        ranked.group_mean(np.broadcast_to(j_below, shape)) * wins.below
        + ranked.group_mean(in_group) * wins.group
        + ranked.group_mean(np.broadcast_to(j_above, shape)) * wins.above
    )
    return total.sum(axis=1)


def best_of_n_kl(ranked: Ranked, n: int) -> np.ndarray:
    """``[P]`` KL(π_BoN ‖ π) = Σ_r q(r) log(q(r)/p(r)), q(r) = F(r)^n − F(r⁻)^n, with F the
    empirical CDF of each prompt's M proxy rewards (exact for that distribution, ties
    included)."""
    m = ranked.num_samples
    below, size = ranked.start / m, ranked.size / m
    q = (below + size) ** n - below**n  # of the position's tie group
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q / size), 0.0)
    return np.sum(terms / ranked.size, axis=1)  # each group's term once


def soft_best_of_n(
    proxy: np.ndarray,
    values: Mapping[str, np.ndarray],
    n: int,
    beta: float,
    *,
    rng: np.random.Generator,
    draws: int = 256,
) -> dict[str, np.ndarray]:
    """Soft Best-of-n (module docstring): index i ∼ softmax(r_i/β) among n iid draws.

    Args:
      proxy: ``[P, M]`` proxy rewards r (what the softmax reads).
      values: name → ``[P, M]`` rewards g whose expectation under π_β is wanted; a ``win``
        entry, if given, is the per-sample win rate against π.
      n: responses drawn; beta: the temperature β > 0.
      rng: draws the Monte-Carlo sums over the other n − 1 responses (with replacement: the
        iid draws of the plug-in distribution).
      draws: Monte-Carlo draws per prompt.

    Returns:
      ``[P]`` arrays: each name's E_π[ρ g] and ``kl`` = E_π[ρ log ρ].
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    proxy = np.atleast_2d(np.asarray(proxy, np.float64))
    logits = proxy / beta
    num_prompts, m = proxy.shape
    out = {name: np.zeros(num_prompts) for name in (*values, "kl")}
    for p in range(num_prompts):
        others = logits[p, rng.integers(m, size=(draws, n - 1))]
        log_sum = special.logsumexp(others, axis=1) if n > 1 else np.full(draws, -np.inf)
        rho = n * special.expit(logits[p, :, None] - log_sum[None, :]).mean(axis=1)
        rho /= rho.mean()  # E_π[ρ] = 1 exactly; removes the Monte-Carlo error of the total
        for name, value in values.items():
            out[name][p] = np.mean(rho * np.asarray(value[p], np.float64))
        out["kl"][p] = np.mean(np.where(rho > 0, rho * np.log(np.maximum(rho, 1e-300)), 0.0))
    return out


def win_against_sample(gold: np.ndarray) -> np.ndarray:
    """``[P, M]``: each sample's win rate (ties ½) against the prompt's empirical distribution
    (itself included): the per-sample value whose ρ-weighted mean is soft Best-of-N's win
    rate against π."""
    gold = np.atleast_2d(np.asarray(gold, np.float64))
    return np.stack([np.mean(0.5 * (1.0 + np.sign(row[:, None] - row)), axis=1) for row in gold])


# ----------------------------------------------------------------------------- reports


def _value(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def powers(base: int, limit: int) -> list[int]:
    """1, base, base², … up to ``limit``."""
    out = [1]
    while out[-1] * base <= limit:
        out.append(out[-1] * base)
    return out


def report_rows(
    proxy: np.ndarray, gold: np.ndarray | None, max_n: int
) -> list[dict[str, float | None]]:
    """One row per N = 1 … ``max_n`` from ``[P, M]`` rewards: ``proxy_mean`` (and
    ``gold_mean``) of the best of N with ``_stderr`` over the P prompts, ``win_rate`` against a
    plain sample (N < M), ``kl_exact`` (where M ≥ 4N) and ``kl_bound``; NaN becomes ``None``
    (JSON null)."""
    ranked = rank(proxy)
    wins = win_sums(ranked, gold) if gold is not None else None
    m, rows = proxy.shape[1], []
    for n in range(1, max_n + 1):
        row: dict[str, float | None] = {"n": n}
        row["proxy_mean"], row["proxy_stderr"] = mean_and_stderr(best_of_n_mean(ranked, proxy, n))
        if gold is not None:
            row["gold_mean"], row["gold_stderr"] = mean_and_stderr(best_of_n_mean(ranked, gold, n))
            win = best_of_n_win_rate(ranked, wins, n) if n < m else np.full(1, np.nan)
            row["win_rate"], row["win_rate_stderr"] = mean_and_stderr(win)
        row["kl_bound"] = kl_bound(n)
        kl = (math.nan, math.nan)
        if m >= KL_SAMPLES_PER_N * n:
            kl = mean_and_stderr(best_of_n_kl(ranked, n))
        row["kl_exact"], row["kl_exact_stderr"] = kl
        rows.append({k: _value(v) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def soft_rows(
    proxy: np.ndarray, gold: np.ndarray | None, ns: list[int], beta: float, draws: int, seed: int
) -> list[dict[str, float | None]]:
    """Soft Best-of-N at temperature ``beta`` for each N of ``ns`` (plug-in, Monte Carlo)."""
    values = {"proxy": proxy}
    if gold is not None:
        values.update(gold=gold, win_rate=win_against_sample(gold))
    keys = {"proxy": "proxy_mean", "gold": "gold_mean", "win_rate": "win_rate", "kl": "kl"}
    rows = []
    for n in ns:
        rng = np.random.default_rng([seed, n])
        out = soft_best_of_n(proxy, values, n, beta, rng=rng, draws=draws)
        row: dict[str, float | None] = {"n": n, "beta": beta}
        for name, per_prompt in out.items():
            mean, stderr = mean_and_stderr(per_prompt)
            row[keys[name]] = _value(mean)
            row[keys[name].removesuffix("_mean") + "_stderr"] = _value(stderr)
        rows.append(row)
    return rows
