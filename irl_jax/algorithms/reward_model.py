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

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import common
from irl_jax.config import ConfigError, validate_config
from irl_jax.data.iterator import BatchIterator
from irl_jax.evaluation import reward as reward_eval
from irl_jax.models import ModelConfig, Transformer
from irl_jax.models.heads import RewardModel
from irl_jax.objectives import reward as objectives
from irl_jax.train import create_train_state, make_train_step, optimizer_from_config

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


def _check(checks: list[tuple[bool, str, str]]) -> None:
    """Raises ``ConfigError("config.<field>: <message>")`` for the first failed check."""
    for ok, field, message in checks:
        if not ok:
            raise ConfigError(f"config.{field}: {message}")


def validate_preference_options(
    config: ml_collections.ConfigDict, section: str, losses: tuple[str, ...]
) -> None:
    """Checks ``config.<section>``'s shared options; raises ``ConfigError`` naming the field."""
    s, bt = config[section], config[section].loss == "bradley_terry"
    _check_section = lambda checks: _check([(ok, f"{section}.{f}", m) for ok, f, m in checks])
    _check_section(
        [
            (s.loss in losses, "loss", f"{s.loss!r}; expected one of {losses}"),
            (
                bt or s.margin == 0,
                "margin",
                f"applies to loss='bradley_terry' only, not {s.loss!r}",
            ),
            (s.centering >= 0, "centering", f"must be >= 0, got {s.centering}"),
            (bt or s.centering == 0, "centering", "applies to loss='bradley_terry' only"),
            (0 <= s.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)"),
            (
                s.ensemble_aggregation in AGGREGATIONS,
                "ensemble_aggregation",
                f"{s.ensemble_aggregation!r}; expected one of {AGGREGATIONS}",
            ),
            (s.uwo_penalty >= 0, "uwo_penalty", f"must be >= 0, got {s.uwo_penalty}"),
            (s.beta_ann > 0, "beta_ann", f"must be > 0 (inf: noiseless), got {s.beta_ann}"),
            (s.pairing in PAIRINGS, "pairing", f"{s.pairing!r}; expected one of {PAIRINGS}"),
            (
                s.eval_pairing in PAIRINGS,
                "eval_pairing",
                f"{s.eval_pairing!r}; expected {PAIRINGS}",
            ),
            (s.k >= 2, "k", f"must be >= 2, got {s.k}"),
            (s.num_eval_prompts >= 0, "num_eval_prompts", "must be >= 0"),
            (s.calibration_bins >= 1, "calibration_bins", "must be >= 1"),
        ]
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.reward_model`` (before anything compiles)."""
    validate_preference_options(config, "reward_model", LOSSES)
    s, task = config.reward_model, common.task_or_none(config)
    process = s.loss == "process"
    _check(
        [
            (s.num_heads >= 1, "reward_model.num_heads", f"must be >= 1, got {s.num_heads}"),
            (not process or s.num_heads == 1, "reward_model.num_heads", "a PRM has one head"),
            (
                not process or task is None or hasattr(task, "stepwise"),
                "data.task",
                f"loss='process' needs step labels; {config.data.task!r} has none (use reasoning)",
            ),
        ]
    )


# ----------------------------------------------------------------------------- model


class TokenRewardModel(nn.Module):
    """Decoder + ``RewardModel``'s linear score head applied at every position: a PRM.

    Returns per-token scores ``[B, T]`` float32. The param tree equals ``RewardModel(config)``'s
    (``{"transformer", "score"}``), so a PRM exports as (and loads from) a sequence classifier,
    whose score is the PRM's score at the last token.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg = self.config
        hidden = Transformer(cfg, name="transformer")(
            input_ids, attention_mask, compute_logits=False
        ).hidden_states
        scores = nn.DenseGeneral(
            1,
            use_bias=False,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / (cfg.hidden_size + 1) ** 0.5),
                ("embed", "reward_heads"),
            ),
            name="score",
        )(hidden)
        return scores[..., 0].astype(jnp.float32)


def build_model(cfg: ModelConfig, settings: ml_collections.ConfigDict) -> nn.Module:
    """``TokenRewardModel`` for ``loss="process"``, else ``RewardModel(cfg, num_heads)``."""
    if settings.loss == "process":
        return TokenRewardModel(cfg)
    return RewardModel(cfg, num_heads=settings.num_heads)


