"""SPIN, self-play fine-tuning (Chen et al. 2024; SURVEY §2), through the shared loop.

Round k starts by setting the reference π_ref := π_θ (the previous iterate), kept in
``state.extras["reference"]`` so that it is checkpointed and a resumed run continues the round
exactly. Within the round every step samples, for its batch of demonstration prompts, one
response y' ~ π_ref(· | x) (``fold_in(rng, step)``), and takes a DPO-family step with the
demonstration y as the chosen and the model's own sample y' as the rejected response:

    L = −log σ(β [log π(y|x)/π_ref(y|x) − log π(y'|x)/π_ref(y'|x)])      (loss "dpo")

Drawing the round's synthetic responses batch by batch from the fixed π_ref gives the same
distribution as generating them all at the round start, without storing them. The reference
log-probs of both responses come from one forward of π_ref in the same jitted call as the
sampling, and reach the loss as ``ref_*_logps`` columns (``direct``'s precomputed-reference
path). Evaluation: held-out demonstration NLL (``eval/nll``, the quantity SPIN's fixed point
minimizes) and ``common.policy_evaluator`` against the initial (SFT) policy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import common, direct, sft
from irl_jax.config import ConfigError, validate_config
from irl_jax.data.iterator import BatchIterator
from irl_jax.models import ModelConfig, Transformer
from irl_jax.sampling import sample
from irl_jax.train import create_train_state, make_train_step, optimizer_from_config
from irl_jax.train.state import TrainState

LOSSES = ("dpo", "robust_dpo", "ipo", "hinge")  # the pairwise losses with a reference
SEQUENCE = ("input_ids", "attention_mask", "loss_mask")


def default_config() -> ml_collections.ConfigDict:
    """``config.spin``: the pairwise loss, the round length and the sampling settings."""
    c = direct.loss_options()
    c.steps_per_round = 100  # π_ref := π_θ every this many steps
    c.max_new_tokens = 24  # length budget of the sampled (rejected) responses
    c.temperature = 1.0
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.spin``; raises ``ConfigError`` naming the field."""
    section = config.spin
    direct.validate_loss_options(section, "spin", LOSSES)
    for field in ("steps_per_round", "max_new_tokens"):
        if section[field] < 1:
            raise ConfigError(f"config.spin.{field}: must be >= 1, got {section[field]}")
    if not section.temperature > 0:
        raise ConfigError(f"config.spin.temperature: must be > 0, got {section.temperature}")


validate_paths = direct.validate_paths  # the starting policy must be an HF directory


def set_reference(state: TrainState) -> TrainState:
    """π_ref := π_θ: ``extras["reference"]`` becomes a copy of the params (own buffers)."""
    reference = jax.tree.map(jnp.copy, state.params)
    return state.replace(extras={**state.extras, "reference": reference})


def with_reference(state: TrainState, shardings: TrainState) -> tuple[TrainState, TrainState]:
    """The initial state with its reference, and the shardings with the reference's (those of
    the params)."""
    shardings = shardings.replace(extras={**shardings.extras, "reference": shardings.params})
    return jax.jit(set_reference, out_shardings=shardings)(state), shardings


def make_pairs_fn(cfg: ModelConfig, section: ml_collections.ConfigDict, pad_id: int):
    """``(reference, batch, rng) -> pairs``: the demonstrations as chosen, a sample of the
    reference on their prompts as rejected, and the reference log-probs of both."""
    model = Transformer(cfg)

    def make_pairs(reference, batch, rng):
        output = sample(
            cfg,
            reference,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=rng,
            max_new_tokens=section.max_new_tokens,
            temperature=section.temperature,
        )
        rejected = direct.splice(
            batch["input_ids"],
            direct.prompt_lengths(batch["loss_mask"]),
            output.response_ids,
            output.response_mask,
            pad_id=pad_id,
        )
        pairs = {f"chosen_{k}": batch[k] for k in SEQUENCE}
        pairs.update({f"rejected_{k}": v for k, v in rejected.items()})
        ref_chosen, ref_rejected = direct.pair_logps(model, reference, pairs)
        return {**pairs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}

    return make_pairs


