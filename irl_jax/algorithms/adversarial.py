"""Adversarial inverse RL from demonstrations alone (SURVEY §2): GAIL, AIRL and FAIRL, each a
discriminator trained against the policy in the same run, its logit the policy's reward.

Two trained models in one state — the policy π_θ and the discriminator D_φ (a decoder and a
score head, ``RewardModel``; ``TokenRewardModel`` for token-level AIRL; its own optimizer
``config.adversarial.discriminator.optimizer``) — plus the frozen reference π_ref (the initial
policy: the KL leash), a replay buffer of past samples and running reward statistics in
``extras`` (the discriminator's model, loss and buffer: ``irl_jax.algorithms.discriminator``).
Two resumable data streams: ``demos`` (the demonstrations) and ``prompts``. One iteration is one
jitted step:

    sample y ~ π_θ(·|x), G per prompt (``config.sampling``)
    → k = ``discriminator.steps`` updates of D_φ on ½ BCE(demos → 1) + ½ BCE(samples → 0) over
      (a demonstration batch, the fresh samples [+ a batch of replayed past samples]), plus
      (γ/2) E_demo ‖∇_e h‖² (R1 in embedding space) when ``gradient_penalty`` = γ > 0
    → relabel: h = logit of the updated D_φ on the fresh samples (its params are part of the
      step's state argument, never constants of the executable), r = ``policy_reward(h,
      divergence)``: airl r = h, gail r = softplus(h), fairl r = −h̄ e^h̄ (h̄ = clip(h, ±h_max))
    → running standardization of r (``normalize_rewards``) → critic-free advantages
      (``estimator``: grpo | rloo | reinforce) → ``num_epochs × num_minibatches`` updates of
      the clipped surrogate with the KL to π_ref (``policy_gradient.make_loss_fn``: the same
      loss and settings as the GRPO family).

Token-level AIRL (``token_level=True``): D_t = exp f_t / (exp f_t + π(y_t|·)) with f_t the
discriminator's score of token t, so the sequence logit is h = Σ_t (f_t − log π_old(y_t|·)), the
behaviour policy's log-probs taken from the rollout (demonstrations and replayed samples are
scored by the current policy, teacher-forced); with a critic-free estimator the response's reward
is Σ_t r_t = h.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irl_jax import rewards as rewards_lib
from irl_jax import rollout
from irl_jax.algorithms import discriminator as disc_lib
from irl_jax.algorithms import policy_gradient as pg_alg
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import (
    check_fields,
    check_minibatches,
    check_optimizer,
    optimizer_config,
    require,
)
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.models import source as model_source
from irl_jax.objectives import adversarial as adv
from irl_jax.objectives import policy_gradient as pg
from irl_jax.objectives.logprobs import next_token_logprobs
from irl_jax.train import (
    TrainState,
    jit_step,
    make_update,
    optimizer_from_config,
)

Array = jax.Array
ESTIMATORS = ("grpo", "rloo", "reinforce")
DISCRIMINATOR_INITS = ("policy", "fresh")
# The GRPO-family settings the policy update reads (``policy_gradient.make_loss_fn``) and the
# advantage estimators; DAPO's dynamic sampling and over-long penalty are not part of it.
POLICY_FIELDS = (
    "estimator",
    "advantage_scale",
    "advantage_eps",
    "baseline_decay",
    "normalize_rewards",
    "aggregation",
    "clip_eps_low",
    "clip_eps_high",
    "kl_coef",
    "kl_estimator",
    "kl_in_reward",
    "entropy_coef",
    "num_epochs",
    "num_minibatches",
)


def default_config() -> ml_collections.ConfigDict:
    """``config.adversarial``: the divergence, the discriminator and the policy update (the
    GRPO family's fields, with running reward normalization on: the logit's scale drifts as D
    trains). ``config.batch_size`` prompts per iteration, ``sampling.group_size`` responses
    each; ``num_steps`` counts iterations."""
    policy = pg_alg.default_config()
    c = ml_collections.ConfigDict({k: policy[k] for k in POLICY_FIELDS})
    c.normalize_rewards = True
    c.kl_coef = 0.05
    c.update(
        {
            "divergence": "airl",  # airl (reverse KL) | gail (Jensen–Shannon) | fairl (forward KL)
            "h_max": 10.0,  # FAIRL's clip of h before the exponential
            "token_level": False,  # AIRL's D = exp f / (exp f + π) per token: r_t = f_t − log π
            "num_demonstrations": 0,  # demonstrations used (0: data.num_train)
            "demo_batch_size": 0,  # demonstrations per discriminator step (0: B · G)
            "discriminator": {
                "init": "policy",  # policy (its backbone, e.g. the SFT export) | fresh
                "path": "",  # a Hugging Face directory to start from instead
                "optimizer": optimizer_config(1e-4),
                "steps": 1,  # k discriminator updates per iteration
                "label_smoothing": 0.0,
                "gradient_penalty": 0.0,  # γ of (γ/2) E_demo ‖∇_e h‖² (embedding space)
                "replay_size": 0,  # past samples kept (rows, a multiple of B · G); 0 = none
                "replay_batch_size": 0,  # replayed samples per discriminator step
            },
        }
    )
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.adversarial`` with the sampling it uses; raises ``ConfigError`` naming
    the field."""
    s, d = config.adversarial, config.adversarial.discriminator
    check_fields(
        s,
        "adversarial",
        choices={
            "divergence": adv.DIVERGENCES,
            "estimator": ESTIMATORS,
            "advantage_scale": pg.SCALES,
            "aggregation": pg.AGGREGATIONS,
            "kl_estimator": pg.KL_ESTIMATORS,
        },
        at_least={
            **dict.fromkeys(("num_epochs", "num_minibatches"), 1),
            **dict.fromkeys(("num_demonstrations", "demo_batch_size", "kl_coef"), 0),
            **dict.fromkeys(("clip_eps_low", "clip_eps_high", "entropy_coef", "h_max"), 0),
        },
    )
    check_fields(
        d,
        "adversarial.discriminator",
        choices={"init": DISCRIMINATOR_INITS},
        at_least={"steps": 1, "gradient_penalty": 0, "replay_size": 0, "replay_batch_size": 0},
    )
    check_optimizer(d.optimizer, "adversarial.discriminator.optimizer")
    require(
        0 <= d.label_smoothing < 0.5,
        "adversarial.discriminator.label_smoothing",
        f"must be in [0, 0.5), got {d.label_smoothing}",
    )
    require(
        not (s.kl_estimator == "k1" and s.kl_coef > 0 and not s.kl_in_reward),
        "adversarial.kl_estimator",
        "k1 in the loss has zero expected gradient; use k3 (or k2), or kl_in_reward=True",
    )
    group = config.sampling.group_size
    require(
        group >= (2 if s.estimator in ("grpo", "rloo") else 1),
        "sampling.group_size",
        f"must be >= 2 for estimator={s.estimator!r}, got {group}",
    )
    rows = config.batch_size * group
    require(
        d.replay_size % rows == 0,
        "adversarial.discriminator.replay_size",
        f"must be a multiple of batch_size · group_size = {rows}, got {d.replay_size}",
    )
    require(
        bool(d.replay_size) == bool(d.replay_batch_size),
        "adversarial.discriminator.replay_batch_size",
        "set both replay_size and replay_batch_size (or neither)",
    )
    check_minibatches(config, s.num_minibatches, "adversarial.num_minibatches")
    require(
        config.data.num_train >= config.batch_size,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than batch_size={config.batch_size}",
    )
    require(
        num_demonstrations(config) >= demo_batch_size(config),
        "adversarial.num_demonstrations",
        f"{num_demonstrations(config)} demonstrations, fewer than the "
        f"{demo_batch_size(config)} of a discriminator step",
    )


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """An explicit discriminator directory must exist."""
    path = config.adversarial.discriminator.path
    require(
        not path or model_source.is_hf_dir(path),
        "adversarial.discriminator.path",
        f"{path!r} is not a Hugging Face directory with a config.json",
    )


