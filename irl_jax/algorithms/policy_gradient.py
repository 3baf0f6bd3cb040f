"""Critic-free policy gradient through the shared loop: REINFORCE, RLOO, ReMax, GRPO, Dr.GRPO,
DAPO (SURVEY §4).

One iteration = one ``train_loop`` step = one jitted function, composed of the rollout stages
of ``irl_jax.rollout``: sample G responses for each of N prompts with the current policy
(``config.sampling``), score them with the reward source (``config.reward``, passed in as an
argument), optionally keep only groups with reward variance (DAPO dynamic sampling, up to
``max_sampling_rounds`` draws), add the over-long penalty / the KL to the frozen reference /
running normalization, compute one advantage per response, then ``num_epochs ×
num_minibatches`` optimizer updates (``train.make_update``) of the clipped surrogate

    L(θ) = agg_{i,t} −min(ρ_it A_i, clip(ρ_it, 1 − ε_low, 1 + ε_high) A_i)
           + β · agg_{i,t} KL_t(π_θ ‖ π_ref) − c_H · agg_{i,t} H_t,
    ρ_it = π_θ(y_it | x_i, y_i<t) / π_old(y_it | x_i, y_i<t),

with log-probs from log softmax(logits / T) at the sampling temperature (as the sampler's
``logprobs``), ``agg`` the configured aggregation and the KL term either in the loss (GRPO, k2
or k3; k1 has no gradient there and is refused) or in the reward (``kl_in_reward``).
``state.step`` counts iterations (checkpoints and resume are per iteration); the policy's own
``step`` counts optimizer updates (what the learning-rate schedule follows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import rewards as rewards_lib
from irl_jax import rollout
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import (
    check_fields,
    check_minibatches,
    check_reward,
    check_reward_paths,
    require,
)
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives import policy_gradient as pg
from irl_jax.objectives.logprobs import masked_mean
from irl_jax.train import (
    Loss,
    TrainState,
    jit_step,
    make_update,
    optimizer_from_config,
)

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
    """``config.policy_gradient``: GRPO with a k3 KL term by default.

    ``config.batch_size`` is N, the prompts per iteration (each gets ``sampling.group_size``
    responses); ``config.num_steps`` counts iterations; ``config.optimizer``'s schedule and
    warmup count optimizer updates (``num_epochs · num_minibatches`` per iteration).
    """
    return ml_collections.ConfigDict(
        {
            "estimator": "grpo",  # reinforce | rloo | remax | grpo
            "advantage_scale": "group",  # GRPO: group | batch | none (Dr.GRPO)
            "advantage_eps": 1e-4,
            "baseline_decay": 0.9,  # REINFORCE's moving-average baseline
            "normalize_rewards": False,  # standardize with running statistics first
            "aggregation": "sequence_mean",  # sequence_mean | token_mean | constant
            "clip_eps_low": 0.2,
            "clip_eps_high": 0.2,
            "kl_coef": 0.04,  # β; 0 = no reference term
            "kl_estimator": "k3",  # k1 (only with kl_in_reward) | k2 | k3
            "kl_in_reward": False,  # r − β Σ_t KL_t instead of a loss term
            "entropy_coef": 0.0,
            "num_epochs": 1,
            "num_minibatches": 1,
            "dynamic_sampling": False,  # DAPO: train only on groups with reward variance
            "max_sampling_rounds": 3,  # dynamic sampling draws at most this many rounds
            "overlong_buffer": 0,  # DAPO's L_c; 0 = no over-long penalty
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the ``policy_gradient`` section with the sampling and reward it uses; raises
    ``ConfigError`` naming the field."""
    s, sampling = config.policy_gradient, config.sampling
    choices = {
        "estimator": pg.ESTIMATORS,
        "advantage_scale": pg.SCALES,
        "aggregation": pg.AGGREGATIONS,
        "kl_estimator": pg.KL_ESTIMATORS,
    }
    positive = ("num_epochs", "num_minibatches", "max_sampling_rounds")
    non_negative = ("advantage_eps", "clip_eps_low", "clip_eps_high", "kl_coef", "entropy_coef")
    non_negative += ("overlong_buffer",)
    at_least = {**dict.fromkeys(positive, 1), **dict.fromkeys(non_negative, 0)}
    check_fields(s, "policy_gradient", choices=choices, at_least=at_least)
    require(
        not (s.kl_estimator == "k1" and s.kl_coef > 0 and not s.kl_in_reward),
        "policy_gradient.kl_estimator",
        "k1 in the loss has zero expected gradient (E_π[∇ log π] = 0): it regularizes nothing; "
        "use k3 (or k2) in the loss, or k1 with kl_in_reward=True",
    )
    check_reward(config)
    needs_group = s.estimator in ("grpo", "rloo") or s.dynamic_sampling
    require(
        sampling.group_size >= (2 if needs_group else 1),
        "sampling.group_size",
        f"must be >= 2 for estimator={s.estimator!r}"
        + (" with dynamic sampling" if s.dynamic_sampling else "")
        + f", got {sampling.group_size}",
    )
    require(
        0 <= s.baseline_decay < 1,
        "policy_gradient.baseline_decay",
        f"must be in [0, 1), got {s.baseline_decay}",
    )
    require(
        s.clip_eps_low < 1, "policy_gradient.clip_eps_low", f"must be < 1, got {s.clip_eps_low}"
    )
    require(
        s.overlong_buffer <= sampling.max_new_tokens,
        "policy_gradient.overlong_buffer",
        f"{s.overlong_buffer} exceeds sampling.max_new_tokens={sampling.max_new_tokens}",
    )
    check_minibatches(config, s.num_minibatches, "policy_gradient.num_minibatches")
    prompts = prompts_per_iteration(config)
    require(
        config.data.num_train >= prompts,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than the {prompts} sampled per iteration",
    )


