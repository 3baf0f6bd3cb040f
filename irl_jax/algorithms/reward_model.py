"""Reward models from comparisons through the shared loop: IRL from preferences (SURVEY §3).

A decoder with a linear score head (``RewardModel``), started from an SFT export (a causal-LM
HF directory: its params minus ``lm_head``, plus a fresh score head), from an HF
sequence-classification directory, or from a random preset. Losses (``config.reward_model.loss``):

* ``bradley_terry``: −log σ(r_w − r_l − m), with label smoothing and reward centering;
* ``classification``: each pair split into (x, y_w) → 1 and (x, y_l) → 0 (Sun et al. 2024);
* ``ranking``: Bradley–Terry over the C(K, 2) pairs of a K-way ranking;
* ``process``: a process reward model, per-token scores with BCE at step boundaries.

``num_heads = K > 1`` trains a K-head ensemble on one backbone (heads differ by their init; each
head's loss is averaged). Chosen and rejected responses run through the model in one
concatenated forward. Evaluation (``irl_jax.evaluation.reward``): accuracy against the labels
and against the gold reward, calibration, Spearman ρ and Best-of-N gain on held-out candidate
sets, ensembles combined by ``ensemble_aggregation``. The trained model is exported as a Hugging
Face ``*ForSequenceClassification`` directory (``WORKDIR/export``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import require
from irl_jax.evaluation import reward as reward_eval
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import ModelConfig, lora
from irl_jax.models import source as model_source
from irl_jax.models.heads import RewardModel, TokenRewardModel
from irl_jax.objectives import reward as objectives
from irl_jax.train import Loss, create_model, create_state, optimizer_from_config, supervised_step

LOSSES = ("bradley_terry", "classification", "ranking", "process")
PAIR_LOSSES = ("bradley_terry", "classification")
AGGREGATIONS = ("mean", "wco", "uwo")
PAIRINGS = ("same_prompt", "cross_prompt")
_KIND = {"bradley_terry": "preference", "classification": "preference"}
_KIND.update(ranking="ranking", process="stepwise")


def preference_options() -> ml_collections.ConfigDict:
    """Options shared by every reward model trained on comparisons (decoder and embedding)."""
    return ml_collections.ConfigDict(
        {
            "loss": "bradley_terry",
            "margin": 0.0,  # constant BT margin m, added to each pair's data margin
            "label_smoothing": 0.0,  # ε (BT and classification)
            "centering": 0.0,  # c · (r_w + r_l)² (BT)
            "ensemble_aggregation": "mean",  # mean | wco | uwo: how evaluation combines members
            "uwo_penalty": 1.0,  # λ of uwo: mean − λ · var
            # Synthetic preferences: P(y1 ≻ y2) = σ(β_ann (r*(y1) − r*(y2))); inf = noiseless.
            "beta_ann": 5.0,
            "pairing": "same_prompt",  # training pairs: same_prompt | cross_prompt
            "eval_pairing": "same_prompt",  # held-out pairs
            "k": 4,  # responses per ranking (loss=ranking) and candidates per eval prompt
            "num_eval_prompts": 256,  # held-out candidate sets for Spearman / Best-of-N (0: none)
            "calibration_bins": 10,
        }
    )


def default_config() -> ml_collections.ConfigDict:
    """``config.reward_model``: the loss, ensemble heads and synthetic-data options."""
    settings = preference_options()
    settings.num_heads = 1  # K ensemble heads on one backbone
    settings.step_separator = ";"  # closes each step of stepwise data (loss=process)
    return settings


def validate_preference_options(
    config: ml_collections.ConfigDict, section: str, losses: tuple[str, ...]
) -> None:
    """Checks ``config.<section>``'s shared options; raises ``ConfigError`` naming the field."""
    s, bt = config[section], config[section].loss == "bradley_terry"
    check = lambda ok, field, message: require(ok, f"{section}.{field}", message)
    check(s.loss in losses, "loss", f"{s.loss!r}; expected one of {losses}")
    check(bt or s.margin == 0, "margin", f"applies to loss='bradley_terry' only, not {s.loss!r}")
    check(s.centering >= 0, "centering", f"must be >= 0, got {s.centering}")
    check(bt or s.centering == 0, "centering", "applies to loss='bradley_terry' only")
    check(0 <= s.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
    check(
        s.ensemble_aggregation in AGGREGATIONS,
        "ensemble_aggregation",
        f"{s.ensemble_aggregation!r}; expected one of {AGGREGATIONS}",
    )
    check(s.uwo_penalty >= 0, "uwo_penalty", f"must be >= 0, got {s.uwo_penalty}")
    check(s.beta_ann > 0, "beta_ann", f"must be > 0 (inf: noiseless), got {s.beta_ann}")
    check(s.pairing in PAIRINGS, "pairing", f"{s.pairing!r}; expected one of {PAIRINGS}")
    check(s.eval_pairing in PAIRINGS, "eval_pairing", f"{s.eval_pairing!r}; expected {PAIRINGS}")
    check(s.k >= 2, "k", f"must be >= 2, got {s.k}")
    check(s.num_eval_prompts >= 0, "num_eval_prompts", "must be >= 0")
    check(s.calibration_bins >= 1, "calibration_bins", "must be >= 1")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.reward_model`` (before anything compiles)."""
    validate_preference_options(config, "reward_model", LOSSES)
    s, process = config.reward_model, config.reward_model.loss == "process"
    require(s.num_heads >= 1, "reward_model.num_heads", f"must be >= 1, got {s.num_heads}")
    require(not process or s.num_heads == 1, "reward_model.num_heads", "a PRM has one head")
    task = setup_lib.task_of(config)
    require(
        not process or task is None or hasattr(task, "stepwise"),
        "data.task",
        f"loss='process' needs step labels; {config.data.task!r} has none (use reasoning)",
    )


# ----------------------------------------------------------------------------- model


def build_model(cfg: ModelConfig, settings: ml_collections.ConfigDict) -> nn.Module:
    """``TokenRewardModel`` for ``loss="process"``, else ``RewardModel(cfg, num_heads)``."""
    if settings.loss == "process":
        return TokenRewardModel(cfg)
    return RewardModel(cfg, num_heads=settings.num_heads)


def initial_params(setup: setup_lib.Setup, model: nn.Module) -> tuple[Callable[[], Any], Any]:
    """``(init_fn, params)`` of the reward model; ``params`` is ``None`` for a random init.

    From a causal-LM directory the backbone is its params minus ``lm_head`` and the score head
    is freshly initialized (only that part of ``init_fn`` runs: XLA drops the rest); a
    sequence-classification directory supplies both, its head count checked against the model.
    """
    init_fn = model_source.init_fn(model, setup.config.seed)
    loaded = setup.load_weights()
    if loaded is None:
        return init_fn, None
    if "score" in loaded:
        expected = sharding_lib.unbox(jax.eval_shape(init_fn))["score"]["kernel"].shape[-1]
        heads = loaded["score"]["kernel"].shape[-1]
        message = f"{setup.weights!r} has {heads} score heads, the model {expected}"
        require(heads == expected, "reward_model.num_heads", message)
        return init_fn, loaded
    score = model_source.fresh_head(init_fn, "score", setup.mesh)
    return init_fn, {"transformer": model_source.backbone(loaded), "score": score}


# ----------------------------------------------------------------------------- losses


def pair_losses(
    chosen: jax.Array,
    rejected: jax.Array,
    settings: ml_collections.ConfigDict,
    data_margin: jax.Array | float = 0.0,
) -> jax.Array:
    """Per-pair losses of ``settings.loss`` (``bradley_terry`` or ``classification``).

    Args:
      chosen, rejected: rewards ``[B]`` or ``[B, K]`` (K ensemble members, each its own loss).
      settings: the reward-model section (``loss``, ``margin``, ``label_smoothing``,
        ``centering``).
      data_margin: ``[B]`` per-pair margins from the data, added to ``settings.margin``.

    Returns:
      Losses shaped like ``chosen``. Classification averages the two pointwise BCE terms, with
      targets 1 − ε and ε under label smoothing ε.
    """
    if settings.loss == "bradley_terry":
        margin = jnp.asarray(data_margin, jnp.float32)
        margin = settings.margin + margin.reshape(margin.shape + (1,) * (chosen.ndim - margin.ndim))
        return objectives.bradley_terry(
            chosen,
            rejected,
            margin=margin,
            label_smoothing=settings.label_smoothing,
            centering=settings.centering,
        )
    eps = settings.label_smoothing
    positive = objectives.classification(chosen, jnp.full_like(chosen, 1.0 - eps))
    negative = objectives.classification(rejected, jnp.full_like(rejected, eps))
    return 0.5 * (positive + negative)


def make_loss_fn(model: nn.Module, settings: ml_collections.ConfigDict):
    """``loss_fn(params, batch, rng, frozen) -> (Loss, metrics)`` for ``settings.loss`` (the
    mean over rows, and over ensemble heads).

    Pair batches: ``{chosen,rejected}_{input_ids,attention_mask}`` and ``margin``; ranking
    batches: ``input_ids``/``attention_mask`` ``[B, K, T]`` (best first); stepwise batches:
    ``input_ids``, ``attention_mask``, ``step_mask``, ``step_labels`` ``[B, T]``.
    """

    def loss_fn(params, batch, rng, frozen):
        del frozen
        rngs = lora.dropout_rngs(model, rng)
        apply = lambda ids, mask: model.apply({"params": params}, ids, mask, rngs=rngs)
        if settings.loss in PAIR_LOSSES:
            ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])
            mask = jnp.concatenate(
                [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
            )
            rewards = apply(ids, mask)
            chosen, rejected = jnp.split(rewards, 2)
            losses = pair_losses(chosen, rejected, settings, batch["margin"])
            accuracy = objectives.pairwise_accuracy(chosen, rejected).mean()
            metrics = {"reward_mean": rewards.mean(), "reward_margin": (chosen - rejected).mean()}
        elif settings.loss == "ranking":
            b, k, t = batch["input_ids"].shape
            rewards = apply(
                batch["input_ids"].reshape(b * k, t), batch["attention_mask"].reshape(b * k, t)
            )
            rewards_bk = jnp.moveaxis(rewards.reshape(b, k, -1), 1, -1)  # [B, heads, K]
            losses = objectives.ranking(rewards_bk)
            i, j = np.triu_indices(k, 1)
            accuracy = objectives.pairwise_accuracy(rewards_bk[..., i], rewards_bk[..., j]).mean()
            metrics = {"reward_mean": rewards.mean()}
        else:
            scores = apply(batch["input_ids"], batch["attention_mask"])
            losses = objectives.process_reward(scores, batch["step_mask"], batch["step_labels"])
            steps = batch["step_mask"].astype(jnp.float32)
            right = (scores > 0) == (batch["step_labels"] > 0.5)
            accuracy = jnp.sum(right * steps) / jnp.maximum(steps.sum(), 1.0)
            metrics = {}
        return Loss.mean(losses), {**metrics, "accuracy": accuracy}

    return loss_fn


# ----------------------------------------------------------------------------- data


class RewardData(NamedTuple):
    """Tokenized arrays: ``train``/``eval`` in the loss's kind, ``candidates`` (``[N, K, T]``
    ranking arrays of same-prompt candidates, or ``None``), and data ``stats`` (flip rates)."""

    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    candidates: dict[str, np.ndarray] | None
    stats: dict[str, float]


def load_data(
    config: ml_collections.ConfigDict, tokenizer: Any, section: str = "reward_model"
) -> RewardData:
    """Train/eval comparisons from ``config.data`` (a file, or the synthetic task's generators
    with ``beta_ann``/``pairing``) and, on a synthetic task, held-out candidate sets."""
    s, data = config[section], config.data
    kind = _KIND[s.loss]
    separator = s.get("step_separator", "\n")
    tokenize = lambda source, kind=kind: setup_lib.tokenize(
        config, tokenizer, source, kind, step_separator=separator
    )
    task = setup_lib.task_of(config)
    if task is None:
        train = tokenize(data.path)
        return RewardData(train, tokenize(data.eval_path or data.path), None, {})
    stats: dict[str, float] = {}
    held_out_seed, eval_split = data.seed + 1, {"split": "eval"}
    if kind == "preference":
        source, stats = task.preferences(data.num_train, data.seed, s.beta_ann, s.pairing)
        held_out, _ = task.preferences(
            data.num_eval, held_out_seed, s.beta_ann, s.eval_pairing, **eval_split
        )
    elif kind == "ranking":
        source = task.rankings(data.num_train, data.seed, s.k, s.beta_ann)
        held_out = task.rankings(data.num_eval, held_out_seed, s.k, s.beta_ann, **eval_split)
    else:
        source = task.stepwise(data.num_train, data.seed)
        held_out = task.stepwise(data.num_eval, held_out_seed, **eval_split)
    candidates = None
    if s.num_eval_prompts:
        sets = task.rankings(s.num_eval_prompts, data.seed + 2, s.k, math.inf, **eval_split)
        # Best-of-K candidate sets may repeat a candidate: keep them (unlike training rankings).
        candidates = setup_lib.tokenize(config, tokenizer, sets, "ranking", drop_identical=False)
    stats = {f"train_{k}": v for k, v in stats.items() if k in ("flip_rate", "expected_flip_rate")}
    return RewardData(tokenize(source), tokenize(held_out), candidates, stats)


# ----------------------------------------------------------------------------- evaluation


def aggregate(scores: np.ndarray, settings: ml_collections.ConfigDict) -> np.ndarray:
    """Ensemble scores ``[..., K]`` → ``[...]`` by ``ensemble_aggregation`` (scalars pass)."""
    if scores.ndim == 0 or settings.get("num_heads", 1) == 1:
        return scores
    return np.asarray(
        objectives.aggregate_ensemble(
            jnp.asarray(scores), settings.ensemble_aggregation, settings.uwo_penalty
        )
    )


def make_evaluator(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    data: RewardData,
    tokenizer: Any,
    mesh: jax.sharding.Mesh,
) -> Callable[[Any], dict[str, float]]:
    """``params -> metrics`` on the held-out data (``reward_eval.HeldOutComparisons``; gold
    metrics on a synthetic task). Ensembles are combined by ``ensemble_aggregation``; a PRM
    scores a candidate response by Σ_steps log σ(s_t), the log-probability that every step is
    correct."""
    s = config.reward_model
    task = setup_lib.task_of(config)
    held_out = reward_eval.HeldOutComparisons(
        _KIND[s.loss],
        data.eval,
        data.candidates,
        gold_fn=None if task is None else task.gold_reward,
        num_bins=s.calibration_bins,
    )
    score = jax.jit(
        lambda params, batch: model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"]
        ),
        out_shardings=sharding_lib.replicated(mesh),
    )
    separator = step_token_id(tokenizer, s.step_separator)

    def evaluate(params) -> dict[str, float]:
        run = lambda arrays: map_rows(score, params, arrays, config.eval_batch_size, mesh)

        def sequence_scores(arrays):
            out = run(arrays)
            if s.loss != "process":
                return aggregate(out, s)
            steps = (arrays["input_ids"] == separator) & (arrays["loss_mask"] > 0)
            return reward_eval.all_steps_correct_logprob(out, steps)

        return {**data.stats, **held_out(sequence_scores, token_scores=run)}

    return evaluate


def step_token_id(tokenizer: Any, separator: str) -> int:
    """The token that closes each step (the separator's last token)."""
    return tokenizer(separator, add_special_tokens=False)["input_ids"][-1]


def exporter(setup: setup_lib.Setup, settings: ml_collections.ConfigDict):
    """``export(state, path)``: the reward model as a ``*ForSequenceClassification`` directory;
    a PRM's also holds ``rewards.PROCESS_MARKER``, so that a reward source reads its
    step-boundary scores instead of its (untrained) score at the EOS."""

    def export(state, path: str) -> None:
        params = state.models["reward_model"].params
        setup_lib.export_model(path, setup.model_config, params, setup.tokenizer)
        if settings.loss == "process" and jax.process_index() == 0:
            token = step_token_id(setup.tokenizer, settings.step_separator)
            with open(os.path.join(path, rewards_lib.PROCESS_MARKER), "w") as f:
                json.dump({"kind": "process", "step_token_id": token}, f)

    return export


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the reward model; returns the final evaluation metrics."""
    settings = config.reward_model
    setup = setup_lib.setup(config, load_data)
    model = build_model(setup.model_config, settings)
    init_fn, params = initial_params(setup, model)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    trained = create_model(init_fn, optimizer, setup.mesh, params=params)
    state, shardings = create_state(setup.mesh, seed=config.seed, models={"reward_model": trained})
    step = supervised_step(
        make_loss_fn(model, settings),
        optimizer,
        shardings,
        setup.mesh,
        model="reward_model",
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    evaluate = make_evaluator(config, model, setup.data, setup.tokenizer, setup.mesh)
    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=setup.data.train,
        evaluate=lambda state: (evaluate(state.models["reward_model"].params), []),
        export=exporter(setup, settings),
        description="reward_model",
    )
