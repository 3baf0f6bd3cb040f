"""SPIN, self-play fine-tuning (Chen et al. 2024; SURVEY §2), through the shared loop.

Round k starts by setting the reference π_ref := π_θ (the previous iterate), kept in
``state.frozen["reference"]`` so that it is checkpointed and a resumed run continues the round
exactly. Within the round every step samples, for its batch of demonstration prompts, one
response y' ~ π_ref(· | x) (``config.sampling``), and takes a DPO-family step with the
demonstration y as the chosen and the model's own sample y' as the rejected response:

    L = −log σ(β [log π(y|x)/π_ref(y|x) − log π(y'|x)/π_ref(y'|x)])      (loss "dpo")

Drawing the round's synthetic responses batch by batch from the fixed π_ref gives the same
distribution as generating them all at the round start, without storing them. One jitted step
does it all: the round start (a ``lax.cond``), the sample, the reference log-probs of both
responses (one forward of π_ref, as ``ref_*_logps`` columns: ``direct``'s precomputed-reference
path) and the update. Evaluation: held-out demonstration NLL (``eval/nll``, the quantity SPIN's
fixed point minimizes) and the policy evaluation against the initial (SFT) policy, kept as
``state.frozen["initial"]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from irl_jax import rollout
from irl_jax.algorithms import direct, sft
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms.implicit_reward import pair_logps
from irl_jax.config import require
from irl_jax.data.sequences import left_padded_prompts, prompt_lengths, splice
from irl_jax.models import ModelConfig, Transformer
from irl_jax.train import TrainState, jit_step, make_update, optimizer_from_config

LOSSES = ("dpo", "robust_dpo", "ipo", "hinge")  # the pairwise losses with a reference
SEQUENCE = ("input_ids", "attention_mask", "loss_mask")


def default_config() -> ml_collections.ConfigDict:
    """``config.spin``: the pairwise loss and the round length (the samples follow
    ``config.sampling``)."""
    c = direct.loss_options()
    c.steps_per_round = 100  # π_ref := π_θ every this many steps
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.spin`` and the sampling it needs; raises ``ConfigError`` naming the
    field."""
    section = config.spin
    direct.validate_loss_options(section, "spin", LOSSES)
    require(
        section.steps_per_round >= 1,
        "spin.steps_per_round",
        f"must be >= 1, got {section.steps_per_round}",
    )
    require(
        config.sampling.group_size == 1,
        "sampling.group_size",
        f"SPIN draws one rejected response per demonstration, got {config.sampling.group_size}",
    )


validate_paths = direct.validate_paths  # the starting policy must be an HF directory


def make_pairs_fn(cfg: ModelConfig, settings: rollout.SamplingSettings, pad_id: int):
    """``(reference, batch, rng) -> pairs``: the demonstrations as chosen, a sample of the
    reference on their prompts as rejected, and the reference log-probs of both."""
    model = Transformer(cfg)

    def make_pairs(reference, batch, rng):
        samples = rollout.sample(
            cfg, reference, batch["prompt_ids"], batch["prompt_mask"], rng=rng, settings=settings
        )
        rejected = splice(
            batch["input_ids"],
            prompt_lengths(batch["loss_mask"]),
            samples.response_ids,
            samples.response_mask,
            pad_id=pad_id,
        )
        pairs = {f"chosen_{k}": batch[k] for k in SEQUENCE}
        pairs.update({f"rejected_{k}": v for k, v in rejected.items()})
        ref_chosen, ref_rejected = pair_logps(model, reference, pairs)
        return {**pairs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}

    return make_pairs


def make_spin_step(
    cfg: ModelConfig,
    config: ml_collections.ConfigDict,
    optimizer,
    shardings: TrainState,
    mesh: jax.sharding.Mesh,
    *,
    pad_id: int,
    schedule=None,
):
    """The jitted ``step(state, batch) -> (state, metrics)``: at a round start π_ref := π_θ,
    then sample the rejected responses from π_ref and take one DPO-family update of the
    policy."""
    section = config.spin
    update = make_update(
        direct.make_loss_fn(cfg, section, on_the_fly=False),
        optimizer,
        shardings.models["policy"],
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    make_pairs = make_pairs_fn(cfg, rollout.SamplingSettings.from_config(config.sampling), pad_id)

    def step(state: TrainState, batch):
        policy = state.models["policy"]
        reference = jax.lax.cond(
            state.step % section.steps_per_round == 0,
            lambda: policy.params,
            lambda: state.frozen["reference"],
        )
        sample_key, update_key = jax.random.split(state.step_rng())
        pairs = make_pairs(reference, batch, sample_key)
        policy, metrics = update(policy, pairs, update_key, {})
        metrics["rejected_tokens"] = pairs["rejected_loss_mask"].sum(-1).mean(dtype=jnp.float32)
        frozen = {**state.frozen, "reference": reference}
        return state.with_model("policy", policy).replace(
            step=state.step + 1, frozen=frozen
        ), metrics

    return jit_step(step, shardings, mesh)


def load_data(config: ml_collections.ConfigDict, tokenizer: Any):
    """``(train, eval)`` demonstration arrays; train also carries the left-padded prompts
    ``prompt_ids``/``prompt_mask`` that the reference samples from."""
    train_arrays, eval_arrays = setup_lib.demonstrations(config, tokenizer)
    return {**train_arrays, **left_padded_prompts(train_arrays)}, eval_arrays


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs SPIN; returns the final evaluation metrics."""
    setup = setup_lib.setup(config, load_data)
    train_arrays, eval_arrays = setup.data
    cfg, length = setup.model_config, config.data.max_length
    if train_arrays["prompt_ids"].shape[1] + config.sampling.max_new_tokens > length:
        logging.warning(
            "longest prompt (%d) + sampling.max_new_tokens (%d) > data.max_length (%d): long "
            "samples are cut",
            train_arrays["prompt_ids"].shape[1], config.sampling.max_new_tokens, length,
        )  # fmt: skip
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=("reference", "initial"))
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_ids[0]
    step = make_spin_step(
        cfg, config, optimizer, shardings, setup.mesh, pad_id=pad_id, schedule=schedule
    )
    nll_fn = sft.make_nll_fn(cfg, setup.mesh)
    policy_eval = setup_lib.policy_evaluator(setup)

    def evaluate(state) -> tuple[dict[str, float], list[dict[str, Any]]]:
        params = state.models["policy"].params
        nll = sft.token_mean_nll(nll_fn, params, eval_arrays, config.eval_batch_size, setup.mesh)
        metrics, samples = policy_eval(params, state.frozen["initial"])
        return {"eval/nll": nll, **metrics}, samples

    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=train_arrays,
        evaluate=evaluate,
        description="spin",
    )