def num_demonstrations(config: ml_collections.ConfigDict) -> int:
    return config.adversarial.num_demonstrations or config.data.num_train


def demo_batch_size(config: ml_collections.ConfigDict) -> int:
    rows = config.batch_size * config.sampling.group_size
    return config.adversarial.demo_batch_size or rows


# ----------------------------------------------------------------------------- state


def init_extras(config: ml_collections.ConfigDict, sample_length: int) -> Callable[[], Any]:
    """``() -> extras``: running reward statistics, REINFORCE's baseline and the replay buffer
    (``replay_size`` rows of training sequences of ``sample_length`` tokens, and ``count``, the
    samples pushed so far; slot = count mod size)."""
    size = config.adversarial.discriminator.replay_size

    def extras():
        rows = {
            name: jnp.zeros((size, sample_length), jnp.int32)
            for name in ("input_ids", "attention_mask", "loss_mask")
        }
        return {**pg_alg.init_extras(), "replay": {"rows": rows, "count": jnp.int32(0)}}

    return extras


# ----------------------------------------------------------------------------- iteration


def teacher_forced(model: Transformer, params: Any, rows: dict[str, Array]) -> Array:
    """``[B, L]`` log π(x_t | x_<t) of training rows under ``params`` (no gradient), 0 off the
    ``loss_mask``."""
    logits = model.apply({"params": params}, rows["input_ids"], rows["attention_mask"]).logits
    logps = next_token_logprobs(logits, rows["input_ids"])
    return jax.lax.stop_gradient(logps * rows["loss_mask"])


