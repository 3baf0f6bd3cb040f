"""IQ-Learn (inverse soft-Q learning) offline on demonstrations, through the shared loop.

The policy's logits are the Q-function (Garg et al. 2021; for LMs Wulfmeier et al. 2024):
the loss is ``objectives.imitation.iq_learn_loss`` — the SFT NLL plus ``chi2_coef`` · E_D[(Q −
γV′)²] — with, for the "MLE + entropy bonus" baseline, −``entropy_coef`` · E_D[H(π(·|s))] over
the demonstration states. ``chi2_coef = entropy_coef = 0`` is SFT (token by token).

Evaluation (``eval/``): the held-out demonstrations' NLL (and its gap to the demonstrator's
entropy: the per-token forward KL to the demonstrator); the implied reward
(``policy_rewards.ImpliedReward``) against the gold reward on held-out candidates — accuracy on
same-prompt pairs, Spearman ρ within each prompt's candidates and across all of them, and the
same for plain log π(y|x); and ``samples_per_prompt`` samples to each of ``policy_eval``'s
held-out prompts: gold reward, the share of samples the demonstrator can produce
(``demonstrator_support``), the reverse KL to the demonstrator on that support
(``evaluation.divergence.reverse_kl_in_support``, which every policy evaluation also
reports from token log-probs as ``eval/demo/reverse_kl_in_support``), distinct-2 and self-BLEU.
The trained policy is exported as a causal LM; ``policy_rewards.ImpliedReward(params, cfg,
gamma)`` is its reward source.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats

from irl_jax import rollout
from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import setup as setup_lib
from irl_jax.algorithms import sft
from irl_jax.config import check_fields, require
from irl_jax.evaluation import diversity
from irl_jax.evaluation import reward as reward_eval
from irl_jax.evaluation.batches import map_rows
from irl_jax.evaluation.divergence import reverse_kl_in_support
from irl_jax.models import ModelConfig, Transformer, lora
from irl_jax.objectives.imitation import implied_rewards, iq_learn_loss
from irl_jax.objectives.logprobs import masked_sum, next_token_entropy, next_token_logprobs
from irl_jax.train import Loss, optimizer_from_config, supervised_step


def default_config() -> ml_collections.ConfigDict:
    """``config.iq_learn``: the loss's coefficients and the evaluation's sizes."""
    return ml_collections.ConfigDict(
        {
            "chi2_coef": 0.1,  # 1/(4α): weight of E_D[(Q − γV′)²]
            "gamma": 1.0,  # γ of the implied reward r = Q − γV′
            "entropy_coef": 0.0,  # MLE + entropy bonus: −c · E_D[H(π(·|s))]
            "num_eval_prompts": 256,  # held-out candidate sets scored by the implied reward
            "k": 4,  # candidates per held-out prompt
            "samples_per_prompt": 4,  # samples per policy_eval prompt (diversity, gold reward)
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.iq_learn``; raises ``ConfigError`` naming the field."""
    s = config.iq_learn
    check_fields(
        s,
        "iq_learn",
        at_least={
            "chi2_coef": 0,
            "entropy_coef": 0,
            "num_eval_prompts": 0,
            "k": 2,
            "samples_per_prompt": 1,
        },
    )
    require(0 < s.gamma <= 1, "iq_learn.gamma", f"must be in (0, 1], got {s.gamma}")


def make_loss_fn(cfg: ModelConfig, settings: ml_collections.ConfigDict):
    """``loss_fn(params, batch, rng, frozen) -> (Loss, metrics)``: the IQ-Learn loss of the
    ``loss_mask`` tokens as a token mean (minus the entropy bonus)."""
    model = Transformer(cfg)

    def loss_fn(params, batch, rng, frozen):
        del frozen
        ids, mask = batch["input_ids"], batch["loss_mask"]
        rngs = lora.dropout_rngs(model, rng)
        logits = model.apply({"params": params}, ids, batch["attention_mask"], rngs=rngs).logits
        _, terms = iq_learn_loss(
            logits,
            ids,
            mask,
            chi2_coef=settings.chi2_coef,
            gamma=settings.gamma,
            eos_ids=cfg.eos_token_ids,
        )
        names = ("nll", "chi2", "reward_mean", "reward_std", "value_mean", "tokens")
        metrics = {name: terms[name] for name in names}
        total = terms["loss_sum"]
        if settings.entropy_coef:
            entropy = masked_sum(next_token_entropy(logits), mask, axis=None)
            total = total - settings.entropy_coef * entropy
            metrics["entropy"] = entropy / jnp.maximum(terms["tokens"], 1.0)
        return Loss(total, terms["tokens"]), metrics

    return loss_fn


