"""Credit assignment on the long-horizon reasoning task (SURVEY §7): PPO on one learned reward
handed out as sparse, prefix-difference, attention-based (ABC) or DPO-implicit (RTO) token
rewards (``ppo.reward_shaping``), ``--seeds`` seeds each.

    python -m experiments.credit_assignment --workdir=runs/credit
    python -m experiments.credit_assignment --smoke   # tiny sizes, end to end

Steps (each a normal run directory under WORKDIR, reused by a rerun that finds its export or
its metrics):

1. SFT on ``reasoning_long`` demonstrations (6-12 steps, responses of 50-120 tokens);
2. a Bradley-Terry reward model from the SFT export on same-prompt pairs labelled by the gold
   (final-answer) reward: the outcome reward every PPO run optimizes;
3. DPO from the SFT export on the same pairs: π_dpo of RTO (its reference: the SFT export);
4. PPO from the SFT export against the reward model, for each credit ``--kinds`` and seed
   (critic from the policy, β = ``--kl_coef``), evaluated every ``--eval_every`` iterations;
5. per kind: the iterations to reach 90 % of sparse PPO's final gold reward (mean over the
   seeds that reach it), the final gold reward ± its stderr across seeds, the variance across
   seeds, the final KL to the SFT policy.

Writes WORKDIR/credit_assignment.json and WORKDIR/credit_assignment.png (held-out gold reward
against PPO iterations, mean ± stderr over seeds) and prints a markdown table.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging

from experiments.configs import ppo as ppo_configs
from irl_jax.algorithms import experiment_config

_WORKDIR = flags.DEFINE_string("workdir", "runs/credit", "Runs and results.")
_KINDS = flags.DEFINE_list("kinds", ["sparse", "prefix", "abc", "rto"], "Credit assignments.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "PPO seeds per credit assignment.")
_PPO_STEPS = flags.DEFINE_integer("ppo_steps", 60, "PPO iterations.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "PPO iterations between evaluations.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "PPO prompts per iteration.")
_KL_COEF = flags.DEFINE_float("kl_coef", 0.05, "PPO's KL coefficient β.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", 1500, "SFT steps.")
_RM_STEPS = flags.DEFINE_integer("rm_steps", 600, "Reward-model steps.")
_DPO_STEPS = flags.DEFINE_integer("dpo_steps", 300, "DPO steps.")
_DPO_BETA = flags.DEFINE_float("dpo_beta", 0.5, "DPO's β.")
_RTO_COEF = flags.DEFINE_float(
    "rto_coef",
    None,
    "RTO's β₁, the implicit reward's coefficient (default: --kl_coef; β₁ = β makes π_dpo the "
    "optimum without the outcome term, β₁ > β sharpens it by β₁/β and runs the KL away).",
)
_ABC_WEIGHT = flags.DEFINE_float("abc_weight", 0.5, "ABC's w.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes end to end.")

MAX_PROMPT, MAX_LENGTH = 32, 160  # reasoning_long: prompts <= 32 tokens, responses <= 128
TARGET = 0.9  # of sparse PPO's final gold reward


def _long_horizon(config):
    config.model = "gpt2-tiny"
    config.data.update(task="reasoning_long", max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
    config.data.num_train = 256 if _SMOKE.value else 8192
    config.data.num_eval = 64 if _SMOKE.value else 512
    config.checkpoint_every = 0
    if "policy_eval" in config:
        config.policy_eval.num_prompts = 16 if _SMOKE.value else 256
        config.policy_eval.max_new_tokens = MAX_LENGTH - MAX_PROMPT
    return config


def _run(config, workdir: str, steps: int) -> str:
    """Runs ``config`` for ``steps`` into ``workdir`` unless it finished before; its export."""
    from irl_jax import algorithms

    export = os.path.join(workdir, "export")
    if not os.path.isfile(os.path.join(export, "config.json")):
        config.num_steps = steps
        config.eval_every = 0 if _SMOKE.value else config.eval_every
        algorithms.run(config, workdir)
    return export


def sft(workdir: str) -> str:
    config = _long_horizon(experiment_config("sft"))
    config.update(batch_size=32, eval_every=500)
    config.optimizer.learning_rate = 3e-3
    return _run(config, os.path.join(workdir, "sft"), _SFT_STEPS.value)


def _pairs(config, policy: str):
    config = _long_horizon(config)
    config.update(init_from=policy, batch_size=32, eval_every=300)
    config.optimizer.learning_rate = 1e-3
    return config


def reward_model(workdir: str, policy: str) -> str:
    config = _pairs(experiment_config("reward_model"), policy)
    config.reward_model.update(loss="bradley_terry", pairing="same_prompt")
    config.reward_model.num_eval_prompts = 16 if _SMOKE.value else 256
    return _run(config, os.path.join(workdir, "rm"), _RM_STEPS.value)


def dpo(workdir: str, policy: str) -> str:
    config = _pairs(experiment_config("direct"), policy)
    config.direct.update(loss="dpo", beta=_DPO_BETA.value, pairing="same_prompt")
    return _run(config, os.path.join(workdir, "dpo"), _DPO_STEPS.value)


def ppo_curve(workdir: str, kind: str, seed: int, exports: dict[str, str]) -> dict:
    """One PPO run's evaluations: ``step``, held-out ``gold`` (± ``gold_stderr``), ``kl``."""
    from irl_jax import algorithms
    from irl_jax.metrics import policy_evaluations, read_metrics

    run_dir = os.path.join(workdir, f"ppo_{kind}_{seed}")
    rows = read_metrics(run_dir) if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []
    if not rows or rows[-1]["step"] < _PPO_STEPS.value:
        config = _long_horizon(ppo_configs.rlhf_config())
        config.update(init_from=exports["sft"], seed=seed, export=False, log_every=5)
        config.update(num_steps=_PPO_STEPS.value, eval_every=_EVAL_EVERY.value)
        config.batch_size = _BATCH.value
        config.sampling.max_new_tokens = MAX_LENGTH - MAX_PROMPT
        config.reward.model = exports["rm"]
        config.ppo.update(kl_coef=_KL_COEF.value, num_minibatches=2 if _SMOKE.value else 4)
        config.ppo.reward_shaping.update(
            kind=kind,
            abc_weight=_ABC_WEIGHT.value,
            dpo_model=exports.get("dpo", ""),
            dpo_coef=_KL_COEF.value if _RTO_COEF.value is None else _RTO_COEF.value,
        )
        algorithms.run(config, run_dir)
    curve = policy_evaluations(
        run_dir,
        gold="eval/reward/gold_mean",
        gold_stderr="eval/reward/gold_stderr",
        kl="eval/kl_mean",
        sft_gold="eval/ref_reward/gold_mean",
    )
    curve["sft_gold"] = curve["sft_gold"][0] if curve["sft_gold"] else float("nan")
    return curve


