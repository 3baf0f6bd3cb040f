"""PPO with a learned critic (Schulman et al. 2017), as in RLHF (Ziegler et al. 2019; Ouyang et
al. 2022): per-token credit from a value model instead of one number per response (SURVEY §1, §4).

Two trained models in one state — the policy π_θ and the critic V_φ (``ValueModel``, its own
optimizer ``config.ppo.critic.optimizer``) — plus the frozen reference π_ref and the KL
coefficient β (``extras["kl_coef"]``, adapted by Ziegler et al.'s controller when
``kl_target > 0``). One iteration is one jitted step composed of the rollout stages:

    sample y ~ π_θ(·|x) (``config.sampling``) → score with ``config.reward`` ([B], or [B, T]
      per-token credit from ``ppo.reward_shaping``: prefix differences, ABC, RTO, a potential)
    → r_t = −β·k1_t + (the sequence score at the last real token) + (any per-token score),
      k1_t = log π_old − log π_ref → V(s_t) from the critic → GAE (γ, λ) → A_t, R_t
    → ``num_epochs × num_minibatches`` updates of π_θ on the clipped surrogate with per-token
      advantages (whitened over response tokens) and an entropy bonus, and of V_φ on the clipped
      value loss ½ max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²).

V(s_t) is read at the position that predicts token t (the prompt's last token for t = 0); the
value after a response's last real token is 0 (see ``objectives.policy_gradient.gae``). The
critic starts from the policy's weights (``critic.init="policy"``: its backbone, a fresh value
head), from a reward-model export (``"reward_model"``: backbone and score head) or from a random
init (``"fresh"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import rollout
from irl_jax.algorithms import reward_shaping
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import (
    check_fields,
    check_minibatches,
    check_optimizer,
    check_reward,
    check_reward_paths,
    optimizer_config,
    require,
)
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer, lora
from irl_jax.models import source as model_source
from irl_jax.models.heads import ValueModel
from irl_jax.objectives import policy_gradient as pg
from irl_jax.objectives.logprobs import masked_mean
from irl_jax.rewards import concat_prompt_response
from irl_jax.train import (
    Loss,
    ModelState,
    TrainState,
    create_model,
    jit_step,
    make_update,
    optimizer_from_config,
)

Array = jax.Array
CRITIC_INITS = ("policy", "reward_model", "fresh")


def default_config() -> ml_collections.ConfigDict:
    """``config.ppo``. ``config.batch_size`` prompts per iteration, each with
    ``sampling.group_size`` responses (1 is PPO's usual setting); ``config.num_steps`` counts
    iterations; both optimizers' schedules count updates."""
    return ml_collections.ConfigDict(
        {
            "gamma": 1.0,  # γ: the episode is one response
            "lam": 0.95,  # GAE λ
            "clip_eps": 0.2,  # the policy's ratio clip
            "value_clip_eps": 0.2,  # ε_v of the clipped value loss
            "kl_coef": 0.05,  # β of the per-token reward −β·k1 (the initial β when adaptive)
            "kl_target": 0.0,  # > 0: adapt β towards this sequence KL (Σ_t k1, nats)
            "kl_horizon": 10000,  # the controller's horizon H (samples)
            "whiten_rewards": False,  # standardize token rewards per batch (mean kept)
            "whiten_advantages": True,  # standardize advantages over response tokens
            "aggregation": "token_mean",  # sequence_mean | token_mean | constant
            "entropy_coef": 0.0,
            "num_epochs": 4,
            "num_minibatches": 4,
            "reward_shaping": reward_shaping.default_config(),
            "critic": {
                "init": "policy",  # policy | reward_model | fresh
                "path": "",  # the HF directory to start from ("": the policy's / reward.model)
                "optimizer": optimizer_config(3e-4),
            },
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.ppo`` with the sampling and reward it uses; raises ``ConfigError``
    naming the field."""
    s = config.ppo
    check_fields(
        s,
        "ppo",
        choices={"aggregation": pg.AGGREGATIONS},
        at_least={
            **dict.fromkeys(("num_epochs", "num_minibatches", "kl_horizon"), 1),
            **dict.fromkeys(("clip_eps", "value_clip_eps", "kl_coef", "kl_target"), 0),
            "entropy_coef": 0,
        },
    )
    check_fields(s.critic, "ppo.critic", choices={"init": CRITIC_INITS})
    reward_shaping.validate(config)
    check_optimizer(s.critic.optimizer, "ppo.critic.optimizer")
    for field in ("gamma", "lam"):
        require(0 <= s[field] <= 1, f"ppo.{field}", f"must be in [0, 1], got {s[field]}")
    require(
        s.critic.init != "reward_model" or s.critic.path or config.reward.source == "model",
        "ppo.critic.init",
        "'reward_model' needs a reward-model export: set ppo.critic.path or reward.model",
    )
    check_reward(config)
    check_minibatches(config, s.num_minibatches, "ppo.num_minibatches")
    require(
        config.data.num_train >= config.batch_size,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than the {config.batch_size} of an iteration",
    )


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """A learned reward, a DPO export and an explicit critic directory must exist."""
    check_reward_paths(config)
    reward_shaping.validate_paths(config)
    path = config.ppo.critic.path
    require(
        not path or model_source.is_hf_dir(path),
        "ppo.critic.path",
        f"{path!r} is not a Hugging Face directory with a config.json",
    )


# ----------------------------------------------------------------------------- models


def critic_source(config: ml_collections.ConfigDict) -> str:
    """The directory the critic's weights come from ("" for a random init)."""
    critic = config.ppo.critic
    if critic.init == "fresh":
        return ""
    if critic.path:
        return critic.path
    if critic.init == "reward_model":
        return config.reward.model
    return model_source.weights_dir(config.model, config.init_from)


def create_critic(
    setup: setup_lib.Setup, optimizer
) -> tuple[ValueModel, tuple[ModelState, ModelState]]:
    """The critic ``ValueModel`` and its ``ModelState`` (and shardings): the backbone of
    ``critic_source`` (a causal LM's minus ``lm_head``, or a reward model's ``transformer``),
    a reward model's score head as the value head, else a fresh (zero) value head."""
    source = critic_source(setup.config)
    cfg = setup.model_config
    if source and source != setup.weights:
        cfg = model_source.resolve_config(
            source, tokenizer=setup.tokenizer, overrides=setup.overrides
        )
    module = ValueModel(cfg)
    init_fn = model_source.init_fn(module, setup.config.seed + 1)
    params = None
    if source:
        loaded = model_source.load_params(source, setup.mesh, setup.overrides)
        head = model_source.fresh_head(init_fn, "value", setup.mesh)
        if "score" in loaded:  # a reward model: its (first) score head becomes V's
            kernel = loaded["score"]["kernel"][:, :1]
            head = {**head, "kernel": kernel.astype(head["kernel"].dtype)}
        params = {"transformer": model_source.backbone(loaded), "value": head}
    return module, create_model(init_fn, optimizer, setup.mesh, params=params)


@flax.struct.dataclass
class Rollout:
    """One iteration's training batch, rows ``[B, ...]``: the samples (with π_old's log-probs),
    the critic's values V_old(s_t), and per-token advantages and returns ``[B, N]``."""

    samples: rollout.Samples
    values: Array
    advantages: Array
    returns: Array


def token_values(
    critic: ValueModel, params: Any, samples: rollout.Samples, rng: Array | None = None
) -> Array:
    """V(s_t) ``[B, N]`` of every response token t, read at the position that predicts it;
    ``rng`` drives LoRA dropout in a training forward (``lora.dropout_rngs``)."""
    ids, mask = concat_prompt_response(
        samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask
    )
    values = critic.apply({"params": params}, ids, mask, rngs=lora.dropout_rngs(critic, rng))
    start = samples.prompt_ids.shape[1] - 1
    return values[:, start : start + samples.response_ids.shape[1]]


# ----------------------------------------------------------------------------- rollout, losses


def make_rollout(model_config: ModelConfig, critic: ValueModel, config: ml_collections.ConfigDict):
    """``collect(policy, critic, reference, kl_coef, batch, source, rng) -> (Rollout, metrics)``:
    sample, score, KL-shaped token rewards, values, GAE. Metrics: ``reward_mean`` (the source's
    sequence score), ``kl`` (mean Σ_t k1 per response: the controller's input),
    ``non_score_reward`` (mean −β Σ_t k1), ``returns_mean``, ``value_mean``,
    ``explained_variance`` (of the returns by the rollout values), ``response_length_mean``."""
    s = config.ppo
    sampling = rollout.SamplingSettings.from_config(config.sampling)

    def collect(policy_params, critic_params, reference, kl_coef, batch, source, rng):
        samples = rollout.sample(
            model_config,
            policy_params,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=rng,
            settings=sampling,
        )
        mask = samples.response_mask
        scores, parts = rollout.score_parts(source, samples)
        ref = rollout.reference_logprobs(model_config, reference, samples, sampling.temperature)
        kl_bt = (samples.logprobs - ref) * mask  # k1 per token
        rewards = pg.token_rewards(scores, mask) - kl_coef * kl_bt
        if s.whiten_rewards:
            rewards = pg.whiten(rewards, mask, shift_mean=False)
        values = token_values(critic, critic_params, samples) * mask
        advantages, returns = pg.gae(rewards, values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = pg.whiten(advantages, mask)
        sequence = lambda x: x.sum(-1).mean()
        metrics = {
            "reward_mean": scores.mean() if scores.ndim == 1 else sequence(scores * mask),
            "kl": sequence(kl_bt),
            "non_score_reward": -kl_coef * sequence(kl_bt),
            "returns_mean": masked_mean(returns, mask),
            "value_mean": masked_mean(values, mask),
            "explained_variance": pg.explained_variance(values, returns, mask),
            "response_length_mean": samples.lengths.mean(dtype=jnp.float32),
            **rollout.part_means(parts),
        }
        return Rollout(samples, values, advantages, returns), metrics

    return collect


def make_policy_loss(model_config: ModelConfig, config: ml_collections.ConfigDict):
    """``loss_fn(params, rollout, rng) -> (Loss, metrics)``: the clipped surrogate with
    per-token advantages minus the entropy bonus, aggregated by ``ppo.aggregation``. Metrics:
    ``policy_loss``, ``clip_fraction``, ``approx_kl`` (mean ½ (log π − log π_old)² per token,
    the KL between the updated and the sampling policy), ``entropy``."""
    s, model = config.ppo, Transformer(model_config)
    sampling = rollout.SamplingSettings.from_config(config.sampling)

    def loss_fn(params, batch: Rollout, rng):
        x = batch.samples
        logps, entropy = rollout.policy_logprobs(model, params, x, sampling.temperature, rng)
        per_token, clipped = pg.clipped_surrogate(
            logps, x.logprobs, batch.advantages, eps_low=s.clip_eps, eps_high=s.clip_eps
        )
        terms = lambda v: pg.aggregate_terms(
            v, x.response_mask, s.aggregation, sampling.max_new_tokens
        )
        total, count = terms(per_token)
        metrics = {
            "policy_loss": total / jnp.maximum(count, 1.0),
            "clip_fraction": masked_mean(clipped, x.response_mask),
            "approx_kl": masked_mean(0.5 * (logps - x.logprobs) ** 2, x.response_mask),
            "entropy": masked_mean(entropy, x.response_mask),
        }
        if s.entropy_coef:
            total = total - s.entropy_coef * terms(entropy)[0]
        return Loss(total, count), metrics

    return loss_fn


def make_value_loss(critic: ValueModel, config: ml_collections.ConfigDict):
    """``loss_fn(params, rollout, rng) -> (Loss, metrics)``: the clipped value loss against the
    returns, aggregated like the policy loss. Metrics: ``value_loss``, ``value_clip_fraction``."""
    s = config.ppo
    max_new_tokens = config.sampling.max_new_tokens

    def loss_fn(params, batch: Rollout, rng):
        mask = batch.samples.response_mask
        values = token_values(critic, params, batch.samples, rng)
        losses, clipped = pg.clipped_value_loss(
            values, batch.values, batch.returns, s.value_clip_eps
        )
        total, count = pg.aggregate_terms(losses, mask, s.aggregation, max_new_tokens)
        metrics = {
            "value_loss": total / jnp.maximum(count, 1.0),
            "value_clip_fraction": masked_mean(clipped, mask),
        }
        return Loss(total, count), metrics

    return loss_fn


def make_iteration(
    model_config: ModelConfig,
    critic: ValueModel,
    config: ml_collections.ConfigDict,
    optimizers: tuple[Any, Any],
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedules: tuple[Any, Any] = (None, None),
):
    """The jitted ``step(state, prompt batch, reward source) -> (state, metrics)``: the rollout,
    the updates of the policy and of the critic (the same minibatches: one update key), then
    the KL controller (β from this iteration's KL)."""
    s = config.ppo
    collect = make_rollout(model_config, critic, config)
    settings = dict(num_epochs=s.num_epochs, num_minibatches=s.num_minibatches)
    settings["grad_accum_steps"] = config.grad_accum_steps
    update_policy = make_update(
        make_policy_loss(model_config, config),
        optimizers[0],
        shardings.models["policy"],
        schedule=schedules[0],
        **settings,
    )
    update_critic = make_update(
        make_value_loss(critic, config),
        optimizers[1],
        shardings.models["critic"],
        schedule=schedules[1],
        **settings,
    )
    samples_per_iteration = config.batch_size * config.sampling.group_size

    def iteration(state: TrainState, batch: dict[str, Array], source: Any):
        policy, value_model = state.models["policy"], state.models["critic"]
        kl_coef = state.extras["kl_coef"]
        sample_key, update_key = jax.random.split(state.step_rng())
        data, metrics = collect(
            policy.params,
            value_model.params,
            state.frozen["reference"],
            kl_coef,
            batch,
            source,
            sample_key,
        )
        policy, policy_metrics = update_policy(policy, data, update_key)
        value_model, critic_metrics = update_critic(value_model, data, update_key)
        if s.kl_target:
            kl_coef = pg.adaptive_kl_coef(
                kl_coef, metrics["kl"], s.kl_target, samples_per_iteration, s.kl_horizon
            )
        metrics = {
            **metrics,
            **policy_metrics,
            **{
                f"critic_{k}" if k in ("loss", "grad_norm", "learning_rate") else k: v
                for k, v in critic_metrics.items()
            },  # fmt: skip
            "kl_coef": kl_coef,
        }
        state = state.with_model("policy", policy).with_model("critic", value_model)
        return state.replace(step=state.step + 1, extras={"kl_coef": kl_coef}), metrics

    return jit_step(iteration, shardings, mesh, num_args=1)


# ----------------------------------------------------------------------------- training


def build(config: ml_collections.ConfigDict, devices: list | None = None):
    """``(setup, state, shardings, step, prompt iterator, (reward name, source))`` on a mesh over
    ``devices`` (default: all); the step trains on that source's token rewards
    (``reward_shaping.source``)."""
    s = config.ppo
    setup = setup_lib.setup(config, devices=devices)
    updates = config.num_steps * s.num_epochs * s.num_minibatches
    policy_optimizer, policy_schedule = optimizer_from_config(config.optimizer, updates)
    critic_optimizer, critic_schedule = optimizer_from_config(s.critic.optimizer, updates)
    critic, critic_state = create_critic(setup, critic_optimizer)
    state, shardings = setup_lib.policy_state(
        setup,
        policy_optimizer,
        models={"critic": critic_state},
        extras=lambda: {"kl_coef": jnp.float32(s.kl_coef)},
    )
    reward = setup_lib.reward_source(setup)
    source = reward_shaping.source(setup, reward)
    iteration = make_iteration(
        setup.model_config,
        critic,
        config,
        (policy_optimizer, critic_optimizer),
        shardings,
        setup.mesh,
        schedules=(policy_schedule, critic_schedule),
    )
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, config.data.num_train, config.data.seed
    )
    batches = BatchIterator(
        prompts, config.batch_size, seed=config.seed, prompt_buckets=config.data.prompt_buckets
    )
    step: Callable = lambda state, batch: iteration(state, batch, source)
    return setup, state, shardings, step, batches, reward


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs PPO; returns the final policy evaluation (gold and learned rewards against the
    reference's, KL, win rate)."""
    setup, state, shardings, step, batches, (name, source) = build(config)
    learned = {} if name in ("gold", "verifier") else {name: source}
    evaluator = setup_lib.policy_evaluator(setup, learned)
    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=batches,
        evaluate=lambda state: evaluator(state.models["policy"].params, state.frozen["reference"]),
        description="ppo",
    )
