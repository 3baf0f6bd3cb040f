"""Wiring shared by the algorithms: mesh, tokenizer, model config, initial params, data."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax.data.iterator import eval_batches
from irl_jax.models import ModelConfig, Transformer, preset
from irl_jax.models import hf as hf_lib
from irl_jax.train.step import global_batch


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    return sharding_lib.make_mesh(dict(config.mesh_shape))


def is_hf_dir(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def model_source(config: ml_collections.ConfigDict) -> str:
    """The HF directory the weights come from ("" for a randomly initialized preset)."""
    if config.init_from:
        return config.init_from
    return config.model if is_hf_dir(config.model) else ""


def load_tokenizer(config: ml_collections.ConfigDict):
    """``config.tokenizer``, else the weights' directory, else the synthetic task tokenizer."""
    for path in (config.tokenizer, model_source(config), config.model):
        if path and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            return hf_lib.load_tokenizer(path)
    if config.tokenizer:
        return hf_lib.load_tokenizer(config.tokenizer)  # raises a clear error
    from irl_jax.tasks import build_tokenizer

    return build_tokenizer()


def _overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {k: v for k, v in config.model_overrides.items() if v is not None}


def model_config(config: ml_collections.ConfigDict, tokenizer: Any) -> ModelConfig:
    """The ``ModelConfig``: from the weights' ``config.json`` or a preset sized to the tokenizer."""
    overrides = _overrides(config)
    source = model_source(config)
    if source:
        cfg, _ = hf_lib.config_from_hf(hf_lib.read_config(source), **overrides)
        return cfg
    base = preset(config.model)
    if "hidden_size" in overrides or "num_heads" in overrides:
        hidden = overrides.get("hidden_size", base.hidden_size)
        heads = overrides.get("num_heads", base.num_heads)
        overrides.setdefault("head_dim", hidden // heads)
        if base.is_gpt2:
            overrides.setdefault("num_kv_heads", heads)
            overrides.setdefault("intermediate_size", 4 * hidden)
    eos = tuple(i for i in (tokenizer.eos_token_id,) if i is not None)
    return base.replace(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=eos,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def policy_init(
    config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: jax.sharding.Mesh
) -> tuple[Callable[[], Any], Any]:
    """``(init_fn, params)``: ``init_fn`` gives boxed params (shapes and logical axes);
    ``params`` are loaded, already sharded, weights (``None`` for a random init)."""
    model = Transformer(cfg)
    ids = jnp.zeros((1, 2), jnp.int32)
    init_fn = lambda: model.init(jax.random.key(config.seed), ids, jnp.ones_like(ids))["params"]
    source = model_source(config)
    params = None
    if source:
        _, params = hf_lib.load_pretrained(source, mesh=mesh, **_overrides(config))
        logging.info("loaded %s weights from %s", cfg.architecture, source)
    return init_fn, params


def load_reward_model(
    config: ml_collections.ConfigDict, path: str, policy: ModelConfig, mesh: jax.sharding.Mesh
) -> rewards_lib.LearnedReward:
    """A reward-model export (``...ForSequenceClassification``, K heads = an ensemble) as a
    reward source, sharded on ``mesh``; ensembles combine with ``config.policy_gradient``'s
    ``reward_aggregation`` / ``reward_uwo_penalty``.

    Raises:
      ConfigError: the checkpoint is a causal LM, or its vocabulary differs from the policy's
        (the reward model reads the policy's token ids).
    """
    from irl_jax.config import ConfigError
    from irl_jax.models.heads import RewardModel

    cfg, params = hf_lib.load_pretrained(path, mesh=mesh, **_overrides(config))
    if "score" not in params:
        raise ConfigError(
            f"config.policy_gradient.reward_model: {path!r} is a causal LM, not a reward model "
            "(a sequence-classification checkpoint with a score head)"
        )
    if cfg.vocab_size != policy.vocab_size:
        raise ConfigError(
            f"config.policy_gradient.reward_model: {path!r} has a vocabulary of "
            f"{cfg.vocab_size} tokens, the policy {policy.vocab_size}: they must share a tokenizer"
        )
    num_heads = params["score"]["kernel"].shape[-1]
    settings = config.policy_gradient
    logging.info("reward model: %s with %d head(s) from %s", cfg.architecture, num_heads, path)
    return rewards_lib.reward_model(
        RewardModel(cfg, num_heads).apply,  # apply({"params": ...}, ids, mask)
        {"params": params},
        aggregation=settings.reward_aggregation if num_heads > 1 else None,
        penalty=settings.reward_uwo_penalty,
    )


Evaluate = Callable[[Any], tuple[dict[str, float], list[dict[str, Any]]]]


def run_loop(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    state: Any,
    shardings: Any,
    train_step: Callable[[Any, dict[str, jax.Array]], tuple[Any, Any]],
    batches: Any,
    mesh: jax.sharding.Mesh,
    evaluate: Evaluate,
    description: str,
) -> tuple[Any, dict[str, float]]:
    """``train_loop`` with the config's loop settings (steps, logging, evaluation, checkpoints).

    ``evaluate(params) -> (metrics, samples)`` runs at every evaluation (the samples are logged
    as texts) and once more at the end when no evaluation ran (e.g. a finished run resumed).
    Returns the final state and the last evaluation's metrics.
    """
    from irl_jax.train import train_loop

    final: dict[str, float] = {}
    samples: list[dict[str, Any]] = []

    def eval_fn(state) -> dict[str, float]:
        metrics, samples[:] = evaluate(state.params)
        final.clear()
        final.update(metrics)
        return metrics

    state = train_loop(
        state=state,
        state_shardings=shardings,
        train_step=train_step,
        batches=batches,
        mesh=mesh,
        workdir=workdir,
        num_steps=config.num_steps,
        config=config.to_dict(),
        eval_fn=eval_fn,
        eval_every=config.eval_every,
        sample_fn=lambda state: list(samples),
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        description=description,
    )
    if not final:
        eval_fn(state)
    return state, final


def copy_params(params: Any, shardings: Any) -> Any:
    """A separate copy (own buffers, same shardings) of params that a train step will donate:
    the frozen reference π_ref."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def task_or_none(config: ml_collections.ConfigDict):
    if config.data.path:
        return None
    from irl_jax.tasks import get_task

    return get_task(config.data.task)


def evaluate_sums(
    eval_step: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]],
    params: Any,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, float]:
    """Sums ``eval_step``'s outputs over every eval row (the last batch zero-padded)."""
    data = sharding_lib.batch_sharding(mesh)
    totals: dict[str, Any] = {}
    local = batch_size // jax.process_count()
    for batch in eval_batches(arrays, batch_size):
        rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        out = eval_step(params, global_batch({k: v[rows] for k, v in batch.items()}, data))
        totals = out if not totals else jax.tree.map(jnp.add, totals, out)
    return {k: float(v) for k, v in jax.device_get(totals).items()}


def export(workdir: str, cfg: ModelConfig, params: Any, tokenizer: Any) -> str:
    """Writes the final model as a Hugging Face directory ``WORKDIR/export`` (process 0)."""
    path = os.path.join(workdir, "export")
    # Every process joins the gather (params may span hosts); process 0 writes.
    host_params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        hf_lib.save_pretrained(path, cfg, host_params, tokenizer=tokenizer)
        logging.info("exported the final model to %s", path)
    return path


def prompt_arrays(
    config: ml_collections.ConfigDict, tokenizer: Any, num: int, seed: int, split: str = "train"
) -> dict[str, np.ndarray]:
    """Left-padded ``prompt_ids``/``prompt_mask`` ``[num, P]`` from the synthetic task's prompt
    generator, or the first ``num`` prompts of ``data.path`` (``split="train"``) /
    ``data.eval_path`` (``split="eval"``, falling back to ``data.path``)."""
    from irl_jax.data import load_and_tokenize

    task = task_or_none(config)
    if task is None:
        source = (
            config.data.eval_path
            if split == "eval" and config.data.eval_path
            else (config.data.path)
        )
    else:
        source = [{"prompt": p} for p in task.prompts(num, seed)]
    arrays, _ = load_and_tokenize(
        source,
        tokenizer,
        "prompt",
        config.data.max_length,
        max_prompt_length=config.data.max_prompt_length or None,
        column_map=dict(config.data.column_map) or None,
    )
    return {k: v[:num] for k, v in arrays.items()}


def gold_reward_fns(config: ml_collections.ConfigDict) -> dict[str, Callable]:
    """``{"gold": task.gold_reward}`` on a synthetic task, else ``{}`` (no known truth)."""
    task = task_or_none(config)
    return {} if task is None else {"gold": task.gold_reward}


def policy_evaluator(
    config: ml_collections.ConfigDict,
    cfg: ModelConfig,
    tokenizer: Any,
    ref_params: Any,
    mesh: jax.sharding.Mesh,
    reward_fns: dict[str, Callable] | None = None,
) -> Callable[[Any], tuple[dict[str, float], list[dict[str, Any]]]]:
    """``params -> (metrics, samples)``: the policy vs the reference on ``config.policy_eval``
    held-out prompts (gold reward, learned rewards, KL, win rate) via ``evaluate_policy``."""
    from irl_jax.evaluation import evaluate_policy

    settings = config.policy_eval
    prompts = prompt_arrays(
        config, tokenizer, settings.num_prompts, config.data.seed + 7, split="eval"
    )
    fns = {**gold_reward_fns(config), **(reward_fns or {})}
    batch_size = min(settings.batch_size, len(prompts["prompt_ids"]))
    data = sharding_lib.batch_sharding(mesh)

    def evaluate(params):
        with jax.set_mesh(mesh):
            return evaluate_policy(
                cfg,
                params,
                ref_params,
                prompts["prompt_ids"],
                prompts["prompt_mask"],
                reward_fns=fns,
                rng=jax.random.key(config.seed + 11),
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                tokenizer=tokenizer,
                num_samples_to_log=settings.num_samples_to_log,
                batch_size=batch_size,
                data_sharding=data,
            )

    return evaluate