def iterations_to(curve: dict, target: float) -> float:
    """The first evaluated iteration whose gold reward reaches ``target`` (NaN: never)."""
    reached = [s for s, g in zip(curve["step"], curve["gold"]) if g >= target]
    return float(reached[0]) if reached else float("nan")


def summarize(curves: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per kind: final gold mean ± stderr and variance across seeds, final KL, and iterations
    to ``TARGET`` × sparse PPO's final gold (mean over the seeds that reach it)."""
    final = lambda runs, key: np.asarray([run[key][-1] for run in runs], np.float64)
    sparse = curves.get("sparse")
    target = TARGET * final(sparse, "gold").mean() if sparse else float("nan")
    out = {}
    for kind, runs in curves.items():
        gold, kl = final(runs, "gold"), final(runs, "kl")
        steps = np.asarray([iterations_to(run, target) for run in runs])
        reached = steps[~np.isnan(steps)]
        out[kind] = {
            "gold": float(gold.mean()),
            "gold_stderr": float(gold.std(ddof=1) / np.sqrt(len(gold))) if len(gold) > 1 else 0.0,
            "gold_variance": float(gold.var(ddof=1)) if len(gold) > 1 else 0.0,
            "kl": float(kl.mean()),
            "iterations_to_target": float(reached.mean()) if len(reached) else float("nan"),
            "seeds_reaching_target": int(len(reached)),
            "target": float(target),
        }
    return out


def markdown(summary: dict, sft_gold: float, seconds: float) -> str:
    lines = [
        f"Credit assignment on `reasoning_long` (`python -m experiments.credit_assignment`, "
        f"{seconds / 60:.1f} min; {_SEEDS.value} seeds, {_PPO_STEPS.value} PPO iterations of "
        f"{_BATCH.value} prompts, β = {_KL_COEF.value:g}; SFT gold {sft_gold:.3f}).",
        "",
        f"| credit | iterations to {TARGET:.0%} of sparse final gold (seeds reaching) | "
        "final gold ± stderr | variance across seeds | final KL |",
        "|---|---|---|---|---|",
    ]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['iterations_to_target']:.0f} ({s['seeds_reaching_target']}/"
            f"{_SEEDS.value}) | {s['gold']:.3f} ± {s['gold_stderr']:.3f} | "
            f"{s['gold_variance']:.4f} | {s['kl']:.2f} |"
        )
    return "\n".join(lines).replace("nan", "—") + "\n"


def plot(curves: dict[str, list[dict]], path: str) -> None:
    from irl_jax import plots

    series = {}
    for kind, runs in curves.items():
        length = min(len(run["gold"]) for run in runs)
        gold = np.asarray([run["gold"][:length] for run in runs])
        stderr = gold.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else None
        series[kind] = (runs[0]["step"][:length], gold.mean(axis=0), stderr)
    plots.line_plot(
        series,
        out=path,
        xlabel="PPO iteration",
        ylabel="held-out gold reward (final answer right)",
        title="Sparse vs dense credit on the long-horizon reasoning task",
    )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _SMOKE.value:
        flags.FLAGS.sft_steps, flags.FLAGS.rm_steps, flags.FLAGS.dpo_steps = 4, 4, 4
        flags.FLAGS.ppo_steps, flags.FLAGS.eval_every, flags.FLAGS.seeds = 2, 1, 2
        flags.FLAGS.batch_size = 16
    start = time.perf_counter()
    workdir = _WORKDIR.value
    exports = {"sft": sft(workdir)}
    exports["rm"] = reward_model(workdir, exports["sft"])
    if "rto" in _KINDS.value:
        exports["dpo"] = dpo(workdir, exports["sft"])
    curves = {
        kind: [ppo_curve(workdir, kind, seed, exports) for seed in range(_SEEDS.value)]
        for kind in _KINDS.value
    }
    summary = summarize(curves)
    seconds = time.perf_counter() - start
    sft_gold = float(np.mean([run["sft_gold"] for runs in curves.values() for run in runs]))
    with open(os.path.join(workdir, "credit_assignment.json"), "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds, "summary": summary, "curves": curves}, f, indent=1)
    plot(curves, os.path.join(workdir, "credit_assignment.png"))
    print(markdown(summary, sft_gold, seconds))


if __name__ == "__main__":
    app.run(main)