def make_discriminator_rows(model_config: ModelConfig, config: ml_collections.ConfigDict):
    """``rows(policy_params, samples, demos, replay, rng) -> (batch, replay, metrics)``: the
    discriminator's batch — ``demos`` and, as ``policy``, the fresh samples plus
    ``replay_batch_size`` replayed ones (each with a ``weight``) — and the buffer with the fresh
    samples pushed. Token-level AIRL adds the behaviour ``logprobs``: the rollout's for fresh
    samples, the current policy's (teacher-forced) for demonstrations and replayed samples."""
    s, d = config.adversarial, config.adversarial.discriminator
    model = Transformer(model_config)

    def rows(policy_params, samples: rollout.Samples, demos, replay, rng):
        fresh = rollout.as_sequences(samples)
        demos = {k: demos[k] for k in ("input_ids", "attention_mask", "loss_mask")}
        if s.token_level:
            prompt = jnp.zeros_like(samples.prompt_ids, jnp.float32)
            fresh["logprobs"] = jnp.concatenate([prompt, samples.logprobs], axis=1)
            demos["logprobs"] = teacher_forced(model, policy_params, demos)
        policy = {**fresh, "weight": jnp.ones(samples.lengths.shape, jnp.float32)}
        metrics = {}
        if d.replay_size:
            replayed, weight = disc_lib.replay_draw(replay, d.replay_batch_size, rng)
            if s.token_level:
                replayed["logprobs"] = teacher_forced(model, policy_params, replayed)
            replayed["weight"] = weight
            policy = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), policy, replayed)
            replay = disc_lib.replay_push(replay, fresh)
            metrics["replay_fill"] = jnp.minimum(replay["count"], d.replay_size) / d.replay_size
        return {"demos": demos, "policy": policy}, replay, metrics

    return rows