def init_params(
    config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh
) -> tuple[Callable[[], Any], Any]:
    """``(init_fn, params)`` of the reward model; ``params`` is ``None`` for a random init.

    From a causal-LM directory the backbone is its params minus ``lm_head`` and the score head
    is freshly initialized (only that part of ``init_fn`` runs: XLA drops the rest); a
    sequence-classification directory supplies both, its head count checked against the model.
    """
    ids = jnp.zeros((1, 2), jnp.int32)
    init_fn = lambda: model.init(jax.random.key(config.seed), ids, jnp.ones_like(ids))["params"]
    _, loaded = common.policy_init(config, model.config, mesh)
    if loaded is None:
        return init_fn, None
    abstract = jax.eval_shape(init_fn)
    if "score" in loaded:
        expected = sharding_lib.unbox(abstract)["score"]["kernel"].shape[-1]
        heads = loaded["score"]["kernel"].shape[-1]
        message = f"{common.model_source(config)!r} has {heads} score heads, the model {expected}"
        _check([(heads == expected, "reward_model.num_heads", message)])
        return init_fn, loaded
    shardings = sharding_lib.tree_shardings(abstract["score"], mesh)
    score = jax.jit(lambda: sharding_lib.unbox(init_fn()["score"]), out_shardings=shardings)()
    backbone = {name: value for name, value in loaded.items() if name != "lm_head"}
    return init_fn, {"transformer": backbone, "score": score}


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
    """``loss_fn(params, batch, rng, frozen) -> (loss, metrics)`` for ``settings.loss``.

    Pair batches: ``{chosen,rejected}_{input_ids,attention_mask}`` and ``margin``; ranking
    batches: ``input_ids``/``attention_mask`` ``[B, K, T]`` (best first); stepwise batches:
    ``input_ids``, ``attention_mask``, ``step_mask``, ``step_labels`` ``[B, T]``.
    """

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        apply = lambda ids, mask: model.apply({"params": params}, ids, mask)
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
        return losses.mean(), {**metrics, "accuracy": accuracy}

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
    from irl_jax.data import load_and_tokenize

    s, data = config[section], config.data
    kind = _KIND[s.loss]
    tokenize = lambda source, kind=kind: load_and_tokenize(
        source,
        tokenizer,
        kind,
        data.max_length,
        data.max_prompt_length or None,
        dict(data.column_map) or None,
        step_separator=s.get("step_separator", "\n"),
    )[0]
    task = common.task_or_none(config)
    if task is None:
        train = tokenize(data.path)
        return RewardData(train, tokenize(data.eval_path or data.path), None, {})
    stats: dict[str, float] = {}
    if kind == "preference":
        source, stats = task.preferences(data.num_train, data.seed, s.beta_ann, s.pairing)
        held_out, _ = task.preferences(data.num_eval, data.seed + 1, s.beta_ann, s.eval_pairing)
    elif kind == "ranking":
        source = task.rankings(data.num_train, data.seed, s.k, s.beta_ann)
        held_out = task.rankings(data.num_eval, data.seed + 1, s.k, s.beta_ann)
    else:
        source, held_out = (
            task.stepwise(data.num_train, data.seed),
            task.stepwise(data.num_eval, data.seed + 1),
        )
    candidates = None
    if s.num_eval_prompts:
        sets = task.rankings(s.num_eval_prompts, data.seed + 2, s.k, math.inf)
        candidates = tokenize(sets, "ranking")
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
    param_shardings: Any,
) -> Callable[[Any], dict[str, float]]:
    """``params -> metrics`` on the held-out data (``reward_eval.HeldOutComparisons``; gold
    metrics on a synthetic task). Ensembles are combined by ``ensemble_aggregation``; a PRM
    scores a candidate response by Σ_steps log σ(s_t), the log-probability that every step is
    correct."""
    s = config.reward_model
    task = common.task_or_none(config)
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
        in_shardings=(param_shardings, sharding_lib.batch_sharding(mesh)),
        out_shardings=sharding_lib.replicated(mesh),
    )
    separator = tokenizer(s.step_separator, add_special_tokens=False)["input_ids"][-1]

    def evaluate(params) -> dict[str, float]:
        run = lambda arrays: reward_eval.map_rows(
            score, params, arrays, config.eval_batch_size, mesh
        )

        def sequence_scores(arrays):
            out = run(arrays)
            if s.loss != "process":
                return aggregate(out, s)
            steps = (arrays["input_ids"] == separator) & (arrays["loss_mask"] > 0)
            return reward_eval.all_steps_correct_logprob(out, steps)

        return {**data.stats, **held_out(sequence_scores, token_scores=run)}

    return evaluate


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the reward model; returns the final evaluation metrics."""
    validate_config(config)
    settings = config.reward_model
    mesh = common.make_mesh(config)
    tokenizer = common.load_tokenizer(config)
    cfg = common.model_config(config, tokenizer)
    model = build_model(cfg, settings)
    init_fn, params = init_params(config, model, mesh)
    data = load_data(config, tokenizer)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = create_train_state(init_fn, optimizer, mesh, seed=config.seed, params=params)
    step = make_train_step(
        make_loss_fn(model, settings),
        optimizer,
        shardings,
        mesh,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )
    evaluate = make_evaluator(config, model, data, tokenizer, mesh, shardings.params)
    state, final = common.run_loop(
        config,
        workdir,
        state=state,
        shardings=shardings,
        train_step=lambda state, batch: step(state, batch, None),
        batches=BatchIterator(data.train, config.batch_size, seed=config.seed),
        mesh=mesh,
        evaluate=lambda params: (evaluate(params), []),
        description="reward_model",
    )
    if config.export:
        common.export(workdir, cfg, state.params, tokenizer)
    return final
