"""Imitation from few demonstrations: continued behaviour cloning vs adversarial IRL (GAIL, AIRL,
FAIRL) from the same weak BC start, with the same demonstrations (SURVEY §2; Ghasemipour et
al. 2020 predict that each adversarial method wins on the divergence it minimizes: AIRL on the
reverse KL(π ‖ π_demo), FAIRL on the forward KL(π_demo ‖ π)).

    python -m experiments.imitation_compare --workdir=runs/imitation_compare

1. **BC start**: SFT (``experiments/configs/sft.py``'s model and optimizer) on only
   ``--num_demos`` demonstrations for ``--bc_steps`` steps: a weak policy.
2. **Continued BC**: SFT from the start on the same demonstrations for ``--bc_more_steps``
   more steps (a fresh optimizer).
3. **GAIL, AIRL, FAIRL**: ``experiments/configs/{gail,airl,fairl}.py`` from the start, with the
   same demonstrations, for ``--steps`` iterations.
4. **BT-RM + GRPO** (``rlhf``, a reference that learns from preferences instead of
   demonstrations): a Bradley–Terry reward model (``experiments/configs/rm_bt.py``: 4096 noisy
   preference pairs, from the start's weights) and GRPO against it from the start
   (``experiments/configs/rlhf.py``) with the adversarial runs' rollout budget (``--steps``
   iterations of 16 prompts × 4 responses); its train time counts both stages.

Every run saves checkpoints; each is then evaluated with the policy evaluator every algorithm
uses (256 held-out prompts; the BC start is the reference): gold reward ± stderr, the
smoothed reverse KL and the forward KL to the demonstrator, the off-support and style-token
rates (``irl_jax.evaluation.divergence``). Training wall time excludes these evaluations.
Writes ``OUT.md`` (the table) and ``OUT.png`` (the divergences during training).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments.configs import airl, fairl, gail, rlhf, rm_bt
from irl_jax.algorithms import experiment_config

_WORKDIR = flags.DEFINE_string("workdir", "runs/imitation_compare", "Runs go here.")
_OUT = flags.DEFINE_string("out", "docs/imitation_compare", "Writes OUT.md and OUT.png.")
_NUM_DEMOS = flags.DEFINE_integer("num_demos", airl.NUM_DEMONSTRATIONS, "Demonstrations.")
_BC_STEPS = flags.DEFINE_integer("bc_steps", 150, "SFT steps of the weak BC start.")
_BC_MORE_STEPS = flags.DEFINE_integer("bc_more_steps", 1000, "Continued-BC steps.")
_STEPS = flags.DEFINE_integer("steps", 100, "Adversarial iterations.")
_EVAL_POINTS = flags.DEFINE_integer("eval_points", 4, "Evaluated checkpoints per run.")
_METHODS = flags.DEFINE_list(
    "methods",
    ["bc", "gail", "airl", "fairl", "rlhf"],
    "Runs to compare (also: the VARIANTS).",
)

ADVERSARIAL = {"gail": gail, "airl": airl, "fairl": fairl}


def _demo_prompts(config):
    config.data.num_train = config.adversarial.num_demonstrations  # the demos' own prompts


def _strong_leash(config):
    config.adversarial.kl_coef = 0.5
    config.optimizer.learning_rate = 1e-4


# Variants (not in the default ``--methods``): name -> (base method, change, label).
VARIANTS = {
    "airl_demo_prompts": ("airl", _demo_prompts, "AIRL, demo prompts only"),
    "airl_leash": ("airl", _strong_leash, "AIRL, β=0.5, lr 1e-4"),
}
DEMO = "eval/demo/"
COLUMNS = (
    ("eval/reward/gold_mean", "gold reward"),
    (f"{DEMO}reverse_kl_mean", "reverse KL(π‖π̃_demo)"),
    (f"{DEMO}forward_kl_mean", "forward KL(π_demo‖π)"),
    (f"{DEMO}off_support_rate", "off support"),
    (f"{DEMO}style_rate", "style token"),
)


def sft_config(init_from: str, num_steps: int, checkpoint_every: int):
    config = experiment_config("sft")
    config.init_from = init_from
    config.num_steps = num_steps
    config.batch_size = 32
    config.eval_every = 0
    config.log_every = max(num_steps // 10, 1)
    config.checkpoint_every = checkpoint_every
    config.keep_checkpoints = 1000
    config.data.task = "preference"
    config.data.num_train = _NUM_DEMOS.value
    config.data.num_eval = 256
    config.data.max_length = 40
    config.optimizer.learning_rate = 3e-3
    return config


def train(name: str, config, train_fn) -> float:
    """Trains into WORKDIR/name (skipped when already complete); returns its wall time."""
    workdir = os.path.join(_WORKDIR.value, name)
    timing = os.path.join(workdir, "wall_seconds.txt")
    if os.path.exists(timing):
        with open(timing) as f:
            return float(f.read())
    start = time.perf_counter()
    train_fn(config, workdir)
    seconds = time.perf_counter() - start
    with open(timing, "w") as f:
        f.write(f"{seconds:.1f}")
    return seconds


def train_without_evaluation(algorithm: str):
    """``train(config, workdir)`` of the RL ``algorithm`` (``adversarial`` or
    ``policy_gradient``) without its final policy evaluation (the checkpoints are evaluated
    afterwards, outside the wall time)."""
    import importlib

    from irl_jax.algorithms import setup as setup_lib

    module = importlib.import_module(f"irl_jax.algorithms.{algorithm}")

    def train_fn(config, workdir: str) -> None:
        setup_lib.train_policy(module.build(config), workdir, algorithm, evaluate_policy=False)

    return train_fn


def rlhf_config(start: str, reward_model: str, total: int):
    """GRPO against the Bradley–Terry reward model from the start, with the adversarial runs'
    rollouts per iteration (16 prompts × 4 responses of ≤ 24 tokens)."""
    config = rlhf.get_config()
    config.init_from = start
    config.reward.model = reward_model
    config.num_steps, config.eval_every = total, 0
    config.checkpoint_every = total // _EVAL_POINTS.value
    config.keep_checkpoints = 100
    config.sampling.group_size = airl.adversarial_config("airl").sampling.group_size
    config.export = False  # the checkpoints are evaluated
    return config


def evaluator(start: str):
    """``evaluate(params) -> metrics``: ``setup.policy_evaluator`` with the BC start as the
    reference."""
    from irl_jax.algorithms import setup as setup_lib

    config = airl.adversarial_config("airl")
    config.init_from = start
    setup = setup_lib.setup(config)
    reference = setup.load_weights()
    evaluate = setup_lib.policy_evaluator(setup)
    return lambda params: evaluate(params, reference)[0]


def checkpoint_metrics(name: str, evaluate, steps: list[int]) -> dict[int, dict[str, float]]:
    """The evaluation of run ``name``'s checkpoints at ``steps``."""
    from irl_jax.checkpoint import CheckpointManager

    manager = CheckpointManager(os.path.join(_WORKDIR.value, name))
    cache = os.path.join(_WORKDIR.value, name, "checkpoint_evaluations.json")
    out = {}
    if os.path.exists(cache):
        with open(cache) as f:
            out = {int(step): metrics for step, metrics in json.load(f).items()}
    for step in steps:
        if step not in out:
            params = manager.read(step)["models"]["policy"]["params"]
            out[step] = evaluate(jax.tree.map(np.asarray, params))
        print(name, step, {k: round(out[step][k], 3) for k, _ in COLUMNS})
    with open(cache, "w") as f:
        json.dump(out, f)
    return {step: out[step] for step in steps}