def make_spin_step(
    cfg: ModelConfig,
    section: ml_collections.ConfigDict,
    optimizer,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    pad_id: int,
    schedule=None,
    grad_accum_steps: int = 1,
):
    """``train_step(state, batch) -> (state, metrics)`` for ``train_loop`` (a Python function:
    new round → sample rejected responses → jitted DPO step). ``shardings`` must include
    ``extras["reference"]`` (see ``with_reference``). One ``train_step`` drives one run: it
    counts steps on the host from the state of its first call."""
    dpo_step = make_train_step(
        direct.make_loss_fn(cfg, section),
        optimizer,
        shardings,
        mesh,
        schedule=schedule,
        grad_accum_steps=grad_accum_steps,
    )
    make_pairs = make_pairs_fn(cfg, section, pad_id)

    def pairs_and_length(reference, batch, rng):
        pairs = make_pairs(reference, batch, rng)
        return pairs, pairs["rejected_loss_mask"].sum(-1).mean(dtype=jnp.float32)

    shardings_out = (sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh))
    rollout = jax.jit(pairs_and_length, out_shardings=shardings_out)
    start_round = jax.jit(set_reference, donate_argnums=0, out_shardings=shardings)

    # The step count on the host: read from the state once (the first call comes after any
    # restore), then counted here, so that no step waits for the device to say its number.
    host_step: list[int] = []

    def train_step(state, batch):
        if not host_step:
            host_step.append(int(state.step))
        if host_step[0] % section.steps_per_round == 0:
            state = start_round(state)
        host_step[0] += 1
        rng = jax.random.fold_in(state.step_rng(), 1)  # this step's sampling stream
        with jax.set_mesh(mesh):
            pairs, rejected_tokens = rollout(state.extras["reference"], batch, rng)
        state, metrics = dpo_step(state, pairs, None)
        return state, {**metrics, "rejected_tokens": rejected_tokens}

    return train_step


def left_padded_prompts(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prompts of training-layout rows (the tokens before the first ``loss_mask`` token),
    left-padded to the longest: ``prompt_ids``/``prompt_mask`` ``[N, P]``, as the sampler wants."""
    lengths = np.asarray(direct.prompt_lengths(arrays["loss_mask"]))
    width = max(int(lengths.max()), 1)
    source = np.arange(width)[None, :] - (width - lengths)[:, None]
    mask = (source >= 0).astype(np.int32)
    ids = np.take_along_axis(arrays["input_ids"], np.maximum(source, 0), axis=1) * mask
    return {"prompt_ids": ids.astype(np.int32), "prompt_mask": mask}


def load_data(config: ml_collections.ConfigDict, tokenizer: Any):
    """``(train, eval)`` demonstration arrays; train also carries the left-padded prompts
    ``prompt_ids``/``prompt_mask`` that the reference samples from."""
    train_arrays, eval_arrays = sft.load_data(config, tokenizer)
    return {**train_arrays, **left_padded_prompts(train_arrays)}, eval_arrays


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs SPIN; returns the final evaluation metrics."""
    validate_config(config)
    section = config.spin
    mesh = common.make_mesh(config)
    tokenizer = common.load_tokenizer(config)
    cfg = common.model_config(config, tokenizer)
    init_fn, params = common.policy_init(config, cfg, mesh)
    train_arrays, eval_arrays = load_data(config, tokenizer)
    length = config.data.max_length
    if train_arrays["prompt_ids"].shape[1] + section.max_new_tokens > length:
        logging.warning(
            "longest prompt (%d) + spin.max_new_tokens (%d) > data.max_length (%d): long "
            "samples are cut",
            train_arrays["prompt_ids"].shape[1], section.max_new_tokens, length,
        )  # fmt: skip
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = create_train_state(init_fn, optimizer, mesh, seed=config.seed, params=params)
    state, shardings = with_reference(state, shardings)
    initial = common.copy_params(state.params, shardings.params)  # the SFT policy, for eval
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_ids[0]
    train_step = make_spin_step(
        cfg,
        section,
        optimizer,
        shardings,
        mesh,
        pad_id=pad_id,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )
    eval_step = sft.make_eval_step(cfg, mesh, shardings.params)
    policy_eval = common.policy_evaluator(config, cfg, tokenizer, initial, mesh)

    def evaluate(params) -> tuple[dict[str, float], list[dict[str, Any]]]:
        sums = common.evaluate_sums(eval_step, params, eval_arrays, config.eval_batch_size, mesh)
        metrics, samples = policy_eval(params)
        return {"eval/nll": sums["nll_sum"] / max(sums["tokens"], 1.0), **metrics}, samples

    state, final = common.run_loop(
        config,
        workdir,
        state=state,
        shardings=shardings,
        train_step=train_step,
        batches=BatchIterator(train_arrays, config.batch_size, seed=config.seed),
        mesh=mesh,
        evaluate=evaluate,
        description="spin",
    )
    if config.export:
        common.export(workdir, cfg, state.params, tokenizer)
    return final
