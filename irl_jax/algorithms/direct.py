"""Direct alignment (SURVEY §5): DPO, cDPO, robust DPO, IPO, hinge, SimPO, ORPO and KTO.

The policy starts from ``config.init_from`` (an SFT export) or ``config.model`` (a Hugging Face
directory); the reference π_ref is a frozen copy of those initial params, kept in the state
(``state.frozen["reference"]``). The losses are the pure functions of
``irl_jax.objectives.direct``; this module wires them to the model and the loop.

* **One forward per step.** Chosen and rejected rows are interleaved ``[c₀, r₀, c₁, r₁, …]`` into
  one ``[2B, T]`` batch (``pair_logps``); unlike ``[chosen; rejected]`` concatenation each
  device keeps the rows of its own pairs, so no batch shuffle crosses devices.
* **Reference log-probs** (``direct.precompute_reference``): ``True`` runs one jitted pass over
  the tokenized arrays before training and stores ``ref_<side>_logps`` columns that the batch
  iterator then carries (the reference params are then only used by the policy evaluation);
  ``False`` recomputes them every step from the frozen reference. SimPO and ORPO use no
  reference.
* **Same-prompt pairs only.** The DPO family's implicit reward β log π/π_ref equals the reward up
  to β log Z(x), which cancels between two responses to the *same* prompt x; for cross-prompt
  pairs it does not, so they are rejected (reward models can use them).
* **KTO** reads unpaired rows. Its reference point z₀ needs mismatched pairs (x_i, y_j): they are
  built once when the data is loaded (``data.sequences.mismatched_pairs``: row i's prompt with
  the response of row π(i), π a random cyclic permutation) as ``kl_*`` columns, so their
  reference log-probs can be precomputed like the others; z₀ is then the batch mean over the
  rows' mismatched pairs, from a separate stop-gradient forward.
* **Evaluation** (``eval/...``): on held-out preference pairs (held-out prompts), the loss and
  the implicit-reward accuracy against the labels (``accuracy``) and against the gold reward
  (``gold_accuracy``, synthetic tasks); plus the policy evaluation (gold reward of samples, KL
  to the reference, win rate against the reference = the SFT policy).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms.implicit_reward import (
    PAIR,
    PAIRWISE_LOSSES,
    add_reference_logps,
    make_eval_fn,
    pair_logps,
    pair_metrics,
    pair_tokens,
    pairwise_loss,
    reference_logps,
    uses_reference,
)
from irl_jax.config import ConfigError, require
from irl_jax.data import detect_format, load_rows
from irl_jax.data.sequences import cyclic_partners, mismatched_pairs
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import ModelConfig, Transformer
from irl_jax.models import source as model_source
from irl_jax.objectives import direct as objectives
from irl_jax.train import Loss, optimizer_from_config, supervised_step
from irl_jax.train.state import attach

LOSSES = (*PAIRWISE_LOSSES, "kto")


def loss_options() -> ml_collections.ConfigDict:
    """The options of the pairwise losses (shared with SPIN)."""
    return ml_collections.ConfigDict(
        {
            "loss": "dpo",
            "beta": 0.1,
            "label_smoothing": 0.0,  # ε of cDPO (dpo) and robust DPO (robust_dpo)
            "ipo_average": True,  # IPO on per-token averaged log-ratios (the IPO authors', TRL's)
            "simpo_gamma": 0.5,  # SimPO's target margin γ
            "orpo_lambda": 0.1,  # ORPO's odds-ratio weight λ
        }
    )


def default_config() -> ml_collections.ConfigDict:
    """``config.direct``: the loss, its options, the reference mode and the synthetic data."""
    c = loss_options()
    c.kto_desirable_weight = 1.0
    c.kto_undesirable_weight = 1.0
    c.precompute_reference = True
    # Synthetic preference labels (config.data.num_train pairs): P(y₁ ≻ y₂) = σ(β_ann Δr*).
    c.beta_ann = 5.0
    c.pairing = "same_prompt"  # the only pairing whose log Z(x) cancels
    c.expert_fraction = 0.25  # share of candidates drawn from the demonstrator
    return c


def validate_loss_options(section: ml_collections.ConfigDict, where: str, losses) -> None:
    """Checks ``loss_options`` fields of ``section`` (``config.<where>``)."""
    require(section.loss in losses, f"{where}.loss", f"{section.loss!r} is not one of {losses}")
    require(section.beta > 0, f"{where}.beta", f"must be positive, got {section.beta}")
    smoothing = section.label_smoothing
    require(
        0 <= smoothing < 0.5, f"{where}.label_smoothing", f"must be in [0, 0.5), got {smoothing}"
    )
    require(
        smoothing == 0 or section.loss in ("dpo", "robust_dpo"),
        f"{where}.label_smoothing",
        f"applies to dpo and robust_dpo only, not {section.loss!r}",
    )
    require(section.simpo_gamma >= 0, f"{where}.simpo_gamma", "must be >= 0")
    require(section.orpo_lambda >= 0, f"{where}.orpo_lambda", "must be >= 0")


CROSS_PROMPT_ERROR = (
    "cross-prompt pairs compare responses to different prompts x, x', so the log Z(x) of the "
    "DPO family's implicit reward β log π/π_ref does not cancel; use same-prompt pairs "
    "(cross-prompt pairs can train a reward model: config.reward_model.pairing)"
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.direct``; raises ``ConfigError`` naming the field."""
    section = config.direct
    validate_loss_options(section, "direct", LOSSES)
    for field in ("kto_desirable_weight", "kto_undesirable_weight"):
        require(section[field] > 0, f"direct.{field}", f"must be positive, got {section[field]}")
    require(section.beta_ann > 0, "direct.beta_ann", f"must be positive, got {section.beta_ann}")
    require(
        section.pairing in ("same_prompt", "cross_prompt"),
        "direct.pairing",
        f"{section.pairing!r} is not 'same_prompt' or 'cross_prompt'",
    )
    require(section.pairing == "same_prompt", "direct.pairing", CROSS_PROMPT_ERROR)
    require(0 <= section.expert_fraction <= 1, "direct.expert_fraction", "must be in [0, 1]")


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """The policy (and reference) must come from weights: an SFT export or a model directory."""
    require(
        model_source.is_hf_dir(model_source.weights_dir(config.model, config.init_from)),
        "init_from",
        f"{config.init_from!r} is not a Hugging Face directory with a config.json; direct "
        "alignment starts from an SFT policy: run `python -m experiments.run "
        "--config=experiments/configs/sft.py --workdir=runs/sft` and set "
        "--config.init_from=runs/sft/export (or set config.model to a model directory)",
    )


