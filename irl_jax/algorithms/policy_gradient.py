"""Critic-free policy gradient through the shared loop: REINFORCE, RLOO, ReMax, GRPO, Dr.GRPO,
DAPO (SURVEY §4).

One iteration = one ``train_loop`` step: sample G responses for each of N prompts with the
current policy (``rollout.make_rollout_fn``: score, select, advantages, old and reference
log-probs), then ``num_epochs × num_minibatches`` optimizer updates of the clipped surrogate

    L(θ) = agg_{i,t} −min(ρ_it A_i, clip(ρ_it, 1 − ε_low, 1 + ε_high) A_i)
           + β · agg_{i,t} KL_t(π_θ ‖ π_ref) − c_H · agg_{i,t} H_t,
    ρ_it = π_θ(y_it | x_i, y_i<t) / π_old(y_it | x_i, y_i<t),

with log-probs from log softmax(logits / T) at the sampling temperature (as the sampler's
``response_logprobs``), ``agg`` the configured aggregation and the KL term either in the loss
(GRPO, k3) or in the reward (``kl_in_reward``). All updates of one iteration run in one jitted
``lax.scan``; ``TrainState.step`` counts iterations (so checkpoints and resume are per
iteration), while the optimizer's schedule counts updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import common
from irl_jax.algorithms import rollout as rollout_lib
from irl_jax.config import ConfigError, validate_config
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives import policy_gradient as pg
from irl_jax.objectives.logprobs import masked_mean, next_token_entropy, next_token_logprobs
from irl_jax.rewards import concat_prompt_response
from irl_jax.train import TrainState, create_train_state, optimizer_from_config
from irl_jax.train.step import mean_over_microbatches, split_rows


def default_config() -> ml_collections.ConfigDict:
    """``config.policy_gradient``: GRPO with a k3 KL term by default.

    ``config.batch_size`` is N, the prompts per iteration (each gets ``group_size`` responses);
    ``config.num_steps`` counts iterations; ``config.optimizer``'s schedule and warmup count
    optimizer updates (``num_epochs · num_minibatches`` per iteration).
    """
    return ml_collections.ConfigDict(
        {
            "estimator": "grpo",  # reinforce | rloo | remax | grpo
            "reward": "gold",  # gold | verifier | model (see rollout.make_reward_fn)
            "reward_model": "",  # reward="model": a reward-model export (e.g. runs/rm/export)
            "reward_aggregation": "mean",  # an ensemble RM's mean | wco | uwo
            "reward_uwo_penalty": 0.0,  # uwo's λ on the members' variance
            "group_size": 8,  # G responses per prompt
            "max_new_tokens": 8,  # L_max, the generation budget
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "advantage_scale": "group",  # GRPO: group | batch | none (Dr.GRPO)
            "advantage_eps": 1e-4,
            "baseline_decay": 0.9,  # REINFORCE's moving-average baseline
            "normalize_rewards": False,  # standardize with running statistics first
            "aggregation": "sequence_mean",  # sequence_mean | token_mean | constant
            "clip_eps_low": 0.2,
            "clip_eps_high": 0.2,
            "kl_coef": 0.04,  # β; 0 = no reference term
            "kl_estimator": "k3",  # k1 | k2 | k3
            "kl_in_reward": False,  # r − β Σ_t KL_t instead of a loss term
            "entropy_coef": 0.0,
            "num_epochs": 1,
            "num_minibatches": 1,
            "dynamic_sampling": False,  # DAPO: keep groups with non-zero reward variance
            "oversample": 2,  # sample oversample · N groups when dynamic_sampling
            "overlong_buffer": 0,  # DAPO's L_c; 0 = no over-long penalty
        }
    )


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the ``policy_gradient`` section (``validate_config`` calls this); raises
    ``ConfigError`` naming the field."""
    s = config.policy_gradient

    def one_of(field: str, choices: tuple[str, ...]) -> None:
        _require(s[field] in choices, f"policy_gradient.{field}", f"{s[field]!r} not in {choices}")

    def at_least(field: str, low: float) -> None:
        _require(s[field] >= low, f"policy_gradient.{field}", f"must be >= {low}, got {s[field]}")

    one_of("estimator", rollout_lib.ESTIMATORS)
    one_of("reward", rollout_lib.REWARDS)
    one_of("advantage_scale", pg.SCALES)
    one_of("aggregation", pg.AGGREGATIONS)
    one_of("kl_estimator", pg.KL_ESTIMATORS)
    one_of("reward_aggregation", ("mean", "wco", "uwo"))
    at_least("reward_uwo_penalty", 0)
    _require(
        s.reward == "model" or common.task_or_none(config) is not None,
        "data.path",
        f"policy_gradient.reward={s.reward!r} needs a synthetic task (data.task), not a file",
    )
    needs_group = s.estimator in ("grpo", "rloo")
    at_least("group_size", 2 if needs_group else 1)
    for field in ("max_new_tokens", "num_epochs", "num_minibatches", "oversample"):
        at_least(field, 1)
    for field in ("top_k", "advantage_eps", "clip_eps_low", "clip_eps_high", "kl_coef"):
        at_least(field, 0)
    at_least("entropy_coef", 0)
    at_least("overlong_buffer", 0)
    _require(s.temperature > 0, "policy_gradient.temperature", f"must be > 0, got {s.temperature}")
    _require(0 < s.top_p <= 1, "policy_gradient.top_p", f"must be in (0, 1], got {s.top_p}")
    _require(
        0 <= s.baseline_decay < 1,
        "policy_gradient.baseline_decay",
        f"must be in [0, 1), got {s.baseline_decay}",
    )
    _require(
        s.clip_eps_low < 1, "policy_gradient.clip_eps_low", f"must be < 1, got {s.clip_eps_low}"
    )
    _require(
        s.overlong_buffer <= s.max_new_tokens,
        "policy_gradient.overlong_buffer",
        f"{s.overlong_buffer} exceeds max_new_tokens={s.max_new_tokens}",
    )
    _require(
        not s.dynamic_sampling or s.oversample >= 2,
        "policy_gradient.oversample",
        f"dynamic_sampling needs oversample >= 2, got {s.oversample}",
    )
    rows = config.batch_size * s.group_size
    mesh = sharding_lib.make_mesh(dict(config.mesh_shape))
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    parts = s.num_minibatches * config.grad_accum_steps
    _require(
        rows % parts == 0 and (rows // parts) % data_parallel == 0,
        "policy_gradient.num_minibatches",
        f"batch_size · group_size = {rows} responses must split into num_minibatches="
        f"{s.num_minibatches} × grad_accum_steps={config.grad_accum_steps} parts each divisible "
        f"by the data-parallel size {data_parallel}",
    )
    prompts = config.batch_size * (s.oversample if s.dynamic_sampling else 1)
    _require(
        config.data.num_train >= prompts,
        "data.num_train",
        f"{config.data.num_train} prompts, fewer than the {prompts} sampled per iteration",
    )


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """A learned reward (``reward="model"``) must be a reward-model export."""
    s = config.policy_gradient
    _require(
        s.reward != "model" or common.is_hf_dir(s.reward_model),
        "policy_gradient.reward_model",
        f"{s.reward_model!r} is not a Hugging Face directory with a config.json; reward='model' "
        "scores with a trained reward model: run `python -m experiments.run "
        "--config=experiments/configs/rm_bt.py --workdir=runs/rm` and set "
        "--config.policy_gradient.reward_model=runs/rm/export",
    )


def make_loss_fn(
    model_config: ModelConfig, settings: ml_collections.ConfigDict
) -> Callable[[Any, rollout_lib.Rollout], tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss_fn(params, rollout) -> (loss, metrics)``: the clipped surrogate plus the KL and
    entropy terms of the module docstring, on a (mini)batch of a ``Rollout``.

    Metrics: ``policy_loss``, ``clip_fraction`` (response tokens where the clip is active),
    ``entropy`` (mean per response token, at temperature T), ``kl_loss`` with a KL loss term.
    """
    s = settings
    model = Transformer(model_config)

    def loss_fn(params, batch: rollout_lib.Rollout):
        ids, mask = concat_prompt_response(
            batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
        )
        logits = model.apply({"params": params}, ids, mask).logits
        prompt_len = batch.prompt_ids.shape[1]
        logps = next_token_logprobs(logits, ids, s.temperature)[:, prompt_len:]
        entropy = next_token_entropy(logits, s.temperature)[:, prompt_len:]
        response_mask = batch.response_mask

        def reduce(per_token):
            return pg.aggregate(per_token, response_mask, s.aggregation, s.max_new_tokens)

        per_token, clipped = pg.clipped_surrogate(
            logps,
            batch.old_logprobs,
            batch.advantages,
            eps_low=s.clip_eps_low,
            eps_high=s.clip_eps_high,
        )
        loss = policy_loss = reduce(per_token)
        metrics = {
            "policy_loss": policy_loss,
            "clip_fraction": masked_mean(clipped, response_mask),
            "entropy": masked_mean(entropy, response_mask),
        }
        if s.kl_coef and not s.kl_in_reward:
            metrics["kl_loss"] = reduce(pg.kl_estimate(logps, batch.ref_logprobs, s.kl_estimator))
            loss = loss + s.kl_coef * metrics["kl_loss"]
        if s.entropy_coef:
            loss = loss - s.entropy_coef * reduce(entropy)
        return loss, metrics

    return loss_fn


def _constrain_rows(tree: Any) -> Any:
    """Keeps a (mini)batch's rows sharded over ``('data', 'fsdp')``."""
    return jax.tree.map(
        lambda x: sharding_lib.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1)), tree
    )