# ----------------------------------------------------------------------------- evaluation


def load_data(config: ml_collections.ConfigDict, tokenizer: Any):
    """``(train, eval, candidates)``: the demonstrations (``setup.demonstrations``) and, on a
    synthetic task, ``[N, K, T]`` held-out candidate sets (``None`` otherwise)."""
    train, held_out = setup_lib.demonstrations(config, tokenizer)
    task, s = setup_lib.task_of(config), config.iq_learn
    candidates = None
    if task is not None and s.num_eval_prompts:
        sets = task.rankings(s.num_eval_prompts, config.data.seed + 2, s.k, math.inf, split="eval")
        candidates = setup_lib.tokenize(config, tokenizer, sets, "ranking", drop_identical=False)
    return train, held_out, candidates


def make_score_fn(cfg: ModelConfig, gamma: float, mesh: jax.sharding.Mesh):
    """Jitted ``(params, batch) -> {"implied_reward", "logp"}`` per row: the implied sequence reward
    and log π(y|x) of the ``loss_mask`` tokens."""

    def score(params, batch):
        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        logits = Transformer(cfg).apply({"params": params}, ids, mask).logits
        return {
            "implied_reward": implied_rewards(
                logits, ids, target, gamma=gamma, eos_ids=cfg.eos_token_ids
            ).sum(-1),
            "logp": masked_sum(next_token_logprobs(logits, ids), target),
        }

    return jax.jit(score, out_shardings=sharding_lib.replicated(mesh))


def reward_metrics(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """A sequence score's agreement with the gold reward on ``[N, K]`` same-prompt candidates:
    ``gold_accuracy`` over all same-prompt pairs, ``spearman`` within prompts (mean ρ) and
    ``spearman_all`` across all N·K candidates."""
    better, worse = reward_eval.ranked_pairs(np.take_along_axis(scores, np.argsort(-gold), 1))
    gold_better, gold_worse = reward_eval.ranked_pairs(-np.sort(-gold, axis=1))
    return {
        "gold_accuracy": reward_eval.gold_accuracy(better, worse, gold_better, gold_worse),
        "spearman": reward_eval.spearman_per_prompt(scores, gold),
        "spearman_all": float(scipy.stats.spearmanr(scores.ravel(), gold.ravel())[0]),
    }


def make_sample_fn(setup: setup_lib.Setup, samples_per_prompt: int):
    """Jitted ``(params, batch) -> samples`` of ``samples_per_prompt`` responses to each of the
    batch's prompts (key ``fold_in(seed, batch["index"][0])``), with their gold reward."""
    settings = rollout.SamplingSettings(
        max_new_tokens=setup.config.policy_eval.max_new_tokens,
        temperature=setup.config.policy_eval.temperature,
        group_size=samples_per_prompt,
    )
    gold = setup.task.gold_reward
    key = jax.random.key(setup.config.seed + 13)

    def sample(params, batch):
        rng = jax.random.fold_in(key, batch["index"][0])
        out = rollout.sample(
            setup.model_config,
            params,
            batch["prompt_ids"],
            batch["prompt_mask"],
            rng=rng,
            settings=settings,
        )
        group = lambda x: x.reshape(-1, samples_per_prompt, *x.shape[1:])
        return {
            "response_ids": group(out.response_ids),
            "response_mask": group(out.response_mask),
            "logp": group(out.logprobs.sum(-1)),
            "gold": group(rollout.score(gold, out)),
        }

    return jax.jit(sample, out_shardings=sharding_lib.replicated(setup.mesh))


def sample_metrics(setup: setup_lib.Setup, samples: dict[str, np.ndarray], prompts) -> dict:
    """Gold reward ± stderr, length, reverse KL to the demonstrator over its support, distinct-2
    and self-BLEU of ``[N, S, ...]`` samples to ``prompts`` (texts)."""
    tokenizer, task = setup.tokenizer, setup.task
    responses = [
        [list(ids[mask > 0]) for ids, mask in zip(row_ids, row_mask)]
        for row_ids, row_mask in zip(samples["response_ids"], samples["response_mask"])
    ]
    eos = set(setup.model_config.eos_token_ids)
    content = [[[t for t in r if t not in eos] for r in group] for group in responses]
    demo_logps, logps = [], []
    for prompt, group, group_logp in zip(prompts, content, samples["logp"]):
        for tokens, logp in zip(group, group_logp):
            text = tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)
            demo_logps.append(task.demonstrator_logprob(prompt, text))
            logps.append(float(logp))
    demo_logps, logps = np.asarray(demo_logps), np.asarray(logps)
    support = np.isfinite(demo_logps)
    gold = samples["gold"].ravel()
    return {
        "sample_gold_mean": float(gold.mean()),
        "sample_gold_stderr": float(gold.std(ddof=1) / math.sqrt(len(gold))),
        "sample_length_mean": float(samples["response_mask"].sum(-1).mean()),
        "demonstrator_support": float(support.mean()),
        "reverse_kl_in_support": reverse_kl_in_support(logps, demo_logps),
        "distinct_2": diversity.distinct_n([r for g in content for r in g], 2),
        "self_bleu": diversity.self_bleu(content),
    }