def make_loss_fn(cfg: ModelConfig, section: ml_collections.ConfigDict, *, on_the_fly: bool):
    """``loss_fn(params, batch, rng, frozen) -> (Loss, metrics)``, the mean over rows.

    Pairwise losses read a preference batch (``{chosen,rejected}_{input_ids,attention_mask,
    loss_mask}``); KTO an unpaired one (``input_ids``, ``attention_mask``, ``loss_mask``,
    ``label``, the ``kl_*`` mismatched pairs). Reference log-probs come from
    ``frozen["reference"]`` when ``on_the_fly``, else from the ``ref_*_logps`` columns.
    """
    model = Transformer(cfg)

    def pairwise(params, batch, reference, rng):
        logps = pair_logps(model, params, batch, rng=rng)
        ref = (
            reference_logps(model, batch, reference, PAIR) if uses_reference(section.loss) else None
        )
        losses, metrics = pairwise_loss(section, logps, ref, pair_tokens(batch))
        metrics = {**metrics, "chosen_logps": logps[0], "rejected_logps": logps[1]}
        return Loss.mean(losses), {name: value.mean() for name, value in metrics.items()}

    def kto(params, batch, reference, rng):
        (logps,) = pair_logps(model, params, batch, ("",), rng=rng)
        (kl_logps,) = pair_logps(model, jax.lax.stop_gradient(params), batch, ("kl_",))
        ref_logps, ref_kl_logps = reference_logps(model, batch, reference, ("", "kl_"))
        z0 = objectives.kto_reference_point(kl_logps, ref_kl_logps)
        losses, metrics = objectives.kto(
            logps,
            ref_logps,
            batch["label"],
            z0,
            beta=section.beta,
            desirable_weight=section.kto_desirable_weight,
            undesirable_weight=section.kto_undesirable_weight,
        )
        desirable = metrics["desirable"]
        mean_where = lambda x, w: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
        return Loss.mean(losses), {
            "reference_point": z0,  # = max(0, KL estimate to the reference on mismatched pairs)
            "desirable_reward": mean_where(metrics["reward"], desirable),
            "undesirable_reward": mean_where(metrics["reward"], 1 - desirable),
            "desirable_fraction": desirable.mean(),
        }

    def loss_fn(params, batch, rng, frozen):
        reference = frozen["reference"] if on_the_fly else None
        return (kto if section.loss == "kto" else pairwise)(params, batch, reference, rng)

    return loss_fn