def cell(metrics: dict[str, float], key: str) -> str:
    stderr = metrics.get(key.removesuffix("_mean") + "_stderr")
    value = metrics[key]
    return f"{value:.2f} ± {stderr:.2f}" if stderr is not None else f"{value:.3f}"


def markdown(rows: dict[str, tuple[dict[str, float], float]]) -> str:
    header = "| run | " + " | ".join(title for _, title in COLUMNS) + " | train time |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for name, (metrics, seconds) in rows.items():
        cells = " | ".join(cell(metrics, key) for key, _ in COLUMNS)
        lines.append(f"| {name} | {cells} | {seconds:.0f} s |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict[int, dict[str, float]]], times: dict[str, float], path: str):
    """Reverse KL, forward KL, gold reward and off-support rate against training seconds
    (checkpoint step / total steps × the run's wall time)."""
    from irl_jax import plots

    metrics = [key for key, _ in COLUMNS[:4]]
    series = {}
    for name, points in curves.items():
        steps = sorted(points)
        seconds = np.array(steps) / max(steps) * times[name]
        series[name] = {}
        for key in metrics:
            stderr = key.removesuffix("_mean") + "_stderr"
            values = np.array([points[s][key] for s in steps])
            errors = np.array([points[s].get(stderr, 0.0) for s in steps])
            series[name][key] = (seconds, values, errors)
    plots.metric_grid(
        series,
        metrics,
        path,
        xlabel="training seconds (2 CPU cores)",
        ncols=2,
        title="Imitation from 128 demonstrations: continued BC vs adversarial IRL",
    )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    from irl_jax.algorithms import reward_model, sft

    root = _WORKDIR.value
    start_dir = os.path.join(root, "bc_start", "export")
    times = {"bc_start": train("bc_start", sft_config("", _BC_STEPS.value, 0), sft.train)}
    evaluate = evaluator(start_dir)
    points = lambda total: [
        round(total * (i + 1) / _EVAL_POINTS.value) for i in range(_EVAL_POINTS.value)
    ]
    start_metrics = evaluate(evaluator_params(start_dir))
    curves, rows = {}, {"BC start": (start_metrics, times["bc_start"])}
    for method in _METHODS.value:
        if method == "bc":
            total = _BC_MORE_STEPS.value
            config = sft_config(start_dir, total, total // _EVAL_POINTS.value)
            name, fn, label = "continued_bc", sft.train, "continued BC"
        elif method == "rlhf":
            rm = rm_bt.get_config()
            rm.init_from = start_dir
            times["rlhf_rm"] = train("rlhf_rm", rm, reward_model.train)
            total = _STEPS.value
            config = rlhf_config(start_dir, os.path.join(root, "rlhf_rm", "export"), total)
            name, fn = "rlhf", train_without_evaluation("policy_gradient")
            label = "BT-RM + GRPO (4096 preference pairs)"
        else:
            base, change, label = VARIANTS.get(method, (method, None, method.upper()))
            total = _STEPS.value
            config = ADVERSARIAL[base].get_config()
            config.init_from = start_dir
            config.num_steps, config.eval_every = total, 0
            config.checkpoint_every = total // _EVAL_POINTS.value
            config.adversarial.num_demonstrations = _NUM_DEMOS.value
            config.export = False  # the checkpoints are evaluated
            if change is not None:
                change(config)
            name, fn = method, train_without_evaluation("adversarial")
        times[name] = train(name, config, fn) + times.get(f"{name}_rm", 0.0)
        results = checkpoint_metrics(name, evaluate, points(total))
        curves[label] = {0: start_metrics, **results}
        rows[label] = (results[total], times[name])
    table = markdown(rows)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(f"{_OUT.value}.md", "w", encoding="utf-8") as f:
        f.write(table)
    plot(curves, {label: rows[label][1] for label in curves}, f"{_OUT.value}.png")
    print(table)


def evaluator_params(path: str):
    """The policy params of a Hugging Face directory (host arrays)."""
    from irl_jax import sharding
    from irl_jax.models import source as model_source

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    return jax.tree.map(np.asarray, jax.device_get(model_source.load_params(path, mesh)))


if __name__ == "__main__":
    app.run(main)
