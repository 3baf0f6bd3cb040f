"""Reward sources behind one interface, usable inside a jitted RL step.

A reward source is ``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> scores [B]``
(float32) with prompts left-padded ``[B, P]`` and responses right-padded ``[B, N]`` whose mask
covers the generated tokens, the stopping EOS included. Sources: a synthetic task's gold reward,
a verifier on decoded text, a learned reward model (or ensemble), weighted sums, a length
penalty, DAPO's over-long penalty, and running normalization. ``load_reward_model`` turns a
reward-model export (an ensemble of heads, or a process reward model) into a source, and
``load_ensemble`` several independently trained exports into one ensemble source. Sources of
dense and shaped per-token rewards ``[B, N]`` (prefix differences, attention-based credit,
DPO's implicit token reward, potential-based shaping) are in ``irl_jax.dense_rewards``.

A learned reward model is a pytree (``LearnedReward``: its params are leaves), and ``as_pytree``
wraps a parameter-free source as a leafless one, so that jitted code takes any source as an
*argument*. (A closure over the params would make them constants of the compiled function, which
XLA copies on every call: 6x slower for a 64 MiB matrix on this CPU.)
"""

from __future__ import annotations

import dataclasses
import os
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
    """``source`` itself if it is already a pytree source (a ``flax.struct`` dataclass, e.g.
    ``LearnedReward`` or the sources of ``irl_jax.policy_rewards``), else ``Static(source)``."""
    is_struct = getattr(type(source), "_flax_dataclass", False)
    return source if is_struct else Static(source)


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


@flax.struct.dataclass
class ProcessReward:
    """A process reward model as a sequence reward: its per-token scores ``apply_fn(params, ids,
    mask) -> [B, T]`` read at the response's step boundaries (tokens equal to
    ``step_token_id``) and combined by ``aggregation``: ``mean``, ``min`` (the weakest step) or
    ``last`` (the final step). A PRM is trained only at step boundaries, so its score at the EOS
    (what a sequence classifier reads) is untrained and is never used; a response without a
    step boundary is scored at its last non-EOS token."""

    params: Any
    apply_fn: Callable[[Any, Array, Array], Array] = flax.struct.field(pytree_node=False)
    step_token_id: int = flax.struct.field(pytree_node=False, default=0)
    aggregation: str = flax.struct.field(pytree_node=False, default="min")
    eos_ids: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        ids, mask = concat_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
        scores = self.apply_fn(self.params, ids, mask)[:, prompt_ids.shape[1] :]
        return step_scores(
            scores.astype(jnp.float32),
            response_ids,
            response_mask,
            step_token_id=self.step_token_id,
            aggregation=self.aggregation,
            eos_ids=self.eos_ids,
        )


def step_scores(
    token_scores: Array,
    response_ids: Array,
    response_mask: Array,
    *,
    step_token_id: int,
    aggregation: str,
    eos_ids: Sequence[int] = (),
) -> Array:
    """``[B, N]`` token scores → ``[B]``: ``mean`` / ``min`` / ``last`` over the step boundaries
    (``response_ids == step_token_id`` inside the mask); rows without a boundary take the score
    of their last non-EOS token."""
    real = response_mask > 0
    boundary = real & (response_ids == step_token_id)
    content = real & ~jnp.isin(response_ids, jnp.asarray(tuple(eos_ids) or (-1,)))
    positions = jnp.arange(response_ids.shape[1])
    last_content = jnp.max(jnp.where(content, positions, 0), axis=-1)
    fallback = jnp.take_along_axis(token_scores, last_content[:, None], axis=1)[:, 0]
    has_step = boundary.any(axis=-1)
    if aggregation == "mean":
        steps = jnp.sum(token_scores * boundary, -1) / jnp.maximum(boundary.sum(-1), 1)
    elif aggregation == "min":
        steps = jnp.min(jnp.where(boundary, token_scores, jnp.inf), axis=-1)
    elif aggregation == "last":
        last = jnp.max(jnp.where(boundary, positions, 0), axis=-1)
        steps = jnp.take_along_axis(token_scores, last[:, None], axis=1)[:, 0]
    else:
        raise ValueError(f"step aggregation {aggregation!r}; expected mean, min or last")
    return jnp.where(has_step, steps, fallback)


PROCESS_MARKER = "irl_jax_reward.json"  # in a PRM export: {"kind": "process", "step_token_id"}


