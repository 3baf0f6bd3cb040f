"""Reward over-optimization curves (Gao et al. 2023; SURVEY §6): gold and proxy reward against
the distance d = √KL(π‖π_SFT) for Best-of-N and RL against proxy reward models of several sizes.

    python -m experiments.overoptimization --workdir=runs/overoptimization
    python -m experiments.overoptimization --smoke   # the reduced size the test suite runs

Steps (each a normal run directory under WORKDIR, so a rerun resumes or reuses it):

1. the SFT policy (``experiments/configs/sft.py``) into WORKDIR/sft, unless ``--sft`` names one;
2. for each size in ``--sizes``, a Bradley–Terry proxy reward model trained from scratch on the
   same synthetic preferences (``rm_bt.py``: gold-labelled with σ(β_ann Δr*), β_ann = 5);
3. Best-of-N from the SFT policy by each proxy (``best_of_n.py``, N = 1 … ``--max_n``): d from
   Gao et al.'s log N − (N − 1)/N and, beside it, the exact KL of ``evaluation.best_of_n``;
4. RL against each proxy (``--rl``: ``grpo`` from ``rlhf.py`` and/or ``ppo`` from ``ppo.py``) at a
   small KL coefficient, evaluated every ``--eval_every`` iterations: each evaluation is one
   point (d = √eval/kl_mean);
5. least-squares fits d(α − βd) for Best-of-N and d(α − β log d) for RL of the gold reward gain
   over the SFT policy (``irl_jax.evaluation.overoptimization``), with R² and the peak.

Writes WORKDIR/overoptimization.json (every point and fit) and WORKDIR/overoptimization.png
(gold — solid — and proxy — dotted — gain against d, fitted gold curves dashed; one column per
proxy size, one row per method) and prints a markdown table of the fits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from experiments.configs import best_of_n, ppo, rlhf, rm_bt, sft

_WORKDIR = flags.DEFINE_string("workdir", "runs/overoptimization", "Runs and results.")
_SFT = flags.DEFINE_string("sft", "", "SFT policy export (default: trained into WORKDIR/sft).")
_SIZES = flags.DEFINE_list("sizes", ["small", "medium", "large"], "Proxy reward model sizes.")
_RL = flags.DEFINE_list("rl", ["grpo", "ppo"], "RL methods: grpo, ppo.")
_MAX_N = flags.DEFINE_integer("max_n", 512, "Best-of-N up to this N (draws per prompt).")
_BON_PROMPTS = flags.DEFINE_integer("bon_prompts", 64, "Held-out prompts for Best-of-N.")
_KL_COEF = flags.DEFINE_float("kl_coef", 0.02, "KL coefficient of the RL runs (small: go far).")
_RL_STEPS = flags.DEFINE_integer("rl_steps", 150, "RL iterations.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 15, "RL iterations between evaluations (points).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes end to end (the test suite's run).")

# Proxy reward model shapes (gpt2 architecture, trained from scratch on the same pairs): the
# number of parameters grows ~3x from one to the next.
SIZES = {
    "small": dict(hidden_size=32, num_layers=1, num_heads=2),
    "medium": dict(hidden_size=64, num_layers=2, num_heads=4),  # gpt2-tiny
    "large": dict(hidden_size=128, num_layers=3, num_heads=4),
}
RL_CONFIGS: dict[str, Callable] = {"grpo": rlhf.get_config, "ppo": ppo.get_config}


def _run(config, workdir: str) -> dict[str, float]:
    from irl_jax import algorithms

    config.checkpoint_every = 0
    return algorithms.run(config, workdir)


def _smoke(config) -> None:
    """The reduced size: a few steps, few prompts, short evaluations."""
    config.num_steps = min(config.num_steps, 4)
    config.eval_every = 0
    if "policy_eval" in config:
        config.policy_eval.num_prompts = 16
    config.data.num_train = min(config.data.num_train, 256)
    config.data.num_eval = min(config.data.num_eval, 64)


def sft_policy(workdir: str) -> str:
    """``--sft``, or an SFT policy trained once into WORKDIR/sft."""
    if _SFT.value:
        return _SFT.value
    config = sft.get_config()
    if _SMOKE.value:
        _smoke(config)
    _run(config, os.path.join(workdir, "sft"))
    return os.path.join(workdir, "sft", "export")


def proxy(workdir: str, size: str) -> str:
    """A Bradley–Terry proxy reward model of ``size``, trained from scratch."""
    config = rm_bt.get_config()
    config.model_overrides.update(SIZES[size])
    if _SMOKE.value:
        _smoke(config)
        config.reward_model.num_eval_prompts = 16
    _run(config, os.path.join(workdir, f"rm_{size}"))
    return os.path.join(workdir, f"rm_{size}", "export")


def bon_points(workdir: str, policy: str, reward_model: str, size: str) -> dict:
    """Best-of-N gains over N = 1 (proxy and gold) with both distances."""
    config = best_of_n.get_config()
    config.init_from, config.reward.model = policy, reward_model
    settings = config.best_of_n
    settings.max_n, settings.num_prompts = _MAX_N.value, _BON_PROMPTS.value
    settings.prompts_per_chunk = min(settings.prompts_per_chunk, _BON_PROMPTS.value)
    settings.samples_per_chunk = min(settings.samples_per_chunk, _MAX_N.value)
    run_dir = os.path.join(workdir, f"bon_{size}")
    _run(config, run_dir)
    with open(os.path.join(run_dir, "best_of_n.json"), encoding="utf-8") as f:
        rows = json.load(f)["best_of_n"]
    base = rows[0]
    from irl_jax.evaluation.overoptimization import bon_distance

    return {
        "n": [r["n"] for r in rows],
        "d": bon_distance(np.array([r["n"] for r in rows])).tolist(),
        "d_exact": [
            float(np.sqrt(r["kl_exact"])) if r["kl_exact"] is not None else None for r in rows
        ],
        "gold": [r["gold_mean"] - base["gold_mean"] for r in rows],
        "gold_stderr": [r["gold_stderr"] for r in rows],
        "proxy": [r["proxy_mean"] - base["proxy_mean"] for r in rows],
    }


def rl_points(workdir: str, policy: str, reward_model: str, size: str, method: str) -> dict:
    """Gains over the SFT policy at every evaluation of an RL run against the proxy."""
    from irl_jax.metrics import policy_evaluations

    config = RL_CONFIGS[method]()
    config.init_from, config.reward.model = policy, reward_model
    config.num_steps, config.eval_every = _RL_STEPS.value, _EVAL_EVERY.value
    config.policy_eval.num_prompts = 128
    config[method if method == "ppo" else "policy_gradient"].kl_coef = _KL_COEF.value
    if _SMOKE.value:
        config.batch_size = 8
        config.policy_eval.num_prompts = 16
        if method == "ppo":
            config.ppo.num_minibatches = 1
    run_dir = os.path.join(workdir, f"{method}_{size}")
    _run(config, run_dir)
    p = policy_evaluations(
        run_dir,
        kl="eval/kl_mean",
        gold="eval/reward/gold_mean",
        gold_stderr="eval/reward/gold_stderr",
        proxy="eval/reward/model_mean",
        gold0="eval/ref_reward/gold_mean",
        proxy0="eval/ref_reward/model_mean",
    )
    return {
        "step": p["step"],
        "d": [float(np.sqrt(max(kl, 0.0))) for kl in p["kl"]],
        "gold": [g - p["gold0"][0] for g in p["gold"]],
        "gold_stderr": p["gold_stderr"],
        "proxy": [m - p["proxy0"][0] for m in p["proxy"]],
    }


def fit_points(points: dict, form: str) -> dict:
    """The Gao et al. fit of the gold gain (through the origin: d = 0, gain 0)."""
    from irl_jax.evaluation.overoptimization import fit

    d, gold = points["d"], points["gold"]
    if d[0] > 0:  # RL evaluations start after some training; Best-of-1 is the origin itself
        d, gold = [0.0, *d], [0.0, *gold]
    result = fit(form, d, gold)
    return {k: getattr(result, k) for k in ("alpha", "beta", "r2", "peak_d", "peak_reward")}


def plot(results: dict, path: str) -> None:
    """Rows: methods; columns: proxy sizes; gold solid, proxy dotted, fit dashed."""
    from irl_jax import plots
    from irl_jax.evaluation.overoptimization import curve

    methods = list(next(iter(results.values())))
    panels = [f"{method}, {size} RM" for method in methods for size in results]
    runs: dict[str, dict] = {"gold": {}, "proxy": {}}
    for size, by_method in results.items():
        for method, entry in by_method.items():
            panel = f"{method}, {size} RM"
            points = entry["points"]
            runs["gold"][panel] = (points["d"], points["gold"], points["gold_stderr"])
            runs["proxy"][panel] = (points["d"], points["proxy"], None)
    figure = plots.grid_figure(
        runs,
        panels,
        xlabel="d = √KL(π ‖ π_SFT)",
        ncols=len(results),
        title="Over-optimization: reward gain over the SFT policy (fit of gold dashed)",
    )
    for axes, panel in zip(figure.axes, panels, strict=False):
        method, size = panel.split(", ")[0], panel.split(", ")[1].removesuffix(" RM")
        entry = results[size][method]
        d = np.linspace(0.0, max(entry["points"]["d"]) * 1.05, 100)
        form = "bon" if method == "bon" else "rl"
        fit = entry["fit"]
        axes.plot(d, curve(form, d, fit["alpha"], fit["beta"]), "--", color="0.3", linewidth=1.0)
        axes.set_ylabel("reward gain")
    for line in (ax.get_lines() for ax in figure.axes):
        for artist in line:
            if artist.get_label() == "proxy":
                artist.set_linestyle(":")
    plots.save_figure(figure, path)


def markdown(results: dict, seconds: float) -> str:
    lines = [
        f"Over-optimization fits (`python -m experiments.overoptimization`, {seconds / 60:.1f} "
        "min): gold-reward gain over the SFT policy against d = √KL; Best-of-N: d(α − βd), RL: "
        "d(α − β log d).",
        "",
        "| proxy RM | method | α | β | R² | gold peak at d | fitted peak gain | last d | "
        "last gold gain | last proxy gain |",
        "|---" * 10 + "|",
    ]
    for size, by_method in results.items():
        for method, entry in by_method.items():
            fit, points = entry["fit"], entry["points"]
            lines.append(
                f"| {size} | {method} | {fit['alpha']:.3f} | {fit['beta']:.3f} | "
                f"{fit['r2']:.3f} | {fit['peak_d']:.2f} | {fit['peak_reward']:.3f} | "
                f"{points['d'][-1]:.2f} | {points['gold'][-1]:.3f} | {points['proxy'][-1]:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _SMOKE.value:
        flags.FLAGS.max_n, flags.FLAGS.bon_prompts = 4, 8
        flags.FLAGS.rl_steps, flags.FLAGS.eval_every = 4, 2
    start = time.perf_counter()
    workdir = _WORKDIR.value
    policy = sft_policy(workdir)
    results: dict[str, dict] = {}
    for size in _SIZES.value:
        reward_model = proxy(workdir, size)
        points = {"bon": bon_points(workdir, policy, reward_model, size)}
        for method in _RL.value:
            points[method] = rl_points(workdir, policy, reward_model, size, method)
        results[size] = {
            method: {"points": p, "fit": fit_points(p, "bon" if method == "bon" else "rl")}
            for method, p in points.items()
        }
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "overoptimization.json"), "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds, "kl_coef": _KL_COEF.value, "results": results}, f, indent=1)
    plot(results, os.path.join(workdir, "overoptimization.png"))
    print(markdown(results, seconds))


if __name__ == "__main__":
    app.run(main)
