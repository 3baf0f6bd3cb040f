"""Direct alignment (SURVEY §5): DPO, cDPO, robust DPO, IPO, hinge, SimPO, ORPO and KTO.

The policy starts from ``config.init_from`` (an SFT export) or ``config.model`` (a Hugging Face
directory); the reference π_ref is a frozen copy of those initial params. The losses are the pure
functions of ``irl_jax.objectives.direct``; this module wires them to the model and the loop.

* **One forward per step.** Chosen and rejected rows are interleaved ``[c₀, r₀, c₁, r₁, …]`` into
  one ``[2B, T]`` batch (``pair_logps``); unlike ``[chosen; rejected]`` concatenation each
  device keeps the rows of its own pairs, so no batch shuffle crosses devices.
* **Reference log-probs** (``direct.precompute_reference``): ``True`` runs one jitted pass over
  the tokenized arrays before training and stores ``ref_<side>_logps`` columns that the batch
  iterator then carries (the reference params are then only used by the policy evaluation);
  ``False`` recomputes them every step from the frozen params passed to the step as ``frozen``.
  SimPO and ORPO use no reference.
* **KTO** reads unpaired rows. Its reference point z₀ needs mismatched pairs (x_i, y_j): they are
  built once when the data is loaded (``mismatched_pairs``: row i's prompt with the response of
  row π(i), π a random cyclic permutation) as ``kl_*`` columns, so their reference log-probs can
  be precomputed like the others; z₀ is then the batch mean over the rows' mismatched pairs, from
  a separate stop-gradient forward.
* **Evaluation** (``eval/...``): on held-out preference pairs, the loss and the implicit-reward
  accuracy against the labels (``accuracy``) and against the gold reward (``gold_accuracy``,
  synthetic tasks); plus ``common.policy_evaluator`` (gold reward of samples, KL to the
  reference, win rate against the reference = the SFT policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import common
from irl_jax.config import ConfigError, validate_config
from irl_jax.data.iterator import BatchIterator
from irl_jax.evaluation.reward import map_rows
from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives import direct as objectives
from irl_jax.objectives.logprobs import next_token_logprobs, sequence_logprobs
from irl_jax.train import create_train_state, make_train_step, optimizer_from_config

Array = jax.Array
PAIRWISE_LOSSES = ("dpo", "robust_dpo", "ipo", "hinge", "simpo", "orpo")
LOSSES = (*PAIRWISE_LOSSES, "kto")
REFERENCE_FREE = ("simpo", "orpo")
PAIR = ("chosen_", "rejected_")  # column prefixes of a preference batch


def loss_options() -> ml_collections.ConfigDict:
    """The options of the pairwise losses (shared with SPIN)."""
    return ml_collections.ConfigDict(
        {
            "loss": "dpo",
            "beta": 0.1,
            "label_smoothing": 0.0,  # ε of cDPO (dpo) and robust DPO (robust_dpo)
            "ipo_average": False,  # IPO on per-token averaged log-ratios (the IPO authors')
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
    c.pairing = "same_prompt"  # or "cross_prompt"
    c.expert_fraction = 0.25  # share of candidates drawn from the demonstrator
    return c


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def validate_loss_options(section: ml_collections.ConfigDict, where: str, losses) -> None:
    """Checks ``loss_options`` fields of ``section`` (``config.<where>``)."""
    _require(section.loss in losses, f"{where}.loss", f"{section.loss!r} is not one of {losses}")
    _require(section.beta > 0, f"{where}.beta", f"must be positive, got {section.beta}")
    smoothing = section.label_smoothing
    _require(
        0 <= smoothing < 0.5, f"{where}.label_smoothing", f"must be in [0, 0.5), got {smoothing}"
    )
    _require(
        smoothing == 0 or section.loss in ("dpo", "robust_dpo"),
        f"{where}.label_smoothing",
        f"applies to dpo and robust_dpo only, not {section.loss!r}",
    )
    _require(section.simpo_gamma >= 0, f"{where}.simpo_gamma", "must be >= 0")
    _require(section.orpo_lambda >= 0, f"{where}.orpo_lambda", "must be >= 0")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.direct``; raises ``ConfigError`` naming the field."""
    section = config.direct
    validate_loss_options(section, "direct", LOSSES)
    for field in ("kto_desirable_weight", "kto_undesirable_weight"):
        _require(section[field] > 0, f"direct.{field}", f"must be positive, got {section[field]}")
    _require(section.beta_ann > 0, "direct.beta_ann", f"must be positive, got {section.beta_ann}")
    _require(
        section.pairing in ("same_prompt", "cross_prompt"),
        "direct.pairing",
        f"{section.pairing!r} is not 'same_prompt' or 'cross_prompt'",
    )
    _require(0 <= section.expert_fraction <= 1, "direct.expert_fraction", "must be in [0, 1]")


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """The policy (and reference) must come from weights: an SFT export or a model directory."""
    _require(
        common.is_hf_dir(common.model_source(config)),
        "init_from",
        f"{config.init_from!r} is not a Hugging Face directory with a config.json; direct "
        "alignment starts from an SFT policy: run `python -m experiments.run "
        "--config=experiments/configs/sft.py --workdir=runs/sft` and set "
        "--config.init_from=runs/sft/export (or set config.model to a model directory)",
    )