validate_paths = check_reward_paths  # a learned reward must be a reward-model export


def prompts_per_iteration(config: ml_collections.ConfigDict) -> int:
    """N, or N · max_sampling_rounds with dynamic sampling (one slice of N per round)."""
    s = config.policy_gradient
    return config.batch_size * (s.max_sampling_rounds if s.dynamic_sampling else 1)


# ----------------------------------------------------------------------------- pieces


@flax.struct.dataclass
class Rollout:
    """One iteration's training batch, all rows ``[B, ...]`` with ``B = N · G``: the samples
    (with π_old's log-probs), the frozen reference's log-probs of the same tokens (zeros
    without a KL term) and one advantage per response ``[B]``."""

    samples: rollout.Samples
    ref_logprobs: Array
    advantages: Array


def init_extras() -> dict[str, Any]:
    """The arrays of the algorithm state (checkpointed): running reward statistics
    (``normalize_rewards``) and REINFORCE's baseline."""
    return {
        "reward_stats": rewards_lib.RunningStats.create(),
        "baseline": rewards_lib.EmaBaseline.create(),
    }


def make_loss_fn(
    model_config: ModelConfig,
    settings: ml_collections.ConfigDict,
    sampling: rollout.SamplingSettings,
) -> Callable[[Any, Rollout, Array], tuple[Loss, dict[str, Array]]]:
    """``loss_fn(params, rollout, rng) -> (Loss, metrics)``: the clipped surrogate plus the KL
    and entropy terms of the module docstring, each aggregated the same way (one count).

    Metrics: ``policy_loss``, ``clip_fraction`` (response tokens where the clip is active),
    ``entropy`` (mean per response token, at temperature T), ``kl_loss`` with a KL loss term.
    """
    s, model = settings, Transformer(model_config)

    def loss_fn(params, batch: Rollout, rng):
        x = batch.samples
        logps, entropy = rollout.policy_logprobs(model, params, x, sampling.temperature, rng)

        def terms(per_token):
            return pg.aggregate_terms(
                per_token, x.response_mask, s.aggregation, sampling.max_new_tokens
            )

        per_token, clipped = pg.clipped_surrogate(
            logps, x.logprobs, batch.advantages, eps_low=s.clip_eps_low, eps_high=s.clip_eps_high
        )
        total, count = terms(per_token)
        safe = jnp.maximum(count, 1.0)
        metrics = {
            "policy_loss": total / safe,
            "clip_fraction": masked_mean(clipped, x.response_mask),
            "entropy": masked_mean(entropy, x.response_mask),
        }
        if s.kl_coef and not s.kl_in_reward:
            kl_total, _ = terms(pg.kl_estimate(logps, batch.ref_logprobs, s.kl_estimator))
            metrics["kl_loss"] = kl_total / safe
            total = total + s.kl_coef * kl_total
        if s.entropy_coef:
            total = total - s.entropy_coef * terms(entropy)[0]
        return Loss(total, count), metrics

    return loss_fn


