"""The stages of an RL rollout, as small pure functions an algorithm composes inside its jitted
step (SURVEY §4):

    sample → score(source, …) → select_groups (DAPO) → reference log-probs → KL penalty
           → advantages (``irl_jax.objectives.policy_gradient``)

The reward source is an argument of ``score`` on every call (a pytree: a task's gold reward, a
verifier, a learned reward model or ensemble, a discriminator whose params change every
iteration), never a constant captured by a closure. Rows are laid out ``B = N · G`` with a
prompt's G responses consecutive; all shapes are static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from irl_jax import rewards as rewards_lib
from irl_jax.models import ModelConfig, lora
from irl_jax.objectives.logprobs import next_token_entropy, next_token_logprobs, sequence_logprobs
from irl_jax.sampling import repeat_prompts, teacher_forced_logprobs
from irl_jax.sampling import sample as sample_tokens

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How responses are drawn (``config.sampling``): budget, temperature, filters, group size."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    group_size: int = 1

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SamplingSettings:
        return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


@flax.struct.dataclass
class Samples:
    """Sampled responses to (repeated) prompts, all rows ``[B, ...]``.

    Attributes:
      prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts (each repeated G times).
      response_ids, response_mask: ``[B, N]`` responses (the mask covers the stopping EOS).
      logprobs: ``[B, N]`` log softmax(logits / T) of each response token under the sampling
        policy, without top-k/top-p filtering (what PPO/GRPO ratios use, as TRL and verl).
    """

    prompt_ids: Array
    prompt_mask: Array
    response_ids: Array
    response_mask: Array
    logprobs: Array

    @property
    def lengths(self) -> Array:
        """``[B]`` response tokens (EOS included)."""
        return self.response_mask.sum(axis=-1)


def sample(
    model_config: ModelConfig,
    params: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    *,
    rng: Array | None,
    settings: SamplingSettings,
    greedy: bool = False,
) -> Samples:
    """``settings.group_size`` responses to each prompt (one per prompt when ``greedy``)."""
    group = 1 if greedy else settings.group_size
    ids, mask = repeat_prompts(prompt_ids, prompt_mask, group)
    out = sample_tokens(
        model_config,
        params,
        ids,
        mask,
        rng=rng,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        greedy=greedy,
    )
    return Samples(ids, mask, out.response_ids, out.response_mask, out.response_logprobs)


def score(source: Any, samples: Samples) -> Array:
    """The reward source on the samples: ``[B]`` sequence rewards (or ``[B, N]`` token rewards,
    for a source that returns them)."""
    return rewards_lib.as_pytree(source)(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask
    )


def score_parts(source: Any, samples: Samples) -> tuple[Array, dict[str, Array]]:
    """``score`` and, for user reward functions, each function's rewards ``{name: [B]}`` from
    the same call (NaN where a function returned None; ``rewards.scores_and_parts``)."""
    return rewards_lib.scores_and_parts(
        rewards_lib.as_pytree(source),
        samples.prompt_ids,
        samples.prompt_mask,
        samples.response_ids,
        samples.response_mask,
    )


def part_means(parts: Mapping[str, Array], weights: Array | None = None) -> dict[str, Array]:
    """``{"train/reward/<name>_mean": mean}`` of each function's rewards over the rows of
    weight 1 (default all) where it returned a number (0 where it returned none); named in
    full, as ``eval/reward/<name>_mean``, since the loop prefixes only names without a slash."""
    means = {}
    for name, values in parts.items():
        valid = ~jnp.isnan(values) if weights is None else ~jnp.isnan(values) & (weights > 0)
        total = jnp.sum(jnp.where(valid, values, 0.0))
        means[f"train/reward/{name}_mean"] = total / jnp.maximum(valid.sum(), 1)
    return means


def reference_logprobs(
    model_config: ModelConfig, params: Any, samples: Samples, temperature: float
) -> Array:
    """``[B, N]`` log softmax(logits / T) of the response tokens under ``params`` (e.g. the
    frozen reference), teacher-forced; 0 where masked."""
    return teacher_forced_logprobs(
        model_config,
        params,
        samples.prompt_ids,
        samples.prompt_mask,
        samples.response_ids,
        samples.response_mask,
        temperature=temperature,
    )


def policy_logprobs(
    model: Any, params: Any, samples: Samples, temperature: float, rng: Array | None = None
) -> tuple[Array, Array]:
    """``(log π, entropy)``, each ``[B, N]``, of the response tokens at temperature T: one
    teacher-forced forward of the trained ``model`` (a ``Transformer``) through which the policy
    losses differentiate; ``rng`` drives LoRA dropout (``lora.dropout_rngs``)."""
    ids, mask = rewards_lib.concat_prompt_response(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask
    )
    rngs = lora.dropout_rngs(model, rng)
    logits = model.apply({"params": params}, ids, mask, rngs=rngs).logits
    prompt_len = samples.prompt_ids.shape[1]
    logps = next_token_logprobs(logits, ids, temperature)[:, prompt_len:]
    return logps, next_token_entropy(logits, temperature)[:, prompt_len:]


def sequence_kl(samples: Samples, ref_logprobs: Array) -> Array:
    """``[B]`` Σ_t (log π_old − log π_ref) over each response: a sample of KL(π ‖ π_ref)."""
    return sequence_logprobs(samples.logprobs - ref_logprobs, samples.response_mask)


def group_has_variance(rewards: Array, group_size: int) -> Array:
    """``[K · G] -> [K]`` bool: the group's rewards are not all equal."""
    grouped = rewards.reshape(-1, group_size)
    return jnp.max(grouped, axis=1) > jnp.min(grouped, axis=1)