def uses_reference(loss: str) -> bool:
    return loss not in REFERENCE_FREE


# ----------------------------------------------------------------------------- log-probs


def pair_logps(
    model: Transformer, params: Any, batch: dict[str, Array], prefixes: Sequence[str] = PAIR
) -> tuple[Array, ...]:
    """log π(y | x) ``[B]`` of each sequence ``<prefix>input_ids`` in ONE forward.

    The K sequences of a row are interleaved into ``[B·K, T]`` rows (row-major), so a device's
    rows stay on it; the response is the ``<prefix>loss_mask`` tokens.
    """
    stacked = {
        name: jnp.stack([batch[p + name] for p in prefixes], axis=1)
        for name in ("input_ids", "attention_mask", "loss_mask")
    }
    rows, length = stacked["input_ids"].shape[0] * len(prefixes), stacked["input_ids"].shape[-1]
    flat = {name: x.reshape(rows, length) for name, x in stacked.items()}
    logits = model.apply({"params": params}, flat["input_ids"], flat["attention_mask"]).logits
    logps = sequence_logprobs(next_token_logprobs(logits, flat["input_ids"]), flat["loss_mask"])
    logps = logps.reshape(-1, len(prefixes))
    return tuple(logps[:, k] for k in range(len(prefixes)))


def _pair_tokens(batch: dict[str, Array]) -> tuple[Array, Array]:
    """Response lengths |y_w|, |y_l| ``[B]``."""
    return tuple(batch[p + "loss_mask"].sum(-1).astype(jnp.float32) for p in PAIR)


def _reference_logps(model, batch, frozen, prefixes: Sequence[str]) -> tuple[Array, ...]:
    """Precomputed ``ref_<prefix>logps`` columns, or a forward of the frozen reference."""
    if frozen is None:
        return tuple(batch[f"ref_{p}logps"] for p in prefixes)
    return jax.lax.stop_gradient(pair_logps(model, frozen, batch, prefixes))


def pairwise_loss(
    section: ml_collections.ConfigDict,
    logps: tuple[Array, Array],
    ref_logps: tuple[Array, Array] | None,
    tokens: tuple[Array, Array],
) -> tuple[Array, dict[str, Array]]:
    """The per-pair losses ``[B]`` and metrics of ``section.loss`` (see ``objectives.direct``)."""
    loss, beta = section.loss, section.beta
    if loss == "simpo":
        return objectives.simpo(*logps, *tokens, beta=beta, gamma=section.simpo_gamma)
    if loss == "orpo":
        return objectives.orpo(*logps, *tokens, lam=section.orpo_lambda)
    args = (*logps, *ref_logps)
    if loss == "dpo":
        return objectives.dpo(*args, beta=beta, label_smoothing=section.label_smoothing)
    if loss == "robust_dpo":
        return objectives.robust_dpo(*args, beta=beta, label_smoothing=section.label_smoothing)
    if loss == "ipo":
        averaged = dict(zip(("chosen_tokens", "rejected_tokens"), tokens))
        return objectives.ipo(*args, beta=beta, **(averaged if section.ipo_average else {}))
    if loss == "hinge":
        return objectives.hinge(*args, beta=beta)
    raise ValueError(f"{loss!r} is not a pairwise loss ({PAIRWISE_LOSSES})")


