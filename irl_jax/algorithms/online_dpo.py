"""Online / iterative DPO through the shared loop (SURVEY §4): DPO-family steps on pairs that
the current policy samples and a reward source labels.

One loop step is one jitted function:

1. **Reference update** (TR-DPO, Gorbatovski et al. 2024): every M = ``reference_update_every``
   steps, π_ref ← α π_θ + (1 − α) π_ref in parameter space, α = ``reference_mixup`` (α = 1:
   the hard update π_ref := π_θ; α < 1: the soft update, as TRL's ``ref_model_mixup_alpha``
   every ``ref_model_sync_steps``). M = 0 keeps the initial (SFT) policy. A ``lax.cond`` in the
   step, with π_ref kept in ``state.frozen["reference"]``, so resuming is exact (SPIN's
   pattern).
2. **Sampling**: K = ``sampling.group_size`` responses to each of ``batch_size`` prompts from
   the current π_θ (on-policy; Guo et al. 2024's online AI feedback with K = 2).
3. **Labels**: the reward source (``config.reward``: a learned reward model or ensemble, the
   gold reward, a verifier) scores them; each prompt's best response is chosen and its worst
   rejected (the best-vs-worst rule of iterative DPO, Xiong et al. 2024). A prompt whose K
   rewards are all equal states no preference and gets weight 0.
4. **Update**: ``num_epochs`` steps of the pairwise loss of ``online_dpo.loss`` (``dpo``: −log
   σ(β[log π_θ/π_ref (y_w) − log π_θ/π_ref (y_l)])), the mean over the weighted pairs, with
   π_ref's log-probs from one stop-gradient forward.

Evaluation: the policy against the initial policy (``state.frozen["initial"]`` when the
reference moves, else the reference): gold and learned reward, KL, win rate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import rollout
from irl_jax.algorithms import direct
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms.implicit_reward import (
    PAIR,
    PAIRWISE_LOSSES,
    pair_logps,
    pair_tokens,
    pairwise_loss,
    uses_reference,
)
from irl_jax.config import check_reward, check_reward_paths, require
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives.logprobs import masked_mean
from irl_jax.train import Loss, TrainState, jit_step, make_update, optimizer_from_config

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
    """``config.online_dpo``: the pairwise loss (``direct.loss_options``), the reference
    schedule and the passes over each step's pairs (K = ``sampling.group_size``)."""
    c = direct.loss_options()
    c.reference_update_every = 0  # M: steps between reference updates; 0 = the fixed SFT policy
    c.reference_mixup = 1.0  # α of π_ref ← α π_θ + (1 − α) π_ref; 1 = a hard refresh
    c.num_epochs = 1  # updates on each step's pairs
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.online_dpo`` with the sampling and reward it uses; raises
    ``ConfigError`` naming the field."""
    s = config.online_dpo
    direct.validate_loss_options(s, "online_dpo", PAIRWISE_LOSSES)
    every, alpha = s.reference_update_every, s.reference_mixup
    require(every >= 0, "online_dpo.reference_update_every", f"must be >= 0, got {every}")
    require(0 < alpha <= 1, "online_dpo.reference_mixup", f"must be in (0, 1], got {alpha}")
    require(
        every == 0 or uses_reference(s.loss),
        "online_dpo.reference_update_every",
        f"{s.loss!r} uses no reference policy to update; set it to 0",
    )
    require(s.num_epochs >= 1, "online_dpo.num_epochs", f"must be >= 1, got {s.num_epochs}")
    require(
        config.sampling.group_size >= 2,
        "sampling.group_size",
        f"a pair needs K >= 2 responses per prompt, got {config.sampling.group_size}",
    )
    check_reward(config)
    require(
        config.data.num_train >= config.batch_size,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than batch_size={config.batch_size}",
    )


validate_paths = check_reward_paths  # a learned reward must be a reward-model export


# ----------------------------------------------------------------------------- pieces


def best_vs_worst(
    samples: rollout.Samples, rewards: Array, group_size: int
) -> tuple[dict[str, Array], Array]:
    """Preference pairs from each prompt's ``group_size`` consecutive responses: the highest
    reward chosen, the lowest rejected (equal rewards: the first).

    Returns:
      ``(pairs, margins)``: ``chosen_*``/``rejected_*`` training rows (``rollout.as_sequences``)
      and ``weight`` ``[B/G]`` (0 where the group's rewards are all equal: no preference);
      the reward margins r_w − r_l ``[B/G]``.
    """
    grouped = rewards.reshape(-1, group_size)
    offsets = jnp.arange(grouped.shape[0]) * group_size
    pairs = {}
    for prefix, index in zip(PAIR, (jnp.argmax(grouped, 1), jnp.argmin(grouped, 1))):
        rows = jax.tree.map(lambda x, i=index: x[offsets + i], samples)
        pairs.update({prefix + k: v for k, v in rollout.as_sequences(rows).items()})
    pairs["weight"] = rollout.group_has_variance(rewards, group_size).astype(jnp.float32)
    return pairs, grouped.max(1) - grouped.min(1)


def make_loss_fn(model_config: ModelConfig, section: ml_collections.ConfigDict):
    """``loss_fn(params, pairs, rng) -> (Loss, metrics)``: the pairwise loss of
    ``section.loss`` (``implicit_reward.pairwise_loss``), the mean over pairs weighted by
    ``weight``; the reference log-probs are the pairs' ``ref_*_logps`` columns."""
    model = Transformer(model_config)

    def loss_fn(params, batch, rng):
        logps = pair_logps(model, params, batch, rng=rng)
        ref = tuple(batch[f"ref_{p}logps"] for p in PAIR) if uses_reference(section.loss) else None
        losses, metrics = pairwise_loss(section, logps, ref, pair_tokens(batch))
        weight = batch["weight"]
        metrics = {name: masked_mean(value, weight) for name, value in metrics.items()}
        return Loss.mean(losses, weight), metrics

    return loss_fn


def mixed_reference(policy: Any, reference: Any, alpha: float) -> Any:
    """α π_θ + (1 − α) π_ref, leaf by leaf (π_θ itself when α = 1)."""
    if alpha == 1.0:
        return policy
    return jax.tree.map(lambda p, r: alpha * p + (1.0 - alpha) * r, policy, reference)


def make_online_step(
    model_config: ModelConfig,
    config: ml_collections.ConfigDict,
    optimizer,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedule=None,
):
    """The jitted ``step(state, prompt batch, reward source) -> (state, metrics)`` of the module
    docstring.

    Metrics: the loss's (``accuracy``, ``reward_margin``, … over the weighted pairs),
    ``reward_mean`` (all samples), ``label_margin`` (mean r_w − r_l of the weighted pairs),
    ``pair_fraction`` (prompts with a preference), ``loss``, ``grad_norm``.
    """
    s = config.online_dpo
    settings = rollout.SamplingSettings.from_config(config.sampling)
    model = Transformer(model_config)
    update = make_update(
        make_loss_fn(model_config, s),
        optimizer,
        shardings.models["policy"],
        num_epochs=s.num_epochs,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )

    def step(state: TrainState, batch: dict[str, Array], source: Any):
        policy, frozen = state.models["policy"], dict(state.frozen)
        if s.reference_update_every:
            reference = state.frozen["reference"]
            frozen["reference"] = jax.lax.cond(
                (state.step % s.reference_update_every == 0) & (state.step > 0),
                lambda: mixed_reference(policy.params, reference, s.reference_mixup),
                lambda: reference,
            )
        sample_key, update_key = jax.random.split(state.step_rng())
        samples = rollout.sample(
            model_config,
            policy.params,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=sample_key,
            settings=settings,
        )
        rewards, parts = rollout.score_parts(source, samples)
        pairs, margins = best_vs_worst(samples, rewards, settings.group_size)
        if uses_reference(s.loss):
            ref = jax.lax.stop_gradient(pair_logps(model, frozen["reference"], pairs))
            pairs.update({f"ref_{p}logps": logps for p, logps in zip(PAIR, ref)})
        policy, metrics = update(policy, pairs, update_key)
        metrics.update(
            reward_mean=rewards.mean(),
            label_margin=masked_mean(margins, pairs["weight"]),
            pair_fraction=pairs["weight"].mean(),
            **rollout.part_means(parts),
        )
        state = state.with_model("policy", policy)
        return state.replace(step=state.step + 1, frozen=frozen), metrics

    return jit_step(step, shardings, mesh, num_args=1)


def build(config: ml_collections.ConfigDict, devices: list | None = None) -> setup_lib.Built:
    """The initial state (policy; frozen ``reference`` = the initial policy, plus a separate
    ``initial`` copy for the evaluation when the reference moves), the reward source, the
    prompt iterator and ``step(state, prompt batch) -> (state, metrics)``."""
    s = config.online_dpo
    setup = setup_lib.setup(config, devices=devices)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps * s.num_epochs)
    frozen = ("reference", "initial") if s.reference_update_every else ("reference",)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=frozen)
    name, source = setup_lib.reward_source(setup)
    online_step = make_online_step(
        setup.model_config, config, optimizer, shardings, setup.mesh, schedule=schedule
    )
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, config.data.num_train, config.data.seed
    )
    batches = BatchIterator(prompts, config.batch_size, seed=config.seed)
    step = lambda state, batch: online_step(state, batch, source)
    return setup_lib.Built(setup, state, shardings, step, batches, name, source)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs online DPO; returns the final policy evaluation against the initial policy (the
    frozen ``initial`` model where the reference is refreshed during training)."""
    description = f"online_{config.online_dpo.loss}"
    return setup_lib.train_policy(build(config), workdir, description, baseline="initial")