def make_update_fn(
    loss_fn: Callable[[Any, rollout_lib.Rollout], tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    settings: ml_collections.ConfigDict,
    state_shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    schedule: optax.Schedule | None = None,
    grad_accum_steps: int = 1,
) -> Callable[[TrainState, rollout_lib.Rollout], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``update(state, rollout) -> (state, metrics)``, jitted once, state donated.

    Runs ``num_epochs`` passes over the rollout, each split into ``num_minibatches`` minibatches
    (rows shuffled per epoch with ``fold_in(state.step_rng(), 1)`` when there is more than one)
    with one optimizer update each; a minibatch's gradient may be accumulated over
    ``grad_accum_steps`` microbatches (losses averaged). ``state.step`` advances by one.

    Metrics: the loss function's, ``loss`` and ``grad_norm`` averaged over the updates, and
    ``learning_rate`` of the iteration's first update.
    """
    num_epochs, num_minibatches = settings.num_epochs, settings.num_minibatches
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, minibatch):
        return mean_over_microbatches(
            lambda micro, _: grad_fn(params, _constrain_rows(micro)), minibatch, grad_accum_steps
        )

    def update(state: TrainState, batch: rollout_lib.Rollout):
        shuffle_key = jax.random.fold_in(state.step_rng(), 1)

        def minibatch_step(carry, minibatch):
            params, opt_state = carry
            (loss, metrics), grads = gradients(params, _constrain_rows(minibatch))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
            return (params, opt_state), metrics

        def epoch(carry, index):
            rows = batch
            if num_minibatches > 1:
                size = batch.advantages.shape[0]
                order = jax.random.permutation(jax.random.fold_in(shuffle_key, index), size)
                rows = jax.tree.map(lambda x: x[order], batch)
            return jax.lax.scan(minibatch_step, carry, split_rows(rows, num_minibatches))

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (state.params, state.opt_state), jnp.arange(num_epochs)
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step * num_epochs * num_minibatches)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    data = sharding_lib.batch_sharding(mesh)
    return jax.jit(
        update,
        in_shardings=(state_shardings, data),
        out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
        donate_argnums=(0,),
    )


class Setup(NamedTuple):
    """Everything ``train`` wires together (tests drive ``train_step`` directly)."""

    mesh: jax.sharding.Mesh
    model_config: ModelConfig
    tokenizer: Any
    reward_fn: rewards_lib.RewardFn  # the training reward source
    state: TrainState
    state_shardings: TrainState
    ref_params: Any  # the frozen reference π_ref (the initial policy)
    train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]
    batches: BatchIterator


def build(config: ml_collections.ConfigDict) -> Setup:
    """Builds the initial state, the frozen reference, the prompt iterator and the iteration
    ``train_step(state, prompt_batch) -> (state, metrics)`` (rollout, then updates)."""
    s = config.policy_gradient
    mesh = common.make_mesh(config)
    tokenizer = common.load_tokenizer(config)
    model_config = common.model_config(config, tokenizer)
    init_fn, params = common.policy_init(config, model_config, mesh)
    updates_per_iteration = s.num_epochs * s.num_minibatches
    optimizer, schedule = optimizer_from_config(
        config.optimizer, config.num_steps * updates_per_iteration
    )
    state, shardings = create_train_state(
        init_fn,
        optimizer,
        mesh,
        seed=config.seed,
        extras=rollout_lib.init_extras,
        params=params,
    )
    # A copy: the state (whose params may alias the loaded weights) is donated every update.
    ref_params = common.copy_params(state.params, shardings.params)
    if s.reward == "model":
        reward_fn = common.load_reward_model(config, s.reward_model, model_config, mesh)
    else:
        reward_fn = rollout_lib.make_reward_fn(s.reward, common.task_or_none(config), tokenizer)
    rollout_fn = rollout_lib.make_rollout_fn(model_config, s, reward_fn, shardings, mesh)
    update_fn = make_update_fn(
        make_loss_fn(model_config, s),
        optimizer,
        s,
        shardings,
        mesh,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        with jax.set_mesh(mesh):
            rollout, extras, rollout_metrics = rollout_fn(
                state, batch["prompt_ids"], batch["prompt_mask"], ref_params
            )
            state, update_metrics = update_fn(state.replace(extras=extras), rollout)
        return state, {**rollout_metrics, **update_metrics}

    prompts = common.prompt_arrays(config, tokenizer, config.data.num_train, config.data.seed)
    prompts_per_iteration = config.batch_size * (s.oversample if s.dynamic_sampling else 1)
    batches = BatchIterator(prompts, prompts_per_iteration, seed=config.seed)
    return Setup(
        mesh, model_config, tokenizer, reward_fn, state, shardings, ref_params, train_step, batches
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs policy-gradient RL; returns the final policy evaluation (``eval/reward/gold_mean``
    ± stderr against the reference's ``eval/ref_reward/gold_mean``, KL, win rate)."""
    validate_config(config)
    setup = build(config)
    learned = {"model": setup.reward_fn} if config.policy_gradient.reward == "model" else {}
    evaluator = common.policy_evaluator(
        config, setup.model_config, setup.tokenizer, setup.ref_params, setup.mesh, learned
    )
    state, final = common.run_loop(
        config,
        workdir,
        state=setup.state,
        shardings=setup.state_shardings,
        train_step=setup.train_step,
        batches=setup.batches,
        mesh=setup.mesh,
        evaluate=evaluator,
        description=config.policy_gradient.estimator,
    )
    if config.export:
        common.export(workdir, setup.model_config, state.params, setup.tokenizer)
    return final
