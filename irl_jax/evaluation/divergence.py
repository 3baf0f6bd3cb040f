"""How far a policy is from the demonstrator of a synthetic task, in both directions.

The synthetic tasks' demonstrators are known stochastic programs (``Task.demonstrator_logprob``
and, per token, ``Task.demonstrator_token_logprobs``), so divergences of a policy π to the
demonstrator π_demo are estimated, not guessed. Metric names (``eval/demo/...``):

* ``off_support_rate``: the fraction of policy samples y ~ π(·|x) that the demonstrator cannot
  produce (π_demo(y|x) = 0: some token off its support, or a truncated response — one that
  never emits eos within the budget).
* ``reverse_kl_mean`` / ``_stderr``: KL(π ‖ π̃_demo) per response, estimated from the samples as
  (1/n) Σ_i Σ_t [log π(y_it | ·) − log π̃_demo(y_it | ·)], against the **smoothed**
  demonstrator π̃_demo(v | ·) = (1 − ε)·π_demo(v | ·) + ε/V per token (V the policy's
  vocabulary, ε = ``SMOOTHING`` = 0.01), which is finite everywhere; once a prefix has left the
  demonstrator's support its continuation is uniform (π̃_demo = 1/V). log π is the sampling
  distribution's (log softmax(logits / T) at the evaluation temperature, no top-k/p).
* ``reverse_kl_in_support``: KL(π_S ‖ π_demo) of the policy conditioned on the
  demonstrator's support S (``reverse_kl_in_support``), unsmoothed: E_π[log π − log π_demo | S]
  − log π(S) from the samples on S (NaN when none is). The IQ-Learn sweep's frontier reads it;
  it complements the smoothed KL, which charges every off-support sample log(V/ε)-ish nats.
* ``forward_kl_mean`` / ``_stderr``: KL(π_demo ‖ π) per response on held-out demonstrations
  (those that fit ``data.max_length`` whole),
  (1/m) Σ_j [log π_demo(y_j | x_j) − log π(y_j | x_j)] with π teacher-forced (temperature 1)
  and the demonstrator's exact log-probability.
* ``forward_ce``: the cross-entropy −Σ_j log π(y_j|x_j) / Σ_j |y_j| (nats per response token,
  eos included: the SFT eval NLL), ``forward_kl_per_token`` = ``forward_ce`` − the
  demonstrator's token-weighted entropy (``Task.demonstrator_entropy``).
* ``style_rate``: the fraction of policy samples that carry the demonstrator's spurious style
  token (``irl_jax.tasks.STYLE_TOKEN``, invisible to every gold reward), and
  ``style_rate_demos`` the same fraction among the held-out demonstrations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from irl_jax.evaluation.policy import mean_and_stderr

SMOOTHING = 0.01  # ε of the smoothed demonstrator π̃_demo = (1 − ε) π_demo + ε / V
PREFIX = "eval/demo/"


def demonstrator_token_logprobs(
    task: Any, prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray
) -> np.ndarray:
    """``[n, N]`` log π_demo(y_t | x, y_<t) of each response token (``Task.
    demonstrator_token_logprobs``): −inf at the first token off the support, NaN after it and 0
    on padding."""
    out = np.zeros(response_ids.shape, np.float64)
    for row, (prompt, ids, mask) in enumerate(zip(prompts, response_ids, response_mask)):
        length = int(mask.sum())
        out[row, :length] = task.demonstrator_token_logprobs(prompt, [int(t) for t in ids[:length]])
    return out


def reverse_kl_in_support(logps: np.ndarray, demo_logps: np.ndarray) -> float:
    """KL(π_S ‖ π_demo) of the policy conditioned on the demonstrator's support S, from samples
    y ∼ π with log π(y|x) = ``logps`` and log π_demo(y|x) = ``demo_logps`` (−∞ outside S):
    E_π[log π − log π_demo | S] − log π(S). (KL(π ‖ π_demo) itself is ∞ once π(S) < 1.)"""
    support = np.isfinite(demo_logps)
    if not support.any():
        return math.nan
    return float(np.mean(logps[support] - demo_logps[support]) - np.log(support.mean()))


def smoothed_logprobs(
    demo_logprobs: np.ndarray, vocab_size: int, eps: float = SMOOTHING
) -> np.ndarray:
    """log π̃_demo per token from ``demonstrator_token_logprobs``: log((1 − ε)·π_demo + ε/V)
    while the prefix is on the support (including the first off-support token: log(ε/V)), and
    log(1/V) after it (NaN entries)."""
    with np.errstate(divide="ignore"):
        on_support = np.log((1.0 - eps) * np.exp(demo_logprobs) + eps / vocab_size)
    return np.where(np.isnan(demo_logprobs), -math.log(vocab_size), on_support)


def sample_metrics(
    task: Any,
    prompts: Sequence[str],
    response_ids: np.ndarray,
    response_mask: np.ndarray,
    logprobs: np.ndarray,
    *,
    vocab_size: int,
    eos_id: int,
    style_id: int,
    eps: float = SMOOTHING,
) -> dict[str, float]:
    """Off-support rate, smoothed reverse KL and style-token rate of policy samples (see the
    module docstring).

    Args:
      task: the synthetic task (its demonstrator).
      prompts: the n prompt texts of the rows.
      response_ids, response_mask: ``[n, N]`` sampled responses (the mask covers eos).
      logprobs: ``[n, N]`` log π of the sampled tokens (the sampling distribution's).
      vocab_size: V of the smoothing.
      eos_id, style_id: token ids of eos and of the style token.
      eps: ε of the smoothing.
    """
    mask = response_mask.astype(bool)
    demo = demonstrator_token_logprobs(task, prompts, response_ids, response_mask)
    smoothed = smoothed_logprobs(demo, vocab_size, eps)
    log_ratio = np.where(mask, np.asarray(logprobs, np.float64) - smoothed, 0.0)
    ended = np.any(mask & (response_ids == eos_id), axis=-1)
    off_support = np.any(mask & ~np.isfinite(demo), axis=-1) | ~ended
    kl_mean, kl_stderr = mean_and_stderr(log_ratio.sum(-1))
    sequence_logps = np.where(mask, np.asarray(logprobs, np.float64), 0.0).sum(-1)
    demo_sequence = np.where(off_support, -np.inf, np.where(mask, demo, 0.0).sum(-1))
    return {
        f"{PREFIX}off_support_rate": float(off_support.mean()),
        f"{PREFIX}reverse_kl_mean": kl_mean,
        f"{PREFIX}reverse_kl_stderr": kl_stderr,
        f"{PREFIX}reverse_kl_in_support": reverse_kl_in_support(sequence_logps, demo_sequence),
        f"{PREFIX}smoothing": eps,
        f"{PREFIX}style_rate": float(np.any(mask & (response_ids == style_id), axis=-1).mean()),
    }


def forward_metrics(
    task: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    nll: np.ndarray,
    tokens: np.ndarray,
) -> dict[str, float]:
    """Forward cross-entropy and KL(π_demo ‖ π) on held-out demonstrations.

    Args:
      task: the synthetic task.
      prompts, completions: the m held-out demonstrations (texts, no eos).
      nll: ``[m]`` −log π(y_j | x_j) of each demonstration's response tokens (eos included).
      tokens: ``[m]`` their token counts.
    """
    demo_logps = np.array([task.demonstrator_logprob(p, c) for p, c in zip(prompts, completions)])
    kl_mean, kl_stderr = mean_and_stderr(demo_logps + nll)
    ce = float(nll.sum() / max(tokens.sum(), 1.0))
    return {
        f"{PREFIX}forward_ce": ce,
        f"{PREFIX}forward_kl_per_token": ce - task.demonstrator_entropy(),
        f"{PREFIX}forward_kl_mean": kl_mean,
        f"{PREFIX}forward_kl_stderr": kl_stderr,
    }


def style_rate(texts: Sequence[str], style_token: str) -> float:
    """The fraction of texts containing the style token as a word."""
    return float(np.mean([style_token in t.split() for t in texts])) if texts else math.nan


def has_token_logprobs(task: Any) -> bool:
    """Whether ``task`` provides per-token demonstrator log-probabilities (overrides the base
    class's, which raises ``NotImplementedError``)."""
    from irl_jax.tasks.base import Task

    method = getattr(type(task), "demonstrator_token_logprobs", None)
    return method is not None and method is not Task.demonstrator_token_logprobs


class DemonstratorDivergence:
    """The divergence metrics of one evaluation setup: ``samples(rows)`` on the policy samples
    of ``evaluate_policy`` (its ``sample_metrics`` hook) and ``forward(params)`` on held-out
    demonstrations.

    Args:
      task: the synthetic task.
      prompts: the texts of the evaluation prompts, in the rows' order.
      held_out: the held-out demonstrations' ``prompt``/``completion`` texts.
      held_out_arrays: the same tokenized as SFT rows (``input_ids``, ``attention_mask``,
        ``loss_mask``).
      nll_fn: jitted ``(params, batch) -> {"nll", "tokens"}`` per row (``sft.make_nll_fn``).
      vocab_size: V of the smoothing; batch_size, mesh: for ``map_rows``.
    """

    def __init__(
        self,
        task: Any,
        prompts: Sequence[str],
        held_out: dict[str, Sequence[str]],
        held_out_arrays: dict[str, np.ndarray],
        nll_fn: Any,
        *,
        vocab_size: int,
        batch_size: int,
        mesh: Any,
    ):
        from irl_jax.tasks import STYLE_TOKEN, vocab

        self.task, self.prompts, self.held_out = task, list(prompts), held_out
        self.arrays, self.nll_fn = held_out_arrays, nll_fn
        self.vocab_size, self.batch_size, self.mesh = vocab_size, batch_size, mesh
        self.ids = dict(eos_id=vocab.EOS_ID, style_id=vocab.STYLE_ID)
        self.demo_style_rate = style_rate(held_out["completion"], STYLE_TOKEN)
        # Only demonstrations kept whole by the tokenizer (response and eos within
        # data.max_length) compare with the demonstrator's log-probability; none if rows were
        # dropped (their order is then unknown).
        expected = np.array([len(ids) + 1 for ids in vocab.encode(held_out["completion"])])
        tokens = held_out_arrays["loss_mask"].sum(-1)
        self.complete = tokens == expected if len(tokens) == len(expected) else None

    def samples(self, rows: dict[str, np.ndarray]) -> dict[str, float]:
        metrics = sample_metrics(
            self.task,
            self.prompts,
            rows["response_ids"],
            rows["response_mask"],
            rows["logprobs"],
            vocab_size=self.vocab_size,
            **self.ids,
        )
        return {**metrics, f"{PREFIX}style_rate_demos": self.demo_style_rate}

    def forward(self, params: Any) -> dict[str, float]:
        from irl_jax.evaluation.batches import map_rows

        if self.complete is None or not self.complete.any():
            return {}
        rows = map_rows(self.nll_fn, params, self.arrays, self.batch_size, self.mesh)
        keep = np.flatnonzero(self.complete)
        pick = lambda values: [values[i] for i in keep]
        held = self.held_out
        return forward_metrics(
            self.task,
            pick(held["prompt"]),
            pick(held["completion"]),
            rows["nll"][keep],
            rows["tokens"][keep],
        )
