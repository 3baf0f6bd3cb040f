"""Rejection-sampling fine-tuning through the shared loop: RAFT (Dong et al. 2023) and ReST
(Gulcehre et al. 2023) (SURVEY §4).

Rounds of ``steps_per_round`` steps. A round samples from one fixed policy π_k, the iterate at
the round start, kept in ``state.frozen["sampler"]`` (set by a ``lax.cond`` inside the jitted
step, as SPIN sets its reference), so that a run resumed mid-round continues it exactly. Every
step, for its ``batch_size`` prompts x_i:

1. draws N = ``sampling.group_size`` responses y_i1 … y_iN ∼ π_k(· | x_i);
2. scores them with the reward source (``config.reward``: gold, verifier, learned reward model
   or ensemble, passed in as an argument);
3. keeps each prompt's ``keep_top_k`` best responses (RAFT), and of those only the ones with
   r ≥ ``min_reward`` when it is set (ReST's Improve-step threshold): the kept set K;
4. takes ``num_epochs`` SFT updates on them, the token mean over the kept responses

       L(θ) = −Σ_{(i,j) ∈ K} Σ_t log π_θ(y_ijt | x_i, y_ij<t) / Σ_{(i,j) ∈ K} |y_ij|.

Drawing a round's samples batch by batch from the fixed π_k has the distribution of ReST's Grow
step (a dataset drawn from π_k at the round start) without storing it; with
``steps_per_round=1`` every step samples from the current policy, as RAFT's stages do.
Evaluation: the policy against the initial policy (``state.frozen["reference"]``): gold and
learned reward, KL, win rate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import rollout
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms import sft
from irl_jax.config import check_fields, check_reward, check_reward_paths, require
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig
from irl_jax.objectives.logprobs import masked_mean
from irl_jax.train import TrainState, jit_step, make_update, optimizer_from_config

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
    """``config.raft``: which samples are kept and how long a round lasts (the samples follow
    ``config.sampling``: ``group_size`` is N, the responses per prompt)."""
    return ml_collections.ConfigDict(
        {
            "keep_top_k": 1,  # responses kept per prompt (the best k of sampling.group_size)
            # ReST's threshold: of those, keep only rewards >= min_reward (None: no threshold).
            "min_reward": ml_collections.FieldReference(None, field_type=float),
            "steps_per_round": 1,  # the sampling policy := the current one every this many steps
            "num_epochs": 1,  # SFT updates on each step's kept responses
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.raft`` with the sampling and reward it uses; raises ``ConfigError``
    naming the field."""
    s = config.raft
    positive = ("keep_top_k", "steps_per_round", "num_epochs")
    check_fields(s, "raft", at_least=dict.fromkeys(positive, 1))
    require(
        s.keep_top_k <= config.sampling.group_size,
        "raft.keep_top_k",
        f"{s.keep_top_k} exceeds the responses per prompt, sampling.group_size="
        f"{config.sampling.group_size}",
    )
    check_reward(config)
    require(
        config.data.num_train >= config.batch_size,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than batch_size={config.batch_size}",
    )


validate_paths = check_reward_paths  # a learned reward must be a reward-model export


# ----------------------------------------------------------------------------- pieces


def select_top_k(
    samples: rollout.Samples,
    rewards: Array,
    group_size: int,
    k: int,
    min_reward: float | None = None,
) -> tuple[rollout.Samples, Array, Array]:
    """Each prompt's ``k`` highest-reward responses (of its ``group_size`` consecutive rows;
    equal rewards: the first), best first.

    Returns:
      ``(kept samples [B/G · k, ...], kept rewards [B/G · k], keep [B/G · k])``: ``keep`` is 1,
      or with ``min_reward`` 1 where the reward is at least ``min_reward``.
    """
    top, index = jax.lax.top_k(rewards.reshape(-1, group_size), k)
    rows = (jnp.arange(top.shape[0])[:, None] * group_size + index).reshape(-1)
    kept = jax.tree.map(lambda x: x[rows], samples)
    top = top.reshape(-1)
    keep = jnp.ones_like(top) if min_reward is None else (top >= min_reward).astype(top.dtype)
    return kept, top, keep


def make_raft_step(
    model_config: ModelConfig,
    config: ml_collections.ConfigDict,
    optimizer,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedule=None,
):
    """The jitted ``step(state, prompt batch, reward source) -> (state, metrics)``: at a round
    start π_k := π_θ, then sample, score, keep the top k and take the SFT updates.

    Metrics: ``reward_mean`` (all samples), ``kept_reward_mean`` and ``kept_length_mean`` (over
    the kept responses), ``kept_fraction`` (of the top k, after ``min_reward``) and the SFT
    update's ``loss``, ``tokens``, ``grad_norm``.
    """
    s = config.raft
    settings = rollout.SamplingSettings.from_config(config.sampling)
    update = make_update(
        sft.make_loss_fn(model_config),
        optimizer,
        shardings.models["policy"],
        num_epochs=s.num_epochs,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )

    def step(state: TrainState, batch: dict[str, Array], source: Any):
        policy, frozen = state.models["policy"], dict(state.frozen)
        sampler = policy.params
        if s.steps_per_round > 1:
            sampler = jax.lax.cond(
                state.step % s.steps_per_round == 0,
                lambda: policy.params,
                lambda: state.frozen["sampler"],
            )
            frozen["sampler"] = sampler
        sample_key, update_key = jax.random.split(state.step_rng())
        samples = rollout.sample(
            model_config,
            sampler,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=sample_key,
            settings=settings,
        )
        rewards, parts = rollout.score_parts(source, samples)
        kept, kept_rewards, keep = select_top_k(
            samples, rewards, settings.group_size, s.keep_top_k, s.min_reward
        )
        policy, metrics = update(policy, rollout.as_sequences(kept, keep), update_key, {})
        metrics.update(
            reward_mean=rewards.mean(),
            kept_reward_mean=masked_mean(kept_rewards, keep),
            kept_length_mean=masked_mean(kept.lengths.astype(jnp.float32), keep),
            kept_fraction=keep.mean(),
            **rollout.part_means(parts),
        )
        state = state.with_model("policy", policy)
        return state.replace(step=state.step + 1, frozen=frozen), metrics

    return jit_step(step, shardings, mesh, num_args=1)


def build(config: ml_collections.ConfigDict, devices: list | None = None) -> setup_lib.Built:
    """The initial state (policy, frozen initial policy as ``reference``, and the round's
    ``sampler`` when rounds last more than one step), the reward source, the prompt iterator
    and ``step(state, prompt batch) -> (state, metrics)``."""
    s = config.raft
    setup = setup_lib.setup(config, devices=devices)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps * s.num_epochs)
    frozen = ("reference", "sampler") if s.steps_per_round > 1 else ("reference",)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=frozen)
    name, source = setup_lib.reward_source(setup)
    raft_step = make_raft_step(
        setup.model_config, config, optimizer, shardings, setup.mesh, schedule=schedule
    )
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, config.data.num_train, config.data.seed
    )
    batches = BatchIterator(prompts, config.batch_size, seed=config.seed)
    step = lambda state, batch: raft_step(state, batch, source)
    return setup_lib.Built(setup, state, shardings, step, batches, name, source)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs RAFT / ReST; returns the final policy evaluation against the initial policy."""
    return setup_lib.train_policy(build(config), workdir, "raft")