def load_reward_model(
    path: str,
    *,
    mesh: jax.sharding.Mesh,
    vocab_size: int,
    aggregation: str = "mean",
    uwo_penalty: float = 0.0,
    step_aggregation: str = "min",
    overrides: dict[str, Any] | None = None,
) -> LearnedReward | ProcessReward:
    """A reward-model export (``...ForSequenceClassification``) as a reward source, sharded on
    ``mesh``. K score heads make an ensemble combined by ``aggregation`` (``uwo_penalty`` = λ);
    a process reward model (marked by ``PROCESS_MARKER`` in its directory, as
    ``irl_jax.algorithms.reward_model`` exports it) scores the response's steps
    (``ProcessReward``, ``step_aggregation``).

    Raises:
      ValueError: the checkpoint is a causal LM, or its vocabulary differs from the policy's
        ``vocab_size`` (the reward model reads the policy's token ids).
    """
    import json

    from absl import logging

    from irl_jax.models.heads import RewardModel, TokenRewardModel

    cfg, params = load_checkpoint(
        path, mesh=mesh, vocab_size=vocab_size, scorer=True, overrides=overrides
    )
    if is_process_reward_model(path):
        with open(os.path.join(path, PROCESS_MARKER)) as f:
            info = json.load(f)
        logging.info("process reward model from %s (%s over steps)", path, step_aggregation)
        return ProcessReward(
            {"params": params},
            TokenRewardModel(cfg).apply,
            step_token_id=int(info["step_token_id"]),
            aggregation=step_aggregation,
            eos_ids=tuple(cfg.eos_token_ids),
        )
    num_heads = params["score"]["kernel"].shape[-1]
    logging.info("reward model: %s with %d head(s) from %s", cfg.architecture, num_heads, path)
    return reward_model(
        RewardModel(cfg, num_heads).apply,  # apply({"params": ...}, ids, mask)
        {"params": params},
        aggregation=aggregation if num_heads > 1 else None,
        penalty=uwo_penalty,
    )


