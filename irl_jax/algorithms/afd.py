"""Alignment from demonstrations (AfD; Sun & van der Schaar 2024, SURVEY §2): a reward model
from demonstrations alone, a classifier between two sets of responses to the same prompts.

``config.afd.positive`` and ``config.afd.negative`` name the two sets: ``"demonstrations"`` (the
demonstrator's responses) or a policy's causal-LM directory, sampled (``config.sampling``) once
on the ``data.num_train`` demonstration prompts. The paper's variants:

* Init-Demo: positive = demonstrations, negative = the initial policy;
* SFT-Demo: positive = demonstrations, negative = the SFT policy;
* Init-SFT: positive = the SFT policy, negative = the initial policy.

The classifier is ``reward_model``'s ``RewardModel`` with its classification loss ((x, y⁺) → 1,
(x, y⁻) → 0; from ``init_from``, e.g. the SFT export, or fresh) and is exported the same way,
so Best-of-N, GRPO and PPO use it through ``reward.model``. Both sides are laid out as at
scoring time: the left-padded prompt followed by the response (``rollout.as_sequences``).

The optimal classifier's logit is log p⁺(y|x) − log p⁻(y|x); when both sides are policies
that is the closed-form reward ``policy_rewards.LogRatio`` (for Init-SFT: log π_SFT − log
π_init), which the evaluation scores on the same held-out data (``eval/log_ratio/...``) as the
baseline the learned reward should approach. Held-out data: gold-labelled preference pairs of
the task's eval prompts (``eval/gold_accuracy``) and Best-of-``k`` candidate sets (Spearman ρ,
Best-of-k gain). ``eval/style_effect``: the mean reward of a held-out demonstration with the
task's style token (``indeed``, ignored by the gold reward) minus the same demonstration
without it, in units of the reward's std over the candidates.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np

from irl_jax import rollout
from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import reward_model as rm
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms import sft
from irl_jax.config import require
from irl_jax.evaluation import reward as reward_eval
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import source as model_source
from irl_jax.models.heads import RewardModel
from irl_jax.train import create_model, create_state, optimizer_from_config, supervised_step

DEMONSTRATIONS = "demonstrations"


def default_config() -> ml_collections.ConfigDict:
    """``config.afd``: the two response sets and the classifier's options."""
    return ml_collections.ConfigDict(
        {
            "positive": DEMONSTRATIONS,  # "demonstrations" or a policy's HF directory
            "negative": "",  # a policy's HF directory (or "demonstrations")
            "label_smoothing": 0.0,
            "sample_batch_size": 256,  # prompts per jitted sampling call
            "k": 4,  # candidates per held-out prompt
            "num_eval_prompts": 256,  # held-out candidate sets (Spearman ρ, Best-of-k)
            "beta_ann": 5.0,  # held-out pairs' labels (gold accuracy ignores them)
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.afd``; raises ``ConfigError`` naming the field."""
    s = config.afd
    require(s.negative != "", "afd.negative", "names no response set (a policy directory)")
    require(s.positive != s.negative, "afd.negative", "equals afd.positive")
    require(0 <= s.label_smoothing < 0.5, "afd.label_smoothing", "must be in [0, 0.5)")
    require(s.k >= 2, "afd.k", f"must be >= 2, got {s.k}")
    require(s.num_eval_prompts >= 0, "afd.num_eval_prompts", "must be >= 0")
    require(s.sample_batch_size >= 1, "afd.sample_batch_size", "must be >= 1")
    require(setup_lib.task_of(config) is not None, "data.task", "AfD needs a synthetic task")


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """The policy directories exist and hold complete exports."""
    for side in ("positive", "negative"):
        path = config.afd[side]
        problem = path != DEMONSTRATIONS and model_source.hf_dir_problem(path)
        require(not problem, f"afd.{side}", f"{path!r} {problem}")


def classifier_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``reward_model`` section of a one-head classification reward model."""
    settings = rm.default_config()
    settings.loss = "classification"
    settings.label_smoothing = config.afd.label_smoothing
    return settings


# ----------------------------------------------------------------------------- response sets


def demonstration_responses(
    config: ml_collections.ConfigDict, tokenizer: Any, num: int, seed: int, split: str = "train"
) -> dict[str, np.ndarray]:
    """``response_ids``/``response_mask`` ``[num, N]`` (N = ``sampling.max_new_tokens``) of the
    task's demonstrations of ``prompts(num, seed, split)``, eos included, right-padded."""
    demos = setup_lib.task_of(config).demonstrations(num, seed, split=split)
    arrays = setup_lib.tokenize(config, tokenizer, demos, "sft")
    width = config.sampling.max_new_tokens
    ids = np.zeros((num, width), np.int32)
    mask = np.zeros((num, width), np.int32)
    for row, (row_ids, row_mask) in enumerate(zip(arrays["input_ids"], arrays["loss_mask"])):
        tokens = row_ids[row_mask > 0][:width]
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    return {"response_ids": ids, "response_mask": mask}


def policy_responses(
    setup: setup_lib.Setup, path: str, prompts: dict[str, np.ndarray], seed: int
) -> dict[str, np.ndarray]:
    """One response ``[num, N]`` of the policy at ``path`` to each prompt (``config.sampling``;
    the batch at offset b drawn with ``fold_in(key(seed), b)``)."""
    config = setup.config
    cfg = model_source.resolve_config(config.model, path, tokenizer=setup.tokenizer)
    params = model_source.load_params(path, setup.mesh, setup.overrides)
    settings = rollout.SamplingSettings.from_config(config.sampling)
    settings = rollout.SamplingSettings(
        settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p, 1
    )
    key = jax.random.key(seed)

    def draw(params, batch):
        samples = rollout.sample(
            cfg,
            params,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=jax.random.fold_in(key, batch["index"][0]),
            settings=settings,
        )
        return {"response_ids": samples.response_ids, "response_mask": samples.response_mask}

    jitted = jax.jit(draw, out_shardings=sharding_lib.replicated(setup.mesh))
    rows = {**prompts, "index": np.arange(len(prompts["prompt_ids"]), dtype=np.int32)}
    batch_size = min(config.afd.sample_batch_size, len(rows["index"]))
    with jax.set_mesh(setup.mesh):
        return map_rows(jitted, params, rows, batch_size, setup.mesh)


def response_set(
    setup: setup_lib.Setup, name: str, prompts: dict[str, np.ndarray], seed: int, split: str
) -> dict[str, np.ndarray]:
    """The responses of ``name`` to ``prompts`` = ``prompt_arrays(…, seed, split)``: the task's
    demonstrations of those prompts, or samples of the policy directory ``name`` (drawn with
    ``config.seed`` and the directory's position in the config)."""
    config = setup.config
    if name == DEMONSTRATIONS:
        num = len(prompts["prompt_ids"])
        return demonstration_responses(config, setup.tokenizer, num, seed, split)
    offset = 0 if name == config.afd.positive else 1
    return policy_responses(setup, name, prompts, config.seed + offset)


def as_rows(prompts: dict[str, np.ndarray], responses: dict[str, np.ndarray]):
    """Prompt + response rows (``rollout.as_sequences``) as host arrays."""
    samples = rollout.Samples(
        prompts["prompt_ids"],
        prompts["prompt_mask"],
        responses["response_ids"],
        responses["response_mask"],
        np.zeros(responses["response_ids"].shape, np.float32),
    )
    return jax.tree.map(np.asarray, rollout.as_sequences(samples))


def training_pairs(setup: setup_lib.Setup) -> dict[str, np.ndarray]:
    """``chosen_*`` (positive) and ``rejected_*`` (negative) rows on the demonstration prompts
    (the same prompts as ``task.demonstrations(data.num_train, data.seed)``)."""
    config, s = setup.config, setup.config.afd
    num, seed = config.data.num_train, config.data.seed
    prompts = setup_lib.prompt_arrays(config, setup.tokenizer, num, seed)
    pairs = {"margin": np.zeros(num, np.float32)}
    for side, name in (("chosen", s.positive), ("rejected", s.negative)):
        responses = response_set(setup, name, prompts, seed, "train")
        rows = as_rows(prompts, responses)
        pairs.update({f"{side}_{k}": v for k, v in rows.items()})
    return pairs


# ----------------------------------------------------------------------------- evaluation


def held_out(config: ml_collections.ConfigDict, tokenizer: Any) -> reward_eval.HeldOutComparisons:
    """Gold-labelled pairs and Best-of-k candidate sets of the task's eval prompts."""
    task, s, data = setup_lib.task_of(config), config.afd, config.data
    pairs, _ = task.preferences(data.num_eval, data.seed + 1, s.beta_ann, split="eval")
    candidates = None
    if s.num_eval_prompts:
        sets = task.rankings(s.num_eval_prompts, data.seed + 2, s.k, math.inf, split="eval")
        candidates = setup_lib.tokenize(config, tokenizer, sets, "ranking", drop_identical=False)
    return reward_eval.HeldOutComparisons(
        "preference",
        setup_lib.tokenize(config, tokenizer, pairs, "preference"),
        candidates,
        gold_fn=task.gold_reward,
    )


def style_pairs(config: ml_collections.ConfigDict, tokenizer: Any, num: int = 512):
    """Held-out demonstrations that carry the style token, with and without it (sft arrays)."""
    from irl_jax.tasks import STYLE_TOKEN

    demos = setup_lib.task_of(config).demonstrations(num, config.data.seed + 3, split="eval")
    styled = [(p, c) for p, c in zip(demos["prompt"], demos["completion"]) if STYLE_TOKEN in c]
    strip = lambda c: " ".join(w for w in c.split() if w != STYLE_TOKEN)
    records = lambda completions: [
        {"prompt": p, "completion": c} for (p, _), c in zip(styled, completions)
    ]
    tokenize = lambda rows: setup_lib.tokenize(config, tokenizer, rows, "sft")
    return (
        tokenize(records([c for _, c in styled])),
        tokenize(records([strip(c) for _, c in styled])),
    )


def make_evaluator(setup: setup_lib.Setup, model: RewardModel, log_ratio: Any):
    """``params -> metrics``: the reward model's (and, given ``log_ratio`` = ``(π⁺ params,
    π⁻ params)``, the closed-form reward's) held-out metrics and style effect."""
    config = setup.config
    comparisons = held_out(config, setup.tokenizer)
    with_style, without_style = style_pairs(config, setup.tokenizer)
    score = jax.jit(
        lambda params, batch: model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"]
        ),
        out_shardings=sharding_lib.replicated(setup.mesh),
    )
    nll_fn = sft.make_nll_fn(setup.model_config, setup.mesh)
    run = lambda fn, params, arrays: map_rows(
        fn, params, arrays, config.eval_batch_size, setup.mesh
    )

    def metrics_of(sequence_scores) -> dict[str, float]:
        metrics = comparisons(sequence_scores)
        effect = np.mean(sequence_scores(with_style) - sequence_scores(without_style))
        if comparisons.candidates is not None:
            spread = np.std(sequence_scores(reward_eval.flatten_sets(comparisons.candidates)))
            metrics["style_effect"] = float(effect / max(spread, 1e-8))
        return metrics

    log_ratio_metrics = {}
    if log_ratio is not None:
        positive, negative = log_ratio
        logp = lambda params, arrays: -run(nll_fn, params, arrays)["nll"]
        found = metrics_of(lambda a: logp(positive, a) - logp(negative, a))
        log_ratio_metrics = {f"eval/log_ratio/{k}": v for k, v in found.items()}

    def evaluate(params) -> dict[str, float]:
        return {**metrics_of(lambda arrays: run(score, params, arrays)), **log_ratio_metrics}

    return evaluate


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Samples the two response sets, trains the classifier; returns the final evaluation."""
    setup = setup_lib.setup(config)  # the response sets need its mesh: built below
    settings = classifier_settings(config)
    pairs = training_pairs(setup)
    model = RewardModel(setup.model_config)
    init_fn, params = rm.initial_params(setup, model)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    trained = create_model(init_fn, optimizer, setup.mesh, params=params)
    state, shardings = create_state(setup.mesh, seed=config.seed, models={"reward_model": trained})
    step = supervised_step(
        rm.make_loss_fn(model, settings),
        optimizer,
        shardings,
        setup.mesh,
        model="reward_model",
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    s = config.afd
    log_ratio = None
    if DEMONSTRATIONS not in (s.positive, s.negative):
        load = lambda path: model_source.load_params(path, setup.mesh, setup.overrides)
        log_ratio = (load(s.positive), load(s.negative))
    evaluate = make_evaluator(setup, model, log_ratio)
    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=pairs,
        evaluate=lambda state: (evaluate(state.models["reward_model"].params), []),
        export=rm.exporter(setup, settings),
        description="afd",
    )