def make_evaluator(setup: setup_lib.Setup):
    """``state -> (metrics, samples)``: the evaluation of the module docstring."""
    config, s = setup.config, setup.config.iq_learn
    _, eval_arrays, candidates = setup.data
    nll_fn = sft.make_nll_fn(setup.model_config, setup.mesh)
    score_fn = make_score_fn(setup.model_config, s.gamma, setup.mesh)
    task = setup.task
    if task is not None:
        prompts = task.prompts(config.policy_eval.num_prompts, config.data.seed + 7, split="eval")
        prompt_arrays = setup_lib.prompt_arrays(
            config, setup.tokenizer, len(prompts), config.data.seed + 7, split="eval"
        )
        prompt_arrays["index"] = np.arange(len(prompts), dtype=np.int32)
        sample_fn = make_sample_fn(setup, s.samples_per_prompt)
    if candidates is not None:
        gold = reward_eval.sequence_gold(
            task.gold_reward,
            candidates["input_ids"],
            candidates["attention_mask"],
            candidates["loss_mask"],
        )

    def evaluate(state):
        params = state.models["policy"].params
        nll = sft.token_mean_nll(nll_fn, params, eval_arrays, config.eval_batch_size, setup.mesh)
        metrics = {"nll": nll}
        if task is None:
            return metrics, []
        metrics["nll_gap"] = nll - task.demonstrator_entropy()
        if candidates is not None:
            flat = reward_eval.flatten_sets(candidates)
            rows = map_rows(score_fn, params, flat, config.eval_batch_size, setup.mesh)
            for name, values in rows.items():
                found = reward_metrics(values.reshape(gold.shape), gold)
                metrics.update({f"eval/{name}/{k}": v for k, v in found.items()})
        batch_size = min(config.policy_eval.batch_size, len(prompts))
        with jax.set_mesh(setup.mesh):
            samples = map_rows(sample_fn, params, prompt_arrays, batch_size, setup.mesh)
        metrics.update(sample_metrics(setup, samples, prompts))
        return metrics, []

    return evaluate


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the policy with the IQ-Learn loss on the demonstrations; returns the final
    evaluation metrics."""
    setup = setup_lib.setup(config, load_data)
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=())
    step = supervised_step(
        make_loss_fn(setup.model_config, config.iq_learn),
        optimizer,
        shardings,
        setup.mesh,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=setup.data[0],
        evaluate=make_evaluator(setup),
        description="iq_learn",
    )
