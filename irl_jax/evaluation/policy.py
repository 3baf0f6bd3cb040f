"""Policy evaluation against a reference policy: rewards, KL, win rate, sample texts.

Every alignment method reports through ``evaluate_policy``. For prompts x_1 … x_n it draws one
response y_i ~ π(· | x_i) from the policy and one y'_i ~ π_ref(· | x_i) from the reference, and
reports (metric names as in the metrics log):

* ``eval/reward/<name>_mean``, ``eval/reward/<name>_stderr``: r(x_i, y_i) for every reward
  source (gold, learned, ...); stderr = sample std (ddof = 1) / √n.
* ``eval/kl_mean``, ``eval/kl_stderr``: the sequence-level Monte-Carlo KL estimate
  KL(π ‖ π_ref) ≈ (1/n) Σ_i Σ_t [log π(y_it | x_i, y_i<t) − log π_ref(y_it | x_i, y_i<t)] over
  response tokens (EOS included), both log-probs from teacher-forced forwards at temperature 1,
  the KL that RLHF objectives constrain (Stiennon et al., 2020; Ouyang et al., 2022). With
  ``temperature ≠ 1`` the samples come from the tempered policy, so this is then
  E_{y∼π_T}[log π(y) − log π_ref(y)], not a KL.
* ``eval/win_rate``, ``eval/win_rate_stderr``: gold reward of y_i against y'_i for the same
  prompt: win 1, tie 0.5, loss 0 (only when ``gold_key`` is among the reward sources).
* ``eval/ref_reward/<name>_mean`` / ``_stderr``: every source's reward of the reference samples
  (with the win rate), so a learned reward's gain can be set against the gold gain.
* ``eval/response_length_mean``: real response tokens per sample (EOS included);
  ``eval/num_samples``: n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax.models.config import ModelConfig
from irl_jax.objectives.logprobs import sequence_logprobs
from irl_jax.sampling import sample, teacher_forced_logprobs

RewardFn = rewards_lib.RewardFn
# A reward source scored with the source as an argument (a learned RM's params too).
_score = jax.jit(rewards_lib.call)


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / √n`` of a 1-D sample (stderr NaN for n < 2)."""
    values = np.asarray(values, np.float64)
    n = values.size
    stderr = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(np.mean(values)), stderr


def win_scores(rewards: jax.Array, ref_rewards: jax.Array) -> jax.Array:
    """Per-prompt outcome of a pairwise comparison: 1 win, 0.5 tie, 0 loss (``[B]`` float32)."""
    return 0.5 * (1.0 + jnp.sign(rewards - ref_rewards).astype(jnp.float32))


def sequence_kl(
    model_config: ModelConfig,
    policy_params,
    ref_params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    response_ids: jax.Array,
    response_mask: jax.Array,
    *,
    ref_model_config: ModelConfig | None = None,
    policy_logprobs: jax.Array | None = None,
) -> jax.Array:
    """Σ_t (log π − log π_ref) over each response's tokens, teacher-forced at temperature 1.

    Args:
      model_config, policy_params: the policy π.
      ref_params: the reference π_ref (architecture ``ref_model_config``, default the policy's).
      prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
      response_ids, response_mask: ``[B, N]`` responses (sampled from π for a KL estimate).
      policy_logprobs: ``[B, N]`` log π of the response tokens if already known (e.g.
        ``SampleOutput.response_logprobs`` of a temperature-1 sample), saving one forward.

    Returns:
      ``[B]`` float32 per-sequence log-ratios; their mean estimates KL(π ‖ π_ref).
    """
    if policy_logprobs is None:
        policy_logprobs = teacher_forced_logprobs(
            model_config, policy_params, prompt_ids, prompt_mask, response_ids, response_mask
        )
    ref_logprobs = teacher_forced_logprobs(
        ref_model_config or model_config,
        ref_params,
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
    )
    return sequence_logprobs(policy_logprobs - ref_logprobs, response_mask)