def load_checkpoint(
    path: str,
    *,
    mesh: jax.sharding.Mesh,
    vocab_size: int,
    scorer: bool,
    overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``(ModelConfig, params)`` of a Hugging Face export that reads the policy's token ids: a
    reward model (``scorer``: a sequence classifier with a score head) or a causal LM.

    Raises:
      ValueError: the checkpoint is of the other kind, or its vocabulary differs from the
        policy's ``vocab_size``.
    """
    from irl_jax.models import hf

    cfg, params = hf.load_pretrained(path, mesh=mesh, **(overrides or {}))
    if scorer and "score" not in params:
        raise ValueError(
            f"{path!r} is a causal LM, not a reward model (a sequence-classification "
            "checkpoint with a score head)"
        )
    if not scorer and "score" in params:
        raise ValueError(f"{path!r} is a reward model, not a causal LM")
    if cfg.vocab_size != vocab_size:
        raise ValueError(
            f"{path!r} has a vocabulary of {cfg.vocab_size} tokens, the policy {vocab_size}: "
            "they must share a tokenizer"
        )
    return cfg, params


def is_process_reward_model(path: str) -> bool:
    """``path`` is a process reward model's export (``PROCESS_MARKER`` in its directory)."""
    return os.path.isfile(os.path.join(path, PROCESS_MARKER))


def reward_model(
    apply_fn: Callable[[Any, Array, Array], Array],
    params: Any,
    *,
    aggregation: str | None = None,
    penalty: float = 0.0,
) -> LearnedReward:
    """A learned reward source (see ``LearnedReward``)."""
    return LearnedReward(params, apply_fn, aggregation, penalty)


@dataclasses.dataclass(frozen=True)
class _Members:
    """The apply functions of independently trained reward models: ``(params_1, …, params_K),
    ids, mask -> [B, K]``, one forward per member (their shapes may differ)."""

    apply_fns: tuple[Callable[[Any, Array, Array], Array], ...]

    def __call__(self, params: tuple[Any, ...], ids: Array, mask: Array) -> Array:
        scores = [fn(p, ids, mask) for fn, p in zip(self.apply_fns, params, strict=True)]
        return jnp.stack([s if s.ndim == 1 else s.mean(axis=-1) for s in scores], axis=-1)


def load_ensemble(
    paths: Sequence[str],
    *,
    mesh: jax.sharding.Mesh,
    vocab_size: int,
    aggregation: str = "mean",
    uwo_penalty: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> LearnedReward:
    """Independently trained reward models (Coste et al. 2024: different seeds and data orders,
    full models — not heads on one shared backbone, whose disagreement is understated) as one
    ensemble source: each member scores the sequence (a member with several heads contributes
    their mean), and the ``[B, K]`` scores are combined by ``aggregation`` (mean / wco / uwo
    with ``uwo_penalty`` λ), like the heads of one ``RewardModel``.

    Raises:
      ValueError: fewer than two paths, or a member is not a sequence reward model (see
        ``load_reward_model``; the message names the path).
    """
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs two or more reward models, got {list(paths)}")
    members = []
    for path in paths:
        member = load_reward_model(path, mesh=mesh, vocab_size=vocab_size, overrides=overrides)
        if not isinstance(member, LearnedReward):
            raise ValueError(f"{path!r} is a process reward model; ensembles take sequence RMs")
        members.append(member)
    apply_fn = _Members(tuple(m.apply_fn for m in members))
    params = tuple(m.params for m in members)
    return reward_model(apply_fn, params, aggregation=aggregation, penalty=uwo_penalty)


def call(source: Any, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
    """``source(...)`` with the source as an argument: ``jax.jit(call)(as_pytree(fn), ...)``."""
    return source(prompt_ids, prompt_mask, response_ids, response_mask)


@flax.struct.dataclass
class UserRewards:
    """User reward functions (``irl_jax.user_rewards``, which builds this source): r = Σ_k w_k
    r_k over the functions that returned a number, as a leafless pytree.

    Attributes:
      names: each function's metric name.
      weights: w_k.
      jitted: per function, the jittable function, or ``None`` for a host function.
      host: the host functions, in order (``user_rewards.HostFunctions``: numpy ``[B, K]``
        rewards, NaN for None), called through ``jax.pure_callback``; ``None`` without any.
    """

    names: tuple[str, ...] = flax.struct.field(pytree_node=False)
    weights: tuple[float, ...] = flax.struct.field(pytree_node=False)
    jitted: tuple[Callable[..., Array] | None, ...] = flax.struct.field(pytree_node=False)
    host: Callable[..., np.ndarray] | None = flax.struct.field(pytree_node=False, default=None)

    def parts(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        """``[B, K]`` float32 rewards of each function (NaN where a host function returned
        None)."""
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        if self.host is not None:
            num_host = sum(fn is None for fn in self.jitted)
            shape = jax.ShapeDtypeStruct((prompt_ids.shape[0], num_host), jnp.float32)
            host = jax.pure_callback(self.host, shape, *rows, vmap_method="sequential")
        columns, h = [], 0
        for fn in self.jitted:
            if fn is None:
                columns.append(host[:, h])
                h += 1
            else:
                columns.append(jnp.asarray(fn(*rows), jnp.float32))
        return jnp.stack(columns, axis=1)

    def scores_and_parts(
        self, prompt_ids, prompt_mask, response_ids, response_mask
    ) -> tuple[Array, dict[str, Array]]:
        """``(Σ_k w_k r_k [B] over the non-None r_k, {name: r_k [B]})``."""
        parts = self.parts(prompt_ids, prompt_mask, response_ids, response_mask)
        weighted = parts * jnp.asarray(self.weights, jnp.float32)
        total = jnp.sum(jnp.where(jnp.isnan(parts), 0.0, weighted), axis=1)
        return total, {name: parts[:, k] for k, name in enumerate(self.names)}

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        return self.scores_and_parts(prompt_ids, prompt_mask, response_ids, response_mask)[0]


def scores_and_parts(
    source: Any, prompt_ids, prompt_mask, response_ids, response_mask
) -> tuple[Array, dict[str, Array]]:
    """``(source(...), parts)``: ``parts`` are the per-function rewards ``{name: [B]}`` (NaN
    where a function returned None) of the user reward functions inside ``source``
    (``irl_jax.user_rewards.UserRewards``, also as a term of a ``WeightedSum``), computed in the
    same call; ``{}`` for any other source."""
    rows = (prompt_ids, prompt_mask, response_ids, response_mask)
    if isinstance(source, WeightedSum):
        total, parts = 0.0, {}
        for weight, term in zip(source.weights, source.sources):
            scores, term_parts = scores_and_parts(term, *rows)
            total, parts = total + weight * scores, {**parts, **term_parts}
        return total, parts
    if hasattr(source, "scores_and_parts"):
        return source.scores_and_parts(*rows)
    return source(*rows), {}


@flax.struct.dataclass
class RunningStats:
    """Running mean / variance of rewards (Chan et al. parallel update); lives in an algorithm
    state's ``extras`` so that it is checkpointed."""

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

    def update(self, values: Array, weights: Array | None = None) -> RunningStats:
        """Folds in ``values`` (each counted with its 0/1 ``weights``, default all 1)."""
        weights = jnp.ones_like(values) if weights is None else weights.astype(values.dtype)
        n = weights.sum()
        batch_mean = jnp.sum(values * weights) / jnp.maximum(n, 1.0)
        batch_m2 = jnp.sum(weights * (values - batch_mean) ** 2)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / jnp.maximum(total, 1.0)
        m2 = self.m2 + batch_m2 + delta**2 * self.count * n / jnp.maximum(total, 1.0)
        return RunningStats(total, mean, m2)


@flax.struct.dataclass
class EmaBaseline:
    """REINFORCE's running-mean baseline: an exponential moving average of batch-mean rewards,
    bias-corrected as in Adam: b̂ = b / (1 − decayᵗ) (0 before the first batch)."""

    value: Array
    weight: Array  # 1 − decayᵗ

    @classmethod
    def create(cls) -> EmaBaseline:
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    @property
    def estimate(self) -> Array:
        return jnp.where(self.weight > 0, self.value / jnp.maximum(self.weight, 1e-12), 0.0)

    def update(self, rewards: Array, decay: float, weights: Array | None = None) -> EmaBaseline:
        mean = (
            rewards.mean()
            if weights is None
            else jnp.sum(rewards * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        )
        return EmaBaseline(
            decay * self.value + (1 - decay) * mean, decay * self.weight + (1 - decay)
        )


def normalize(
    stats: RunningStats, rewards: Array, weights: Array | None = None, eps: float = 1e-8
) -> tuple[RunningStats, Array]:
    """Updates the running statistics with ``rewards`` (those of weight 1), then standardizes
    them with the result."""
    stats = stats.update(rewards, weights)
    return stats, (rewards - stats.mean) / jnp.sqrt(stats.variance + eps)
