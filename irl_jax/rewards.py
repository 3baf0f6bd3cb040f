"""Reward sources behind one interface, usable inside a jitted RL step.

A reward source is ``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> scores [B]``
(float32) with prompts left-padded ``[B, P]`` and responses right-padded ``[B, N]`` whose mask
covers the generated tokens, the stopping EOS included. Sources: a synthetic task's gold reward,
a verifier on decoded text, a learned reward model (or ensemble), weighted sums, a length
penalty, DAPO's over-long penalty, and running normalization.

A learned reward model is a pytree (``LearnedReward``: its params are leaves), and ``as_pytree``
wraps a parameter-free source as a leafless one, so that jitted code takes any source as an
*argument*. (A closure over the params would make them constants of the compiled function, which
XLA copies on every call: 6x slower for a 64 MiB matrix on this CPU.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.objectives.policy_gradient import overlong_penalty

Array = jax.Array
RewardFn = Callable[[Array, Array, Array, Array], Array]


def concat_prompt_response(
    prompt_ids: Array, prompt_mask: Array, response_ids: Array, response_mask: Array
) -> tuple[Array, Array]:
    """``[B, P + N]`` ids and mask of prompt followed by response (padding on both sides is fine:
    positions come from the mask)."""
    ids = jnp.concatenate([prompt_ids, response_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    return ids, mask


@flax.struct.dataclass
class Static:
    """A parameter-free source (a plain function) as a pytree without leaves."""

    fn: RewardFn = flax.struct.field(pytree_node=False)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        return self.fn(prompt_ids, prompt_mask, response_ids, response_mask)


def as_pytree(source: RewardFn) -> Any:
    """``source`` itself if it is already a pytree source, else ``Static(source)``."""
    return source if isinstance(source, (Static, LearnedReward, WeightedSum)) else Static(source)


@flax.struct.dataclass
class WeightedSum:
    """r = Σ_k w_k r_k (a pytree: learned terms keep their params as leaves)."""

    sources: tuple[Any, ...]
    weights: tuple[float, ...] = flax.struct.field(pytree_node=False)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        return sum(w * fn(*rows) for w, fn in zip(self.weights, self.sources))


def weighted_sum(sources: Sequence[tuple[float, RewardFn]]) -> WeightedSum:
    """r = Σ_k w_k r_k over ``(w_k, source_k)`` pairs."""
    return WeightedSum(
        tuple(as_pytree(fn) for _, fn in sources), tuple(float(w) for w, _ in sources)
    )


def length_penalty(coefficient: float) -> RewardFn:
    """r = −c · |y| (number of response tokens, EOS included)."""

    def reward(prompt_ids, prompt_mask, response_ids, response_mask):
        del prompt_ids, prompt_mask, response_ids
        return -coefficient * response_mask.sum(axis=-1).astype(jnp.float32)

    return reward


def overlong(max_length: int, buffer: int) -> RewardFn:
    """DAPO's soft over-long penalty on the response length (see ``overlong_penalty``)."""

    def reward(prompt_ids, prompt_mask, response_ids, response_mask):
        del prompt_ids, prompt_mask, response_ids
        return overlong_penalty(response_mask.sum(axis=-1), max_length, buffer)

    return reward


def verifier(check: Callable[[list[str], list[str]], Sequence[float]], tokenizer: Any) -> RewardFn:
    """A host-side verifier on decoded text, callable inside ``jit`` via ``jax.pure_callback``.

    Args:
      check: ``(prompts, responses) -> scores`` on strings (e.g. unit tests, exact match).
      tokenizer: decodes ids (special tokens skipped, padding removed by the masks).
    """

    def host(prompt_ids, prompt_mask, response_ids, response_mask):
        prompts = [
            tokenizer.decode(ids[mask.astype(bool)], skip_special_tokens=True)
            for ids, mask in zip(prompt_ids, prompt_mask)
        ]
        responses = [
            tokenizer.decode(ids[mask.astype(bool)], skip_special_tokens=True)
            for ids, mask in zip(response_ids, response_mask)
        ]
        return np.asarray(check(prompts, responses), np.float32)

    def reward(prompt_ids, prompt_mask, response_ids, response_mask):
        shape = jax.ShapeDtypeStruct((prompt_ids.shape[0],), jnp.float32)
        return jax.pure_callback(
            host,
            shape,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            vmap_method="sequential",
        )

    return reward


@flax.struct.dataclass
class LearnedReward:
    """A learned reward model ``apply_fn(params, ids, mask) -> [B]`` (or ``[B, K]`` for an
    ensemble, combined with ``aggregation`` = mean / wco / uwo and the uwo ``penalty`` λ)
    scoring prompt + response."""

    params: Any
    apply_fn: Callable[[Any, Array, Array], Array] = flax.struct.field(pytree_node=False)
    aggregation: str | None = flax.struct.field(pytree_node=False, default=None)
    penalty: float = flax.struct.field(pytree_node=False, default=0.0)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        from irl_jax.objectives.reward import aggregate_ensemble

        ids, mask = concat_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
        scores = self.apply_fn(self.params, ids, mask)
        if scores.ndim == 2:
            if self.aggregation is None:
                raise ValueError("an ensemble reward model needs an aggregation")
            scores = aggregate_ensemble(scores, self.aggregation, self.penalty)
        return scores.astype(jnp.float32)


def reward_model(
    apply_fn: Callable[[Any, Array, Array], Array],
    params: Any,
    *,
    aggregation: str | None = None,
    penalty: float = 0.0,
) -> LearnedReward:
    """A learned reward source (see ``LearnedReward``)."""
    return LearnedReward(params, apply_fn, aggregation, penalty)


def call(source: Any, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
    """``source(...)`` with the source as an argument: ``jax.jit(call)(as_pytree(fn), ...)``."""
    return source(prompt_ids, prompt_mask, response_ids, response_mask)


@flax.struct.dataclass
class RunningStats:
    """Running mean / variance of rewards (Chan et al. parallel update); lives in
    ``TrainState.extras`` so that it is checkpointed."""

    count: Array
    mean: Array
    m2: Array

    @classmethod
    def create(cls) -> RunningStats:
        return cls(
            jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
        )

    @property
    def variance(self) -> Array:
        return self.m2 / jnp.maximum(self.count - 1, 1.0)

    def update(self, values: Array) -> RunningStats:
        n = jnp.asarray(values.size, jnp.float32)
        batch_mean = values.mean()
        batch_m2 = jnp.sum((values - batch_mean) ** 2)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.m2 + batch_m2 + delta**2 * self.count * n / total
        return RunningStats(total, mean, m2)


def normalize(stats: RunningStats, rewards: Array, eps: float = 1e-8) -> tuple[RunningStats, Array]:
    """Updates the running statistics with ``rewards``, then standardizes them with the result."""
    stats = stats.update(rewards)
    return stats, (rewards - stats.mean) / jnp.sqrt(stats.variance + eps)