# ----------------------------------------------------------------------------- data


def _check_same_prompt(config: ml_collections.ConfigDict, path: str) -> None:
    raw = load_rows(path, dict(config.data.column_map) or None)
    if detect_format(raw.columns, source=raw.source).name == "cross_prompt_preference":
        raise ConfigError(f"config.data.path: {path!r} holds {CROSS_PROMPT_ERROR}")


def load_data(
    config: ml_collections.ConfigDict, tokenizer: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Tokenized ``(train, eval)`` arrays: preference pairs (KTO: unpaired rows plus their
    mismatched pairs) for training; held-out preference pairs for evaluation, with ``margin`` =
    the gold-reward difference on a synthetic task. ``eval`` is ``None`` for KTO on a file
    without ``data.eval_path`` (a preference file)."""
    section, data = config.direct, config.data
    kto = section.loss == "kto"
    kind = "unpaired" if kto else "preference"
    tokenize = lambda source, kind, **options: setup_lib.tokenize(
        config, tokenizer, source, kind, **options
    )
    task = setup_lib.task_of(config)
    if task is None:
        if not kto:
            _check_same_prompt(config, data.path)
        train = tokenize(data.path, kind)
        eval_source = data.eval_path or (None if kto else data.path)
        if eval_source:
            _check_same_prompt(config, eval_source)
        evaluation = tokenize(eval_source, "preference") if eval_source else None
    else:
        labels = dict(beta_ann=section.beta_ann, expert_fraction=section.expert_fraction)
        if kto:
            source = task.unpaired(data.num_train, data.seed, **labels)
        else:
            source, stats = task.preferences(data.num_train, data.seed, **labels)
            logging.info("training pairs: %s", stats)
        train = tokenize(source, kind)
        held_out, _ = task.preferences(data.num_eval, data.seed + 1, **labels, split="eval")
        evaluation = tokenize(held_out, "preference", margin_from_scores=True)
    if kto:
        pad = tokenizer.pad_token_id
        pad = pad if pad is not None else tokenizer.eos_token_id
        partner = cyclic_partners(len(train["input_ids"]), data.seed)
        train.update(mismatched_pairs(train, partner, pad))
    return train, evaluation


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs direct alignment; returns the final ``eval/...`` metrics."""
    section = config.direct
    setup = setup_lib.setup(config, load_data)
    train_arrays, eval_arrays = setup.data
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = setup_lib.policy_state(setup, optimizer)
    reference = uses_reference(section.loss)
    on_the_fly = reference and not section.precompute_reference
    if reference and section.precompute_reference:
        batch_size, cfg = config.eval_batch_size, setup.model_config
        prefixes = ("", "kl_") if section.loss == "kto" else PAIR
        ref_params = attach(state).frozen["reference"]  # full params, also under LoRA
        train_arrays = add_reference_logps(
            cfg, ref_params, train_arrays, prefixes, batch_size, setup.mesh
        )
        if eval_arrays is not None:
            eval_arrays = add_reference_logps(
                cfg, ref_params, eval_arrays, PAIR, batch_size, setup.mesh
            )
    step = supervised_step(
        make_loss_fn(setup.model_config, section, on_the_fly=on_the_fly),
        optimizer,
        shardings,
        setup.mesh,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    eval_fn = jax.jit(
        make_eval_fn(setup.model_config, section, with_gold=setup.task is not None),
        out_shardings=sharding_lib.replicated(setup.mesh),
    )
    policy_eval = setup_lib.policy_evaluator(setup)

    def evaluate(state) -> tuple[dict[str, float], list[dict[str, Any]]]:
        params, ref_params = state.models["policy"].params, state.frozen["reference"]
        metrics = {}
        if eval_arrays is not None:
            pairs = lambda p, b: eval_fn(p, b, ref_params if on_the_fly else None)
            rows = map_rows(pairs, params, eval_arrays, config.eval_batch_size, setup.mesh)
            metrics.update(pair_metrics(rows))
        policy_metrics, samples = policy_eval(params, ref_params)
        return {**metrics, **policy_metrics}, samples

    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=train_arrays,
        evaluate=evaluate,
        description=section.loss,
    )
