"""Rollouts for critic-free policy gradient: sample groups, score, select, compute advantages.

One rollout (SURVEY §4): for each of N prompts sample G responses with the current policy at
temperature T, score them with the reward source, optionally add DAPO's over-long penalty, keep N
groups out of an over-sampled batch (DAPO dynamic sampling), optionally subtract β·KL to the
reference, optionally standardize with running statistics, and turn the rewards into one
advantage per response. Everything is jitted with static shapes; rows are laid out ``B = N · G``
with a prompt's G responses consecutive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax.models import ModelConfig
from irl_jax.objectives import policy_gradient as pg
from irl_jax.objectives.logprobs import sequence_logprobs
from irl_jax.sampling import repeat_prompts, sample, teacher_forced_logprobs

Array = jax.Array
ESTIMATORS = ("reinforce", "rloo", "remax", "grpo")
REWARDS = ("gold", "verifier", "model")  # model: common.load_reward_model


@flax.struct.dataclass
class Rollout:
    """One iteration's training batch, all rows ``[B, ...]`` with ``B = N · G``.

    Attributes:
      prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts (each repeated G times).
      response_ids, response_mask: ``[B, R]`` sampled responses (mask covers the stopping EOS).
      old_logprobs: ``[B, R]`` log softmax(logits / T) of the response tokens under the sampling
        policy π_old (the sampler's ``response_logprobs``).
      ref_logprobs: ``[B, R]`` the same under the frozen reference (zeros without a KL term).
      advantages: ``[B]`` one advantage per response.
    """

    prompt_ids: Array
    prompt_mask: Array
    response_ids: Array
    response_mask: Array
    old_logprobs: Array
    ref_logprobs: Array
    advantages: Array


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

    def update(self, rewards: Array, decay: float) -> EmaBaseline:
        return EmaBaseline(
            decay * self.value + (1 - decay) * rewards.mean(), decay * self.weight + (1 - decay)
        )


def init_extras() -> dict[str, Any]:
    """The algorithm state kept in ``TrainState.extras`` (checkpointed): running reward
    statistics (``normalize_rewards``) and REINFORCE's baseline."""
    return {"reward_stats": rewards_lib.RunningStats.create(), "baseline": EmaBaseline.create()}


def make_reward_fn(name: str, task: Any, tokenizer: Any) -> rewards_lib.RewardFn:
    """The reward source ``config.policy_gradient.reward`` names.

    Args:
      name: ``gold`` (the synthetic task's jittable gold reward, computed in the graph) or
        ``verifier`` (the task's text checker ``gold_reward_text`` on decoded strings, on the
        host through ``jax.pure_callback``: the path a unit-test runner or math checker takes).
      task: the synthetic task (``None`` for file data, which has no known reward).
      tokenizer: decodes ids for the verifier.
    """
    if name not in ("gold", "verifier"):
        raise ValueError(f"config.policy_gradient.reward={name!r}; expected 'gold' or 'verifier'")
    if task is None:
        raise ValueError(
            f"config.policy_gradient.reward={name!r} needs a synthetic task (data.path is set)"
        )
    if name == "gold":
        return task.gold_reward
    return rewards_lib.verifier(task.gold_reward_text, tokenizer)


def select_groups(rewards: Array, group_size: int, num_groups: int) -> tuple[Array, Array]:
    """DAPO dynamic sampling with static shapes: keep ``num_groups`` of the sampled groups,
    those whose rewards are not all equal first (ties in sampling order).

    Args:
      rewards: ``[K · G]`` rewards of K ≥ ``num_groups`` groups.
      group_size: G.
      num_groups: groups to keep.

    Returns:
      ``(kept [num_groups] int32 group indices, has_variance [K] bool)``.
    """
    grouped = rewards.reshape(-1, group_size)
    has_variance = jnp.max(grouped, axis=1) > jnp.min(grouped, axis=1)
    order = jnp.argsort(jnp.where(has_variance, 0, 1), stable=True)
    return order[:num_groups].astype(jnp.int32), has_variance


def take_groups(x: Array, kept: Array, group_size: int) -> Array:
    """Rows of the kept groups: ``[K · G, ...] -> [len(kept) · G, ...]``."""
    grouped = x.reshape(-1, group_size, *x.shape[1:])
    return grouped[kept].reshape(-1, *x.shape[1:])


def estimate_advantages(
    settings: ml_collections.ConfigDict,
    rewards: Array,
    *,
    greedy_rewards: Array | None = None,
    baseline: Array | float = 0.0,
) -> Array:
    """One advantage per response for ``settings.estimator`` (equations in
    ``irl_jax.objectives.policy_gradient``): ``grpo`` (group-relative, scaled by
    ``advantage_scale``), ``rloo`` (leave-one-out mean), ``remax`` (minus the greedy response's
    reward, ``greedy_rewards`` per row) or ``reinforce`` (minus ``baseline``)."""
    estimator = settings.estimator
    if estimator == "grpo":
        return pg.group_advantages(
            rewards,
            settings.group_size,
            scale=settings.advantage_scale,
            eps=settings.advantage_eps,
        )
    if estimator == "rloo":
        return pg.rloo_advantages(rewards, settings.group_size)
    if estimator == "remax":
        if greedy_rewards is None:
            raise ValueError("the remax estimator needs greedy_rewards")
        return pg.remax_advantages(rewards, greedy_rewards)
    if estimator == "reinforce":
        return pg.reinforce_advantages(rewards, baseline)
    raise ValueError(
        f"config.policy_gradient.estimator={estimator!r}; expected one of {ESTIMATORS}"
    )


def make_rollout_fn(
    model_config: ModelConfig,
    settings: ml_collections.ConfigDict,
    reward_fn: rewards_lib.RewardFn,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Callable[[Any, Array, Array, Any], tuple[Rollout, Any, dict[str, Array]]]:
    """Builds ``rollout(state, prompt_ids, prompt_mask, ref_params) -> (rollout, extras,
    metrics)``, jitted once. ``reward_fn`` enters the jitted function as an argument (a learned
    reward model's params in their own shardings; see ``rewards.as_pytree``).

    ``prompt_ids``/``prompt_mask`` hold ``oversample · N`` prompts with dynamic sampling, else N.
    Randomness: ``fold_in(state.step_rng(), 0)``. The returned ``extras`` (running reward
    statistics, REINFORCE baseline) replace ``state.extras``.

    Metrics: ``reward_mean``/``reward_std`` (the reward source plus any over-long penalty, over
    the kept responses), ``response_length_mean``, ``groups_with_variance`` (fraction of all
    sampled groups whose rewards differ); with dynamic sampling ``kept_with_variance`` (the same
    over the kept groups); with a KL term ``kl`` (mean Σ_t log π_old − log π_ref per response);
    with ReMax ``greedy_reward_mean``.
    """
    s = settings
    group_size, temperature = s.group_size, s.temperature

    source = rewards_lib.as_pytree(reward_fn)

    def score(source, prompt_ids, prompt_mask, response_ids, response_mask):
        scores = source(prompt_ids, prompt_mask, response_ids, response_mask)
        if s.overlong_buffer:
            lengths = response_mask.sum(axis=-1)
            scores = scores + pg.overlong_penalty(lengths, s.max_new_tokens, s.overlong_buffer)
        return scores

    def rollout(state, prompt_ids, prompt_mask, ref_params, source):
        extras = dict(state.extras)
        num_prompts = prompt_ids.shape[0] // (s.oversample if s.dynamic_sampling else 1)
        ids, mask = repeat_prompts(prompt_ids, prompt_mask, group_size)
        out = sample(
            model_config,
            state.params,
            ids,
            mask,
            rng=jax.random.fold_in(state.step_rng(), 0),
            max_new_tokens=s.max_new_tokens,
            temperature=temperature,
            top_k=s.top_k,
            top_p=s.top_p,
        )
        response_ids, response_mask = out.response_ids, out.response_mask
        old_logprobs = out.response_logprobs
        scores = score(source, ids, mask, response_ids, response_mask)
        kept, has_variance = select_groups(scores, group_size, num_prompts)
        metrics = {"groups_with_variance": has_variance.mean(dtype=jnp.float32)}
        if s.dynamic_sampling:
            rows = (ids, mask, response_ids, response_mask, old_logprobs, scores)
            rows = tuple(take_groups(x, kept, group_size) for x in rows)
            ids, mask, response_ids, response_mask, old_logprobs, scores = rows
            prompt_ids, prompt_mask = prompt_ids[kept], prompt_mask[kept]
            metrics["kept_with_variance"] = has_variance[kept].mean(dtype=jnp.float32)
        metrics["reward_mean"], metrics["reward_std"] = scores.mean(), jnp.std(scores)
        metrics["response_length_mean"] = response_mask.sum(axis=-1).mean(dtype=jnp.float32)

        rewards = scores
        ref_logprobs = jnp.zeros_like(old_logprobs)
        if s.kl_coef:
            ref_logprobs = teacher_forced_logprobs(
                model_config,
                ref_params,
                ids,
                mask,
                response_ids,
                response_mask,
                temperature=temperature,
            )
            metrics["kl"] = sequence_logprobs(old_logprobs - ref_logprobs, response_mask).mean()
            if s.kl_in_reward:
                kl_bt = pg.kl_estimate(old_logprobs, ref_logprobs, s.kl_estimator)
                rewards = pg.kl_penalized_rewards(rewards, kl_bt, response_mask, s.kl_coef)
        if s.normalize_rewards:
            extras["reward_stats"], rewards = rewards_lib.normalize(extras["reward_stats"], rewards)

        greedy_rewards = None
        if s.estimator == "remax":
            greedy = sample(
                model_config,
                state.params,
                prompt_ids,
                prompt_mask,
                max_new_tokens=s.max_new_tokens,
                temperature=temperature,
                greedy=True,
            )
            greedy_scores = score(
                source, prompt_ids, prompt_mask, greedy.response_ids, greedy.response_mask
            )
            metrics["greedy_reward_mean"] = greedy_scores.mean()
            greedy_rewards = jnp.repeat(greedy_scores, group_size)
            if s.normalize_rewards:  # the baseline in the same units as the rewards
                stats = extras["reward_stats"]
                greedy_rewards = (greedy_rewards - stats.mean) / jnp.sqrt(stats.variance + 1e-8)
        advantages = estimate_advantages(
            s, rewards, greedy_rewards=greedy_rewards, baseline=extras["baseline"].estimate
        )
        extras["baseline"] = extras["baseline"].update(rewards, s.baseline_decay)
        batch = Rollout(
            ids, mask, response_ids, response_mask, old_logprobs, ref_logprobs, advantages
        )
        return batch, extras, metrics

    data = sharding_lib.batch_sharding(mesh)
    replicated = sharding_lib.replicated(mesh)
    jitted = jax.jit(
        rollout,
        in_shardings=(
            state_shardings,
            data,
            data,
            state_shardings.params,
            jax.tree.map(lambda x: x.sharding, source),
        ),
        out_shardings=(data, state_shardings.extras, replicated),
    )
    return lambda state, prompt_ids, prompt_mask, ref_params: jitted(
        state, prompt_ids, prompt_mask, ref_params, source
    )