def make_policy_batch(model_config: ModelConfig, config: ml_collections.ConfigDict):
    """``batch(scores, samples, reference, extras) -> (Rollout, extras, metrics)``: the KL leash
    to the reference (in the loss, or in the reward with ``kl_in_reward``), running reward
    standardization and critic-free advantages of the relabelled samples (``extras``: the
    running statistics and REINFORCE's baseline come back updated). Metrics: ``kl`` (mean
    Σ_t log π_old − log π_ref per response) with a KL term."""
    s = config.adversarial
    sampling = rollout.SamplingSettings.from_config(config.sampling)

    def batch(scores, samples: rollout.Samples, reference, extras):
        extras, metrics = dict(extras), {}
        rewards, ref_logprobs = scores, jnp.zeros_like(samples.logprobs)
        if s.kl_coef:
            ref_logprobs = rollout.reference_logprobs(
                model_config, reference, samples, sampling.temperature
            )
            metrics["kl"] = rollout.sequence_kl(samples, ref_logprobs).mean()
            if s.kl_in_reward:
                kl_bt = pg.kl_estimate(samples.logprobs, ref_logprobs, s.kl_estimator)
                rewards = pg.kl_penalized_rewards(rewards, kl_bt, samples.response_mask, s.kl_coef)
        if s.normalize_rewards:
            extras["reward_stats"], rewards = rewards_lib.normalize(extras["reward_stats"], rewards)
        advantages = pg.advantages(
            s.estimator,
            rewards,
            sampling.group_size,
            scale=s.advantage_scale,
            eps=s.advantage_eps,
            baseline=extras["baseline"].estimate,
        )
        extras["baseline"] = extras["baseline"].update(rewards, s.baseline_decay)
        return pg_alg.Rollout(samples, ref_logprobs, advantages), extras, metrics

    return batch


def make_iteration(
    model_config: ModelConfig,
    discriminator: nn.Module,
    config: ml_collections.ConfigDict,
    optimizers: tuple[Any, Any],
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedules: tuple[Any, Any] = (None, None),
):
    """The jitted ``step(state, {"demos": rows, "prompts": prompts}) -> (state, metrics)`` of the
    module docstring. Metrics: the discriminator's (``disc_loss``, ``disc_grad_norm``,
    accuracies and mean logits: means over its k updates; ``replay_fill``), ``h_sample_mean``
    (the updated D's logit on the fresh samples), ``reward_mean``/``reward_std`` (r before
    normalization), ``response_length_mean``, ``kl`` and the policy update's (``loss``,
    ``grad_norm``, ``policy_loss``, ``clip_fraction``, …)."""
    s, d = config.adversarial, config.adversarial.discriminator
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    discriminator_rows = make_discriminator_rows(model_config, config)
    policy_batch = make_policy_batch(model_config, config)
    logits = disc_lib.make_logits(discriminator, s.token_level)
    update_discriminator = make_update(
        disc_lib.make_discriminator_loss(discriminator, config, model_config.hidden_size),
        optimizers[1],
        shardings.models["discriminator"],
        num_epochs=d.steps,
        schedule=schedules[1],
    )
    update_policy = make_update(
        pg_alg.make_loss_fn(model_config, s, sampling),
        optimizers[0],
        shardings.models["policy"],
        num_epochs=s.num_epochs,
        num_minibatches=s.num_minibatches,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedules[0],
    )
    renamed = ("loss", "grad_norm", "learning_rate", "nonfinite_updates")

    def iteration(state: TrainState, batch: dict[str, dict[str, Array]]):
        policy, disc, extras = state.models["policy"], state.models["discriminator"], state.extras
        sample_key, replay_key, disc_key, update_key = jax.random.split(state.step_rng(), 4)
        prompts = batch["prompts"]
        samples = rollout.sample(
            model_config,
            policy.params,
            prompts["prompt_ids"],
            prompts["prompt_mask"],
            rng=sample_key,
            settings=sampling,
        )
        rows, replay, metrics = discriminator_rows(
            policy.params, samples, batch["demos"], extras["replay"], replay_key
        )
        disc, disc_metrics = update_discriminator(disc, rows, disc_key)
        metrics.update({f"disc_{k}" if k in renamed else k: v for k, v in disc_metrics.items()})
        fresh = jax.tree.map(lambda x: x[: samples.lengths.shape[0]], rows["policy"])
        h = logits(disc.params, fresh)  # the updated discriminator relabels the fresh samples
        scores = adv.policy_reward(h, s.divergence, h_max=s.h_max)
        data, extras, batch_metrics = policy_batch(
            scores, samples, state.frozen["reference"], {**extras, "replay": replay}
        )
        policy, policy_metrics = update_policy(policy, data, update_key)
        metrics.update(
            h_sample_mean=h.mean(),
            reward_mean=scores.mean(),
            reward_std=scores.std(),
            response_length_mean=samples.lengths.mean(dtype=jnp.float32),
            **batch_metrics,
            **policy_metrics,
        )
        state = state.with_model("policy", policy).with_model("discriminator", disc)
        return state.replace(step=state.step + 1, extras=extras), metrics

    return jit_step(iteration, shardings, mesh)