def make_loss_fn(cfg: ModelConfig, section: ml_collections.ConfigDict):
    """``loss_fn(params, batch, rng, frozen) -> (mean loss, metrics)``.

    Pairwise losses read a preference batch (``{chosen,rejected}_{input_ids,attention_mask,
    loss_mask}``); KTO an unpaired one (``input_ids``, ``attention_mask``, ``loss_mask``,
    ``label``, the ``kl_*`` mismatched pairs). Reference log-probs come from ``ref_*_logps``
    columns when ``frozen`` is ``None``, else from the frozen reference params ``frozen``.
    """
    model = Transformer(cfg)

    def pairwise(params, batch, frozen):
        logps = pair_logps(model, params, batch)
        ref = _reference_logps(model, batch, frozen, PAIR) if uses_reference(section.loss) else None
        losses, metrics = pairwise_loss(section, logps, ref, _pair_tokens(batch))
        metrics = {**metrics, "chosen_logps": logps[0], "rejected_logps": logps[1]}
        return losses.mean(), {name: value.mean() for name, value in metrics.items()}

    def kto(params, batch, frozen):
        (logps,) = pair_logps(model, params, batch, ("",))
        (kl_logps,) = pair_logps(model, jax.lax.stop_gradient(params), batch, ("kl_",))
        ref_logps, ref_kl_logps = _reference_logps(model, batch, frozen, ("", "kl_"))
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
        return losses.mean(), {
            "reference_point": z0,  # = max(0, KL estimate to the reference on mismatched pairs)
            "desirable_reward": mean_where(metrics["reward"], desirable),
            "undesirable_reward": mean_where(metrics["reward"], 1 - desirable),
            "desirable_fraction": desirable.mean(),
        }

    def loss_fn(params, batch, rng, frozen):
        del rng
        return (kto if section.loss == "kto" else pairwise)(params, batch, frozen)

    return loss_fn


# ----------------------------------------------------------------------------- data


