"""Supervised fine-tuning (behaviour cloning) through the shared loop.

``config.sft.corpus`` picks the data: ``demonstrations`` (SFT proper), or ``base_corpus`` — the
synthetic task's generic text of its language (``Task.base_corpus``: prompt + base response,
the loss on every token) — which pre-trains the *initial policy* that SFT and AfD start from.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import require
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import ModelConfig, Transformer, lora
from irl_jax.objectives.logprobs import masked_sum, next_token_logprobs
from irl_jax.train import Loss, optimizer_from_config, supervised_step

CORPORA = ("demonstrations", "base_corpus")


def default_config() -> ml_collections.ConfigDict:
    """``config.sft``: the training corpus."""
    return ml_collections.ConfigDict({"corpus": "demonstrations"})


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.sft``; raises ``ConfigError`` naming the field."""
    corpus = config.sft.corpus
    require(corpus in CORPORA, "sft.corpus", f"{corpus!r}; expected one of {CORPORA}")
    require(
        corpus == "demonstrations" or setup_lib.task_of(config) is not None,
        "sft.corpus",
        "base_corpus needs a synthetic task (data.task, no data.path)",
    )


def load_data(config: ml_collections.ConfigDict, tokenizer: Any):
    """Tokenized ``(train, eval)`` arrays of ``config.sft.corpus`` (the base corpus: held-out
    prompts' text for evaluation)."""
    if config.sft.corpus == "demonstrations":
        return setup_lib.demonstrations(config, tokenizer)
    task, data = setup_lib.task_of(config), config.data
    train = task.base_corpus(data.num_train, data.seed)
    held_out = task.base_corpus(data.num_eval, data.seed + 1, split="eval")
    tokenize = lambda texts: setup_lib.tokenize(config, tokenizer, texts, "sft")
    return tokenize(train), tokenize(held_out)


def token_logps(
    model: Transformer, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None = None
) -> jax.Array:
    """``[B, T]`` log π(x_t | x_<t) of an SFT batch (``input_ids``, ``attention_mask``);
    ``rng`` drives LoRA dropout in a training forward (``lora.dropout_rngs``)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model.apply({"params": params}, ids, mask, rngs=lora.dropout_rngs(model, rng)).logits
    return next_token_logprobs(logits, batch["input_ids"])


def make_loss_fn(cfg: ModelConfig):
    """``loss_fn(params, batch, rng, frozen) -> (Loss, metrics)``: the NLL of the ``loss_mask``
    tokens as a token mean (``objectives.sft.nll_loss``: a sum over the token count)."""
    model = Transformer(cfg)

    def loss_fn(params, batch, rng, frozen):
        del frozen
        nll = -masked_sum(token_logps(model, params, batch, rng), batch["loss_mask"], axis=None)
        tokens = batch["loss_mask"].sum().astype(np.float32)
        return Loss(nll, tokens), {"tokens": tokens}

    return loss_fn


def make_nll_fn(cfg: ModelConfig, mesh: jax.sharding.Mesh):
    """Jitted ``(params, batch) -> {"nll", "tokens"}`` per row (summed over its target
    tokens), for ``map_rows``."""
    model = Transformer(cfg)

    def nll(params, batch):
        logps = token_logps(model, params, batch)
        return {
            "nll": -masked_sum(logps, batch["loss_mask"]),
            "tokens": batch["loss_mask"].sum(-1).astype(np.float32),
        }

    return jax.jit(nll, out_shardings=sharding_lib.replicated(mesh))


def token_mean_nll(nll_fn, params: Any, arrays: dict[str, np.ndarray], batch_size: int, mesh):
    """Σ NLL / Σ tokens over every row of ``arrays`` (e.g. held-out demonstrations)."""
    rows = map_rows(nll_fn, params, arrays, batch_size, mesh)
    return float(rows["nll"].sum() / max(rows["tokens"].sum(), 1.0))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs SFT; returns the final evaluation metrics (``eval/nll`` and, on a synthetic task,
    ``eval/nll_gap`` to the demonstrator's entropy)."""
    setup = setup_lib.setup(config, load_data)
    train_arrays, eval_arrays = setup.data
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=())
    step = supervised_step(
        make_loss_fn(setup.model_config),
        optimizer,
        shardings,
        setup.mesh,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    nll_fn = make_nll_fn(setup.model_config, setup.mesh)

    def evaluate(state) -> tuple[dict[str, float], list]:
        params = state.models["policy"].params
        nll = token_mean_nll(nll_fn, params, eval_arrays, config.eval_batch_size, setup.mesh)
        metrics = {"nll": nll}
        if setup.task is not None and config.sft.corpus == "demonstrations":
            metrics["demonstrator_entropy"] = setup.task.demonstrator_entropy()
            metrics["nll_gap"] = metrics["nll"] - metrics["demonstrator_entropy"]
        return metrics, []

    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=train_arrays,
        evaluate=evaluate,
        description="sft",
    )
