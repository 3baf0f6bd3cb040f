"""Supervised fine-tuning (behaviour cloning) through the shared loop."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import common
from irl_jax.config import validate_config
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives.logprobs import next_token_logprobs
from irl_jax.objectives.sft import nll_loss
from irl_jax.train import create_train_state, make_train_step, optimizer_from_config


def make_loss_fn(cfg: ModelConfig):
    """``loss_fn(params, batch, rng, frozen) -> (nll, metrics)`` on an SFT batch
    (``input_ids``, ``attention_mask``, ``loss_mask``)."""
    model = Transformer(cfg)

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"]).logits
        loss, sums = nll_loss(next_token_logprobs(logits, batch["input_ids"]), batch["loss_mask"])
        return loss, {"tokens": sums["tokens"]}

    return loss_fn


def make_eval_step(cfg: ModelConfig, mesh: jax.sharding.Mesh, param_shardings: Any):
    """Jitted ``(params, batch) -> {"nll_sum", "tokens"}``."""
    model = Transformer(cfg)

    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"]).logits
        return nll_loss(next_token_logprobs(logits, batch["input_ids"]), batch["loss_mask"])[1]

    data = sharding_lib.batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(param_shardings, data))


def load_data(config: ml_collections.ConfigDict, tokenizer: Any):
    """Tokenized SFT ``(train, eval)`` arrays from ``config.data`` (a file or a synthetic task)."""
    from irl_jax.data import load_and_tokenize

    data = config.data
    kwargs = dict(
        tokenizer=tokenizer,
        kind="sft",
        max_length=data.max_length,
        max_prompt_length=data.max_prompt_length or None,
        column_map=dict(data.column_map) or None,
    )
    task = common.task_or_none(config)
    if task is None:
        train, _ = load_and_tokenize(data.path, **kwargs)
        evaluation, _ = load_and_tokenize(data.eval_path or data.path, **kwargs)
    else:
        train, _ = load_and_tokenize(task.demonstrations(data.num_train, data.seed), **kwargs)
        evaluation, _ = load_and_tokenize(
            task.demonstrations(data.num_eval, data.seed + 1), **kwargs
        )
    return train, evaluation


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs SFT; returns the final evaluation metrics."""
    validate_config(config)
    mesh = common.make_mesh(config)
    tokenizer = common.load_tokenizer(config)
    cfg = common.model_config(config, tokenizer)
    init_fn, params = common.policy_init(config, cfg, mesh)
    train_arrays, eval_arrays = load_data(config, tokenizer)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = create_train_state(init_fn, optimizer, mesh, seed=config.seed, params=params)
    step = make_train_step(
        make_loss_fn(cfg),
        optimizer,
        shardings,
        mesh,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )
    eval_step = make_eval_step(cfg, mesh, shardings.params)
    task = common.task_or_none(config)

    def evaluate(params) -> tuple[dict[str, float], list]:
        sums = common.evaluate_sums(eval_step, params, eval_arrays, config.eval_batch_size, mesh)
        metrics = {"nll": sums["nll_sum"] / max(sums["tokens"], 1.0)}
        if task is not None:
            metrics["demonstrator_entropy"] = task.demonstrator_entropy()
            metrics["nll_gap"] = metrics["nll"] - metrics["demonstrator_entropy"]
        return metrics, []

    state, final = common.run_loop(
        config,
        workdir,
        state=state,
        shardings=shardings,
        train_step=lambda state, batch: step(state, batch, None),
        batches=BatchIterator(train_arrays, config.batch_size, seed=config.seed),
        mesh=mesh,
        evaluate=evaluate,
        description="sft",
    )
    if config.export:
        common.export(workdir, cfg, state.params, tokenizer)
    return final