def add_reference_logps(
    cfg: ModelConfig,
    ref_params: Any,
    arrays: dict[str, np.ndarray],
    prefixes: Sequence[str],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """``arrays`` plus ``ref_<prefix>logps`` ``[N]`` float32 columns: one pass of the reference."""
    model = Transformer(cfg)

    def logps(params, batch):
        return {
            f"ref_{p}logps": x for p, x in zip(prefixes, pair_logps(model, params, batch, prefixes))
        }

    jitted = jax.jit(logps, out_shardings=sharding_lib.replicated(mesh))
    return {**arrays, **map_rows(jitted, ref_params, arrays, batch_size, mesh)}


def prompt_lengths(loss_mask: Array) -> Array:
    """``[B, T] -> [B]``: tokens before the first response (``loss_mask``) token."""
    return jnp.argmax(loss_mask > 0, axis=1).astype(jnp.int32)


def splice(
    input_ids: Array,
    prompt_length: Array,
    response_ids: Array,
    response_mask: Array,
    response_start: Array | int = 0,
    response_loss_mask: Array | None = None,
    *,
    pad_id: int,
) -> dict[str, Array]:
    """Each row's prompt ``input_ids[i, :p_i]`` followed by the response tokens
    ``response_ids[i, s_i:]`` (where ``response_mask``), right-padded and cut at T.

    Jittable (works on numpy arrays too). The response side is any ``[B, R]`` layout: a
    sampler's output (s = 0), or other rows of the training layout (s = their prompt lengths).

    Returns:
      ``input_ids``, ``attention_mask`` and ``loss_mask`` ``[B, T]`` int32; ``loss_mask`` is
      ``response_loss_mask`` (default ``response_mask``) on the response tokens.
    """
    length, width = input_ids.shape[1], response_ids.shape[1]
    position = jnp.arange(length)[None, :]
    in_prompt = position < prompt_length[:, None]
    source = position - prompt_length[:, None] + jnp.asarray(response_start).reshape(-1, 1)
    in_response = ~in_prompt & (source < width)
    source = jnp.clip(source, 0, width - 1)
    take = lambda x: jnp.where(in_response, jnp.take_along_axis(x, source, axis=1), 0)
    attention = jnp.where(in_prompt, 1, take(response_mask)).astype(jnp.int32)
    ids = jnp.where(in_prompt, input_ids, take(response_ids))
    targets = response_mask if response_loss_mask is None else response_loss_mask
    return {
        "input_ids": jnp.where(attention > 0, ids, pad_id).astype(jnp.int32),
        "attention_mask": attention,
        "loss_mask": take(targets).astype(jnp.int32),
    }


def cyclic_partners(rows: int, seed: int) -> np.ndarray:
    """π(i) for KTO's mismatched pairs: one random cycle through all rows, so π(i) ≠ i."""
    if rows < 2:
        raise ValueError(f"KTO's mismatched pairs need at least 2 rows, got {rows}")
    order = np.random.default_rng([seed, 17]).permutation(rows)
    partner = np.empty(rows, np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def mismatched_pairs(
    arrays: dict[str, np.ndarray], partner: np.ndarray, pad_id: int
) -> dict[str, np.ndarray]:
    """KTO's mismatched pairs (x_i, y_π(i)): row i's prompt with row ``partner[i]``'s response,
    as ``kl_input_ids``/``kl_attention_mask``/``kl_loss_mask`` (cut at the same length T)."""
    starts = prompt_lengths(arrays["loss_mask"])
    joined = splice(
        arrays["input_ids"],
        starts,
        arrays["input_ids"][partner],
        arrays["attention_mask"][partner],
        starts[partner],
        arrays["loss_mask"][partner],
        pad_id=pad_id,
    )
    return {f"kl_{name}": np.asarray(value) for name, value in joined.items()}


def _tokenize(config, tokenizer, source, kind: str, **options) -> dict[str, np.ndarray]:
    from irl_jax.data import load_and_tokenize

    data = config.data
    arrays, _ = load_and_tokenize(
        source,
        tokenizer,
        kind,
        data.max_length,
        max_prompt_length=data.max_prompt_length or None,
        column_map=dict(data.column_map) or None,
        **options,
    )
    return arrays


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
    task = common.task_or_none(config)
    if task is None:
        train = _tokenize(config, tokenizer, data.path, kind)
        eval_source = data.eval_path or (None if kto else data.path)
        evaluation = (
            _tokenize(config, tokenizer, eval_source, "preference") if eval_source else None
        )
    else:
        labels = dict(beta_ann=section.beta_ann, expert_fraction=section.expert_fraction)
        if kto:
            source = task.unpaired(data.num_train, data.seed, **labels)
        else:
            source, stats = task.preferences(
                data.num_train, data.seed, pairing=section.pairing, **labels
            )
            logging.info("training pairs: %s", stats)
        train = _tokenize(config, tokenizer, source, kind)
        held_out, _ = task.preferences(
            data.num_eval, data.seed + 1, pairing=section.pairing, **labels
        )
        evaluation = _tokenize(config, tokenizer, held_out, "preference", margin_from_scores=True)
    if kto:
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        partner = cyclic_partners(len(train["input_ids"]), data.seed)
        train.update(mismatched_pairs(train, partner, pad))
    return train, evaluation


# ----------------------------------------------------------------------------- evaluation


def make_eval_step(cfg: ModelConfig, section: ml_collections.ConfigDict, with_gold: bool):
    """``(params, batch, frozen) -> sums`` over held-out preference pairs (zero rows ignored):
    ``pairs``, ``loss`` (pairwise losses), ``accuracy`` (implicit-reward margin > 0), the mean
    rewards and margin, and with ``with_gold`` (``margin`` column = gold difference)
    ``gold_pairs`` (non-ties) and ``gold_accuracy`` (margin sign = gold sign)."""
    model = Transformer(cfg)

    def eval_step(params, batch, frozen):
        logps = pair_logps(model, params, batch)
        ref = _reference_logps(model, batch, frozen, PAIR) if uses_reference(section.loss) else None
        valid = (batch["chosen_attention_mask"].sum(-1) > 0).astype(jnp.float32)
        sums = {"pairs": valid.sum()}
        if section.loss == "kto":  # KTO's implicit reward β log π/π_ref is DPO's
            metrics = objectives.dpo(*logps, *ref, beta=section.beta)[1]
        else:
            losses, metrics = pairwise_loss(section, logps, ref, _pair_tokens(batch))
            sums["loss"] = jnp.sum(losses * valid)
        margin = metrics.get("reward_margin", metrics.get("log_odds_ratio"))
        for name in ("accuracy", "chosen_reward", "rejected_reward"):
            if name in metrics:
                sums[name] = jnp.sum(metrics[name] * valid)
        sums["reward_margin"] = jnp.sum(margin * valid)
        if with_gold:
            decided = valid * (batch["margin"] != 0)
            sums["gold_pairs"] = decided.sum()
            sums["gold_accuracy"] = jnp.sum(decided * ((margin > 0) == (batch["margin"] > 0)))
        return sums

    return eval_step


def pair_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``eval/<name>`` means from ``make_eval_step`` sums."""
    metrics = {
        f"eval/{name}": value / max(sums["pairs"], 1.0)
        for name, value in sums.items()
        if name not in ("pairs", "gold_pairs", "gold_accuracy")
    }
    if "gold_pairs" in sums:
        metrics["eval/gold_accuracy"] = sums["gold_accuracy"] / max(sums["gold_pairs"], 1.0)
    return metrics


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs direct alignment; returns the final ``eval/...`` metrics."""
    validate_config(config)
    section = config.direct
    mesh = common.make_mesh(config)
    tokenizer = common.load_tokenizer(config)
    cfg = common.model_config(config, tokenizer)
    init_fn, params = common.policy_init(config, cfg, mesh)
    train_arrays, eval_arrays = load_data(config, tokenizer)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = create_train_state(init_fn, optimizer, mesh, seed=config.seed, params=params)
    ref_params = common.copy_params(state.params, shardings.params)
    reference = uses_reference(section.loss)
    if reference and section.precompute_reference:
        batch_size = config.eval_batch_size
        prefixes = ("", "kl_") if section.loss == "kto" else PAIR
        train_arrays = add_reference_logps(
            cfg, ref_params, train_arrays, prefixes, batch_size, mesh
        )
        if eval_arrays is not None:
            eval_arrays = add_reference_logps(cfg, ref_params, eval_arrays, PAIR, batch_size, mesh)
    on_the_fly = reference and not section.precompute_reference
    frozen = ref_params if on_the_fly else None
    frozen_shardings = shardings.params if on_the_fly else None
    step = make_train_step(
        make_loss_fn(cfg, section),
        optimizer,
        shardings,
        mesh,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
        frozen_shardings=frozen_shardings,
    )
    eval_step = jax.jit(
        make_eval_step(cfg, section, with_gold=common.task_or_none(config) is not None),
        in_shardings=(shardings.params, sharding_lib.batch_sharding(mesh), frozen_shardings),
    )
    policy_eval = common.policy_evaluator(config, cfg, tokenizer, ref_params, mesh)

    def evaluate(params) -> tuple[dict[str, float], list[dict[str, Any]]]:
        metrics = {}
        if eval_arrays is not None:
            sums = common.evaluate_sums(
                lambda p, b: eval_step(p, b, frozen),
                params,
                eval_arrays,
                config.eval_batch_size,
                mesh,
            )
            metrics.update(pair_metrics(sums))
        policy_metrics, samples = policy_eval(params)
        return {**metrics, **policy_metrics}, samples

    state, final = common.run_loop(
        config,
        workdir,
        state=state,
        shardings=shardings,
        train_step=lambda state, batch: step(state, batch, frozen),
        batches=BatchIterator(train_arrays, config.batch_size, seed=config.seed),
        mesh=mesh,
        evaluate=evaluate,
        description=section.loss,
    )
    if config.export:
        common.export(workdir, cfg, state.params, tokenizer)
    return final