# ----------------------------------------------------------------------------- iteration


def make_rollout(model_config: ModelConfig, config: ml_collections.ConfigDict):
    """``collect(params, reference, extras, batch, source, rng) -> (Rollout, extras,
    metrics)``: the rollout stages of one iteration, pure (jit it, or compose it).

    ``batch`` holds ``prompts_per_iteration`` prompts (``prompt_ids``/``prompt_mask``);
    ``extras`` (running reward statistics, REINFORCE's baseline) come back updated. Metrics:
    ``reward_mean``/``reward_std`` (the reward source plus any over-long penalty, over the
    trained responses), ``response_length_mean``, ``groups_with_variance`` (fraction of all
    drawn groups whose rewards differ); with dynamic sampling ``fill_rate`` and
    ``sampling_rounds``; with a KL term ``kl`` (mean Σ_t log π_old − log π_ref per response);
    with ReMax ``greedy_reward_mean``; with user reward functions each one's
    ``train/reward/<name>_mean``.
    """
    s = config.policy_gradient
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    num_prompts, group = config.batch_size, sampling.group_size
    overlong = rewards_lib.overlong(sampling.max_new_tokens, s.overlong_buffer)

    def collect(params, reference, extras, batch, source, rng):
        extras = dict(extras)
        if s.overlong_buffer:
            source = rewards_lib.weighted_sum([(1.0, source), (1.0, overlong)])

        def draw(round_index):
            take = lambda x: jax.lax.dynamic_slice_in_dim(x, round_index * num_prompts, num_prompts)
            samples = rollout.sample(
                model_config,
                params,
                take(batch["prompt_ids"]),
                take(batch["prompt_mask"]),
                rng=jax.random.fold_in(rng, round_index),
                settings=sampling,
            )
            scores, parts = rollout.score_parts(source, samples)
            return (samples, parts), scores  # select_groups keeps any pytree of rows

        if s.dynamic_sampling:
            (samples, parts), scores, metrics = rollout.select_groups(
                draw, num_groups=num_prompts, group_size=group, max_rounds=s.max_sampling_rounds
            )
        else:
            (samples, parts), scores = draw(0)
            metrics = {}
            if group > 1:
                metrics["groups_with_variance"] = rollout.group_has_variance(scores, group).mean()
        trained = (samples.lengths > 0).astype(jnp.float32)  # rows holding a response
        mean = masked_mean(scores, trained)
        metrics["reward_mean"] = mean
        metrics["reward_std"] = jnp.sqrt(masked_mean((scores - mean) ** 2, trained))
        metrics["response_length_mean"] = masked_mean(samples.lengths.astype(jnp.float32), trained)
        metrics.update(rollout.part_means(parts, trained))  # each user reward function's mean

        rewards, ref_logprobs = scores, jnp.zeros_like(samples.logprobs)
        if s.kl_coef:
            ref_logprobs = rollout.reference_logprobs(
                model_config, reference, samples, sampling.temperature
            )
            metrics["kl"] = masked_mean(rollout.sequence_kl(samples, ref_logprobs), trained)
            if s.kl_in_reward:
                kl_bt = pg.kl_estimate(samples.logprobs, ref_logprobs, s.kl_estimator)
                rewards = pg.kl_penalized_rewards(rewards, kl_bt, samples.response_mask, s.kl_coef)
        if s.normalize_rewards:
            extras["reward_stats"], rewards = rewards_lib.normalize(
                extras["reward_stats"], rewards, trained
            )
        greedy_rewards = None
        if s.estimator == "remax":
            first = lambda x: x[::group]  # each group's prompt
            greedy = rollout.sample(
                model_config,
                params,
                first(samples.prompt_ids),
                first(samples.prompt_mask),
                rng=None,
                settings=sampling,
                greedy=True,
            )
            greedy_scores = rollout.score(source, greedy)
            metrics["greedy_reward_mean"] = greedy_scores.mean()
            greedy_rewards = jnp.repeat(greedy_scores, group)
            if s.normalize_rewards:  # the baseline in the same units as the rewards
                stats = extras["reward_stats"]
                greedy_rewards = (greedy_rewards - stats.mean) / jnp.sqrt(stats.variance + 1e-8)
        advantages = pg.advantages(
            s.estimator,
            rewards,
            group,
            scale=s.advantage_scale,
            eps=s.advantage_eps,
            greedy_rewards=greedy_rewards,
            baseline=extras["baseline"].estimate,
        )
        extras["baseline"] = extras["baseline"].update(rewards, s.baseline_decay, trained)
        return Rollout(samples, ref_logprobs, advantages * trained), extras, metrics

    return collect