def _chunks(num_rows: int, batch_size: int):
    for start in range(0, num_rows, batch_size):
        yield start, min(start + batch_size, num_rows)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pads the batch axis to ``rows`` by repeating the last row (one compiled shape)."""
    return np.pad(array, [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1), mode="edge")


def _real_tokens(ids: np.ndarray, mask: np.ndarray) -> list[int]:
    return [int(t) for t in ids[mask.astype(bool)]]


def evaluate_policy(
    model_config: ModelConfig,
    policy_params,
    ref_params,
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    *,
    reward_fns: Mapping[str, RewardFn],
    rng: jax.Array,
    max_new_tokens: int,
    gold_key: str = "gold",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: tuple[int, ...] | None = None,
    ref_model_config: ModelConfig | None = None,
    tokenizer: Any = None,
    num_samples_to_log: int = 4,
    batch_size: int | None = None,
    data_sharding: jax.sharding.Sharding | None = None,
    sample_metrics: Callable[[dict[str, np.ndarray]], Mapping[str, float]] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Samples from the policy and the reference and scores them (see the module docstring).

    Sampling, teacher-forced scoring and the reward functions run jitted, one compile per batch
    shape; the last batch is padded to ``batch_size`` (padding rows are dropped).

    Args:
      model_config, policy_params: the policy π.
      ref_params: the reference π_ref (architecture ``ref_model_config``, default the policy's).
      prompt_ids, prompt_mask: ``[n, P]`` left-padded prompts (host arrays).
      reward_fns: name → ``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [B]``.
      rng: PRNG key; batch b uses ``fold_in(rng, b)``.
      max_new_tokens, temperature, top_k, top_p, eos_ids: sampling settings (as ``sample``),
        the same for both policies.
      gold_key: the reward source used for the win rate (skipped if absent from ``reward_fns``).
      tokenizer: optional; when given, logged samples carry decoded texts.
      num_samples_to_log: how many of the first prompts to return as sample dicts.
      batch_size: prompts per jitted call (default: all at once).
      data_sharding: if given, each batch is placed with it (e.g. ``batch_sharding(mesh)``;
        call under ``jax.set_mesh(mesh)`` with sharded params).
      sample_metrics: optional ``fn(rows) -> metrics`` of the policy samples of every prompt
        (host arrays ``response_ids``, ``response_mask`` and ``logprobs``, the sampling
        distribution's log-probs), merged into the metrics (e.g. the divergence to a
        demonstrator, ``irl_jax.evaluation.divergence``).

    Returns:
      ``(metrics, samples)``: float metrics named ``eval/...``, and per logged prompt a dict with
      ``prompt_ids``, ``response_ids``, ``ref_response_ids`` (real tokens only), ``prompt``,
      ``response``, ``ref_response`` (texts, with a tokenizer), ``reward/<name>``, ``kl`` and
      ``ref_reward/<gold_key>``.
    """
    prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
    num_prompts = len(prompt_ids)
    if num_prompts == 0:
        raise ValueError("evaluate_policy needs at least one prompt")
    batch_size = batch_size or num_prompts
    ref_model_config = ref_model_config or model_config
    with_win_rate = gold_key in reward_fns
    sources = {name: rewards_lib.as_pytree(fn) for name, fn in reward_fns.items()}
    settings = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=eos_ids,
    )
    unfiltered_t1 = temperature == 1.0  # response_logprobs are then exactly log π (no forward)

    parts: list[dict[str, np.ndarray]] = []
    for index, (start, stop) in enumerate(_chunks(num_prompts, batch_size)):
        ids = _pad_rows(prompt_ids[start:stop], batch_size)
        mask = _pad_rows(prompt_mask[start:stop], batch_size)
        if data_sharding is not None:
            ids, mask = (sharding_lib.place(x, data_sharding) for x in (ids, mask))
        policy_key, ref_key = jax.random.split(jax.random.fold_in(rng, index))
        policy = sample(model_config, policy_params, ids, mask, rng=policy_key, **settings)
        response = (policy.response_ids, policy.response_mask)
        part = {
            "response_ids": policy.response_ids,
            "response_mask": policy.response_mask,
            **({"logprobs": policy.response_logprobs} if sample_metrics else {}),
            "kl": sequence_kl(
                model_config,
                policy_params,
                ref_params,
                ids,
                mask,
                *response,
                ref_model_config=ref_model_config,
                policy_logprobs=policy.response_logprobs if unfiltered_t1 else None,
            ),
        }
        for name, source in sources.items():
            part[f"reward/{name}"] = _score(source, ids, mask, *response)
        if with_win_rate:
            ref = sample(ref_model_config, ref_params, ids, mask, rng=ref_key, **settings)
            part["ref_response_ids"] = ref.response_ids
            part["ref_response_mask"] = ref.response_mask
            for name, source in sources.items():
                part[f"ref_reward/{name}"] = _score(
                    source, ids, mask, ref.response_ids, ref.response_mask
                )
            part["win"] = win_scores(part[f"reward/{gold_key}"], part[f"ref_reward/{gold_key}"])
        # One device-to-host transfer per batch, after all its work has been dispatched (an
        # all-gather where the batch spans processes).
        parts.append({k: v[: stop - start] for k, v in sharding_lib.to_host(part).items()})
    results = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    metrics: dict[str, float] = {"eval/num_samples": float(num_prompts)}
    for name in reward_fns:
        mean, stderr = mean_and_stderr(results[f"reward/{name}"])
        metrics[f"eval/reward/{name}_mean"], metrics[f"eval/reward/{name}_stderr"] = mean, stderr
    metrics["eval/kl_mean"], metrics["eval/kl_stderr"] = mean_and_stderr(results["kl"])
    if with_win_rate:
        metrics["eval/win_rate"], metrics["eval/win_rate_stderr"] = mean_and_stderr(results["win"])
        for name in reward_fns:
            mean, stderr = mean_and_stderr(results[f"ref_reward/{name}"])
            metrics[f"eval/ref_reward/{name}_mean"] = mean
            metrics[f"eval/ref_reward/{name}_stderr"] = stderr
    metrics["eval/response_length_mean"] = float(np.mean(results["response_mask"].sum(-1)))
    if sample_metrics is not None:
        keys = ("response_ids", "response_mask", "logprobs")
        metrics.update(sample_metrics({k: results[k] for k in keys}))

    samples = []
    for row in range(min(num_samples_to_log, num_prompts)):
        entry: dict[str, Any] = {
            "prompt_ids": _real_tokens(prompt_ids[row], prompt_mask[row]),
            "response_ids": _real_tokens(
                results["response_ids"][row], results["response_mask"][row]
            ),
        }
        if with_win_rate:
            entry["ref_response_ids"] = _real_tokens(
                results["ref_response_ids"][row], results["ref_response_mask"][row]
            )
        if tokenizer is not None:
            for key in ("prompt", "response", "ref_response"):
                if f"{key}_ids" in entry:
                    entry[key] = tokenizer.decode(entry[f"{key}_ids"])
        for name in reward_fns:
            entry[f"reward/{name}"] = float(results[f"reward/{name}"][row])
        entry["kl"] = float(results["kl"][row])
        if with_win_rate:
            entry[f"ref_reward/{gold_key}"] = float(results[f"ref_reward/{gold_key}"][row])
        samples.append(entry)
    return metrics, samples