def _put_groups(buffer: Array, rows: Array, slots: Array, group_size: int) -> Array:
    """Writes group k of ``rows`` to group slot ``slots[k]`` of ``buffer`` (out of range:
    dropped)."""
    tail = buffer.shape[1:]
    grouped = buffer.reshape(-1, group_size, *tail)
    new = rows.reshape(-1, group_size, *tail)
    return grouped.at[slots].set(new, mode="drop").reshape(buffer.shape)


def select_groups(
    draw: Callable[[Array], tuple[Samples, Array]],
    *,
    num_groups: int,
    group_size: int,
    max_rounds: int,
) -> tuple[Samples, Array, dict[str, Array]]:
    """DAPO's dynamic sampling with static shapes: draw rounds of ``num_groups`` groups until
    ``num_groups`` groups whose rewards are not all equal are collected, or ``max_rounds``.

    Groups with equal rewards have zero group-relative advantage: training on them only
    inflates a token-mean loss's denominator. So they are never used to fill the batch: slots
    still empty after the last round keep zero response masks and rewards (no tokens, no
    weight), and the fill rate is reported.

    Args:
      draw: ``round -> (samples, rewards)`` of ``num_groups · group_size`` rows (the round's
        prompts and sampling key are the caller's choice); ``samples`` may be any pytree of
        such rows (e.g. with per-function rewards alongside).
      num_groups, group_size: N and G.
      max_rounds: at most this many draws (a ``lax.while_loop``).

    Returns:
      ``(samples, rewards, metrics)`` with ``metrics``: ``fill_rate`` (kept groups / N),
      ``sampling_rounds`` and ``groups_with_variance`` (fraction of all drawn groups).
    """
    shapes = jax.eval_shape(draw, jnp.int32(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry):
        rounds, filled, drawn_with_variance, (buffer, buffer_rewards) = carry
        samples, rewards = draw(rounds)
        has_variance = group_has_variance(rewards, group_size)
        slot = filled + jnp.cumsum(has_variance) - 1
        slots = jnp.where(has_variance, slot, num_groups)
        put = lambda old, new: _put_groups(old, new, slots, group_size)
        buffer = jax.tree.map(put, buffer, samples)
        buffer_rewards = put(buffer_rewards, rewards)
        filled = jnp.minimum(filled + has_variance.sum(), num_groups)
        count = drawn_with_variance + has_variance.sum()
        return rounds + 1, filled, count, (buffer, buffer_rewards)

    def cond(carry):
        rounds, filled, _, _ = carry
        return (rounds < max_rounds) & (filled < num_groups)

    init = (jnp.int32(0), jnp.int32(0), jnp.int32(0), zeros)
    rounds, filled, with_variance, (samples, rewards) = jax.lax.while_loop(cond, body, init)
    metrics = {
        "fill_rate": filled / num_groups,
        "sampling_rounds": rounds.astype(jnp.float32),
        "groups_with_variance": with_variance / (rounds * num_groups),
    }
    return samples, rewards, metrics


def as_sequences(samples: Samples, weights: Array | None = None) -> dict[str, Array]:
    """The samples as training rows (``irl_jax.data``'s layout, ``[B, P + N]``): ``input_ids``
    and ``attention_mask`` of the left-padded prompt followed by the response, and a
    ``loss_mask`` on the response tokens, times ``weights`` ``[B]`` when given (0 drops a
    response from a loss). Padding on both sides is fine: positions come from the mask."""
    ids, mask = rewards_lib.concat_prompt_response(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask
    )
    targets = samples.response_mask if weights is None else samples.response_mask * weights[:, None]
    loss_mask = jnp.concatenate([jnp.zeros_like(samples.prompt_mask), targets], axis=1)
    return {
        "input_ids": ids.astype(jnp.int32),
        "attention_mask": mask.astype(jnp.int32),
        "loss_mask": loss_mask.astype(jnp.int32),
    }