def make_iteration(
    model_config: ModelConfig,
    config: ml_collections.ConfigDict,
    optimizer,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedule=None,
):
    """The jitted ``step(state, prompt batch, reward source) -> (state, metrics)``: the rollout
    (``make_rollout``) with the current policy, then its ``num_epochs × num_minibatches``
    updates. ``state.step_rng()`` is split into a sampling and an update stream."""
    s = config.policy_gradient
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    collect = make_rollout(model_config, config)
    update = make_update(
        make_loss_fn(model_config, s, sampling),
        optimizer,
        shardings.models["policy"],
        num_epochs=s.num_epochs,
        num_minibatches=s.num_minibatches,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )

    def iteration(state: TrainState, batch: dict[str, Array], source: Any):
        policy = state.models["policy"]
        sample_key, update_key = jax.random.split(state.step_rng())
        data, extras, metrics = collect(
            policy.params, state.frozen["reference"], state.extras, batch, source, sample_key
        )
        policy, update_metrics = update(policy, data, update_key)
        state = state.with_model("policy", policy).replace(step=state.step + 1, extras=extras)
        return state, {**metrics, **update_metrics}

    return jit_step(iteration, shardings, mesh, num_args=1)


def build(config: ml_collections.ConfigDict) -> setup_lib.Built:
    """The initial state (policy, frozen reference, extras), the reward source, the prompt
    iterator and the iteration ``step(state, prompt batch) -> (state, metrics)``."""
    s = config.policy_gradient
    setup = setup_lib.setup(config)
    updates_per_iteration = s.num_epochs * s.num_minibatches
    optimizer, schedule = optimizer_from_config(
        config.optimizer, config.num_steps * updates_per_iteration
    )
    state, shardings = setup_lib.policy_state(setup, optimizer, extras=init_extras)
    name, source = setup_lib.reward_source(setup)
    iteration = make_iteration(
        setup.model_config, config, optimizer, shardings, setup.mesh, schedule=schedule
    )
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, config.data.num_train, config.data.seed
    )
    batches = BatchIterator(
        prompts,
        prompts_per_iteration(config),
        seed=config.seed,
        prompt_buckets=config.data.prompt_buckets,
    )
    step = lambda state, batch: iteration(state, batch, source)
    return setup_lib.Built(setup, state, shardings, step, batches, name, source)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs policy-gradient RL; returns the final policy evaluation (``eval/reward/gold_mean``
    ± stderr against the reference's ``eval/ref_reward/gold_mean``, KL, win rate)."""
    return setup_lib.train_policy(build(config), workdir, config.policy_gradient.estimator)