# ----------------------------------------------------------------------------- training


def build(config: ml_collections.ConfigDict, devices: list | None = None) -> setup_lib.Built:
    """The initial state (policy, discriminator, frozen reference, extras with the replay
    buffer), the two data streams (``demos`` and ``prompts``) and the jitted iteration, on a
    mesh over ``devices`` (default: all)."""
    s = config.adversarial
    setup = setup_lib.setup(config, devices=devices)
    policy_updates = config.num_steps * s.num_epochs * s.num_minibatches
    policy_optimizer, policy_schedule = optimizer_from_config(config.optimizer, policy_updates)
    disc_optimizer, disc_schedule = optimizer_from_config(
        s.discriminator.optimizer, config.num_steps * s.discriminator.steps
    )
    discriminator, disc_state = disc_lib.create_discriminator(setup, disc_optimizer)
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, config.data.num_train, config.data.seed
    )
    sample_length = prompts["prompt_ids"].shape[1] + config.sampling.max_new_tokens
    state, shardings = setup_lib.policy_state(
        setup,
        policy_optimizer,
        models={"discriminator": disc_state},
        extras=init_extras(config, sample_length),
    )
    demos = demonstration_arrays(setup, num_demonstrations(config))
    iteration = make_iteration(
        setup.model_config,
        discriminator,
        config,
        (policy_optimizer, disc_optimizer),
        shardings,
        setup.mesh,
        schedules=(policy_schedule, disc_schedule),
    )
    streams = {
        "demos": BatchIterator(demos, demo_batch_size(config), seed=config.seed + 1),
        "prompts": BatchIterator(prompts, config.batch_size, seed=config.seed),
    }
    # The reward is the discriminator's, inside the step: nothing to score in the evaluation.
    return setup_lib.Built(setup, state, shardings, iteration, streams, "discriminator")


def demonstration_arrays(setup: setup_lib.Setup, num: int) -> dict[str, np.ndarray]:
    """The first ``num`` training demonstrations as SFT rows: the synthetic task's
    ``demonstrations(num, data.seed)`` (those an SFT run with ``data.num_train = num`` trains
    on), or the first ``num`` rows of ``data.path``."""
    config, tokenizer = setup.config, setup.tokenizer
    if setup.task is None:
        rows = setup_lib.tokenize(config, tokenizer, config.data.path, "sft")
        return {k: v[:num] for k, v in rows.items()}
    demos = setup.task.demonstrations(num, config.data.seed)
    return setup_lib.tokenize(config, tokenizer, demos, "sft")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs adversarial IRL; returns the final policy evaluation (gold reward against the
    reference's, KL, win rate, the divergences to the demonstrator)."""
    return setup_lib.train_policy(build(config), workdir, config.adversarial.divergence)
