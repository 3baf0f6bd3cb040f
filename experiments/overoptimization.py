"""Reward over-optimization curves (Gao et al. 2023; SURVEY §6): gold and proxy reward against
the distance d = √KL(π‖π_SFT) for Best-of-N and RL against proxy reward models of several sizes.

    python -m experiments.overoptimization --workdir=runs/overoptimization \
        --sft=runs/quickstart/sft/export
    python -m experiments.overoptimization --smoke   # the reduced size the test suite runs

Steps (each a normal run directory under WORKDIR, Best-of-N's draw cached in
WORKDIR/bon_scores.npz, so a rerun resumes or reuses them):

1. the SFT policy (``experiments/configs/sft.py``) into WORKDIR/sft, unless ``--sft`` names one;
2. for each size in ``--sizes``, a Bradley–Terry proxy reward model trained from scratch on the
   same synthetic preferences (``rm_bt.py``: gold-labelled with σ(β_ann Δr*), β_ann = 5);
3. Best-of-N from the SFT policy (N = 1 … ``--max_n``): one draw of ``--max_n`` responses to
   each of ``--prompts`` held-out prompts, scored once by the gold reward and every proxy
   (``algorithms.best_of_n.best_of_n``), so all proxies select from the same samples; d from
   Gao et al.'s log N − (N − 1)/N and, beside it, the exact KL of ``evaluation.best_of_n``;
4. RL against each proxy (``--rl``: ``grpo`` from ``rlhf.py`` and/or ``ppo`` from ``ppo.py``),
   ``--seeds`` runs each (``--workers`` at a time, ``experiments.common.train_runs``), evaluated
   every ``--eval_every`` iterations on the same held-out prompts as Best-of-N: each evaluation
   is one point (d = √eval/kl_mean). Gains are measured from the SFT policy's mean over all
   Best-of-N draws (512 per prompt), not from the evaluation's own single reference draw, whose
   sampling error would shift every point of a run alike;
5. least-squares fits d(α − βd) for Best-of-N and d(α − β log d) for RL of the gold reward gain
   over the SFT policy (``irl_jax.evaluation.overoptimization``), with R² and the peak: for RL on
   the pooled points of all seeds, and per seed for the spread of α, β and the final gain.

The KL coefficients differ by method because the KL term does: GRPO adds β·k3 averaged over
tokens to the loss, PPO subtracts β·k1 of every token from the reward. Each is set so that the
runs pass the gold peak within ``--rl_steps`` (GRPO at 0.1 and PPO at 0.05 reach KL ≈ 25–45;
PPO at 0.1 stops at KL ≈ 6 with its gold gain on a plateau, never turning down).

Writes WORKDIR/overoptimization.json (every point, fit and stage time), the same without the
points (``overoptimization_fits.json``), the table (``overoptimization.md``) and
WORKDIR/overoptimization.png (gold — solid — and proxy — dotted — gain against d, one line per
seed, fitted gold curves dashed; one column per proxy size, one row per method) and prints a
markdown table of the fits.

Measured (9.1 min on 2 idle cores, the RL runs two at a time; README "Over-optimization"): the
three proxies reach the same held-out gold accuracy (0.83); Best-of-N fits d(α − βd) with R²
0.94–0.98 and peaks at d ≈ 1.9–2.1 (+0.83 gold); against the medium and large proxies GRPO and
PPO peak at d ≈ 1.7–2.3 (+0.57–0.71) and fall to +0.31 … +0.34 (GRPO, d ≈ 6) and −0.42 … +0.69
(PPO, d ≈ 4–5); the RL fits' R² is 0.22–0.72 on the pooled points, 0.30–0.95 on bin means.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from experiments import common
from experiments.configs import best_of_n, ppo, rlhf, rm_bt, sft

_WORKDIR = flags.DEFINE_string("workdir", "runs/overoptimization", "Runs and results.")
_SFT = flags.DEFINE_string("sft", "", "SFT policy export (default: trained into WORKDIR/sft).")
_SIZES = flags.DEFINE_list("sizes", ["small", "medium", "large"], "Proxy reward model sizes.")
_RL = flags.DEFINE_list("rl", ["grpo", "ppo"], "RL methods: grpo, ppo.")
_MAX_N = flags.DEFINE_integer("max_n", 512, "Best-of-N up to this N (draws per prompt).")
_PROMPTS = flags.DEFINE_integer(
    "prompts", 64, "Held-out prompts of Best-of-N and of every RL evaluation (the same ones)."
)
_GRPO_KL_COEF = flags.DEFINE_float("grpo_kl_coef", 0.1, "β of GRPO (k3 loss term).")
_PPO_KL_COEF = flags.DEFINE_float("ppo_kl_coef", 0.05, "β of PPO (k1 reward penalty).")
_RL_STEPS = flags.DEFINE_integer("rl_steps", 80, "RL iterations.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2, "RL iterations between evaluations (points).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "RL runs (seeds 0 … seeds − 1) per method and proxy.")
_WORKERS = flags.DEFINE_integer("workers", 0, common.WORKERS_HELP)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes end to end (the test suite's run).")

# Proxy reward model shapes (gpt2 architecture, trained from scratch on the same pairs): 24k,
# 122k and 640k parameters.
SIZES = {
    "small": dict(hidden_size=32, num_layers=1, num_heads=2),
    "medium": dict(hidden_size=64, num_layers=2, num_heads=4),  # gpt2-tiny
    "large": dict(hidden_size=128, num_layers=3, num_heads=4),
}
RL_CONFIGS: dict[str, Callable] = {"grpo": rlhf.get_config, "ppo": ppo.get_config}
FIT_KEYS = ("alpha", "beta", "r2", "peak_d", "peak_reward")


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


def proxy_quality(workdir: str, size: str) -> dict[str, float]:
    """The proxy's final held-out agreement with the gold reward (``rm_bt.py``'s evaluation)."""
    from irl_jax.metrics import read_metrics

    final = [
        r for r in read_metrics(os.path.join(workdir, f"rm_{size}")) if "eval/gold_accuracy" in r
    ]
    return {k: final[-1][f"eval/{k}"] for k in ("gold_accuracy", "spearman", "bon_gain")}


def bon_scores(workdir: str, policy: str, reward_models: dict[str, str]) -> dict[str, np.ndarray]:
    """``[prompts, max_n]`` rewards of one draw from the SFT policy: ``gold`` and each proxy
    (by size). Cached in WORKDIR/bon_scores.npz."""
    from irl_jax.algorithms import best_of_n as bon

    config = best_of_n.get_config()
    config.init_from = policy
    settings = config.best_of_n
    settings.max_n, settings.num_prompts = _MAX_N.value, _PROMPTS.value
    settings.prompts_per_chunk = min(settings.prompts_per_chunk, _PROMPTS.value)
    settings.samples_per_chunk = min(settings.samples_per_chunk, _MAX_N.value)
    proxies = {size: {"model": path} for size, path in reward_models.items()}
    return bon.score_proxies(config, proxies, cache=os.path.join(workdir, "bon_scores.npz"))


def bon_points(scores: dict[str, np.ndarray], size: str) -> dict:
    """Best-of-N gains over N = 1 (proxy and gold) with both distances."""
    from irl_jax.evaluation import best_of_n as estimators
    from irl_jax.evaluation.overoptimization import bon_distance

    rows = estimators.report_rows(scores[size], scores["gold"], scores[size].shape[1])
    base = rows[0]
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


def rl_config(policy: str, reward_model: str, method: str, seed: int):
    """The RL run of ``method`` (``grpo`` or ``ppo``) against one proxy, from the SFT policy."""
    config = RL_CONFIGS[method]()
    config.seed = seed
    config.init_from, config.reward.model = policy, reward_model
    config.num_steps, config.eval_every = _RL_STEPS.value, _EVAL_EVERY.value
    config.checkpoint_every = 0
    config.policy_eval.num_prompts = _PROMPTS.value
    if method == "ppo":
        config.ppo.kl_coef = _PPO_KL_COEF.value
    else:
        config.policy_gradient.kl_coef = _GRPO_KL_COEF.value
    if _SMOKE.value:
        config.batch_size = 8
        if method == "ppo":
            config.ppo.num_minibatches = 1
    return config


def rl_points(run_dir: str, seed: int, base: dict) -> dict:
    """Gains over the SFT policy (``base``: its mean gold and proxy reward on the evaluation
    prompts) at every evaluation of one finished RL run against a proxy."""
    from irl_jax.metrics import policy_evaluations

    p = policy_evaluations(
        run_dir,
        kl="eval/kl_mean",
        gold="eval/reward/gold_mean",
        gold_stderr="eval/reward/gold_stderr",
        proxy="eval/reward/model_mean",
    )
    last = {step: i for i, step in enumerate(p["step"])}  # a rerun re-evaluates the last step
    rows = sorted(last.values(), key=lambda i: p["step"][i])
    return {
        "seed": seed,
        "step": [p["step"][i] for i in rows],
        "d": [float(np.sqrt(max(p["kl"][i], 0.0))) for i in rows],
        "gold": [p["gold"][i] - base["gold"] for i in rows],
        "gold_stderr": [p["gold_stderr"][i] for i in rows],
        "proxy": [p["proxy"][i] - base["proxy"] for i in rows],
    }


def fit_points(d: list[float], gold: list[float], form: str) -> dict:
    """The Gao et al. fit of the gold gain (through the origin: d = 0, gain 0)."""
    from irl_jax.evaluation.overoptimization import fit

    if min(d) > 0:  # RL evaluations start after some training; Best-of-1 is the origin itself
        d, gold = [0.0, *d], [0.0, *gold]
    result = fit(form, d, gold)
    return {k: getattr(result, k) for k in FIT_KEYS}


def rl_entry(runs: list[dict], bins: int = 12) -> dict:
    """The fit on the pooled points of all seeds, each seed's own fit, the spread (mean, sample
    standard deviation) of α, β and the final gains across seeds, and the mean curve: the
    pooled points in ``bins`` equal-count bins of d (seeds pass the same d at different
    steps). ``r2_binned`` is the pooled fit's R² against the bin means (the shape, with less
    sampling noise), ``measured_peak`` the bin of the largest mean gold gain and
    ``r2_other_form`` the R² of the Best-of-N form d(α − βd) fitted to the same points."""
    from irl_jax.evaluation.overoptimization import binned, curve, r_squared

    pooled = {k: [x for run in runs for x in run[k]] for k in ("d", "gold", "gold_stderr", "proxy")}
    for run in runs:
        run["fit"] = fit_points(run["d"], run["gold"], "rl")
    spread = lambda values: [
        float(np.mean(values)),
        float(np.std(values, ddof=min(1, len(values) - 1))),
    ]
    fit = fit_points(pooled["d"], pooled["gold"], "rl")
    d_mean, gold_mean = binned(pooled["d"], pooled["gold"], bins)
    r2_binned = r_squared(gold_mean, curve("rl", d_mean, fit["alpha"], fit["beta"]))
    best = int(np.argmax(gold_mean))
    return {
        "runs": runs,
        "points": pooled,
        "fit": fit,
        "binned": {"d": d_mean.tolist(), "gold": gold_mean.tolist()},
        "r2_binned": float(r2_binned),
        "r2_other_form": fit_points(pooled["d"], pooled["gold"], "bon")["r2"],
        "spread": {
            "alpha": spread([run["fit"]["alpha"] for run in runs]),
            "beta": spread([run["fit"]["beta"] for run in runs]),
            "final_d": spread([run["d"][-1] for run in runs]),
            "final_gold": spread([run["gold"][-1] for run in runs]),
            "final_proxy": spread([run["proxy"][-1] for run in runs]),
        },
        "measured_peak": {"d": float(d_mean[best]), "gold": float(gold_mean[best])},
    }


def bon_entry(points: dict) -> dict:
    """The Best-of-N fit, the R² of the RL form d(α − β log d) on the same points, and the
    measured peak (the N of the largest gold gain)."""
    best = int(np.argmax(points["gold"]))
    return {
        "points": points,
        "fit": fit_points(points["d"], points["gold"], "bon"),
        "r2_other_form": fit_points(points["d"], points["gold"], "rl")["r2"],
        "measured_peak": {
            "n": points["n"][best],
            "d": points["d"][best],
            "gold": points["gold"][best],
        },
    }


def _with_gaps(series: list[dict], key: str) -> list[float]:
    """The seeds' series joined by NaN, which matplotlib draws as separate lines."""
    return [x for i, run in enumerate(series) for x in ([np.nan] if i else []) + run[key]]


def plot(results: dict, path: str) -> None:
    """Rows: methods; columns: proxy sizes; gold solid, proxy dotted (one line per seed), fit
    of the gold gain dashed, RL's binned gold means as dots."""
    from irl_jax import plots
    from irl_jax.evaluation.overoptimization import curve

    methods = list(next(iter(results.values())))
    panels = [f"{method}, {size} RM" for method in methods for size in results]
    runs: dict[str, dict] = {"gold": {}, "proxy": {}}
    for size, by_method in results.items():
        for method, entry in by_method.items():
            panel = f"{method}, {size} RM"
            if method == "bon":
                points = entry["points"]
                runs["gold"][panel] = (points["d"], points["gold"], points["gold_stderr"])
                runs["proxy"][panel] = (points["d"], points["proxy"], None)
            else:
                d = _with_gaps(entry["runs"], "d")
                runs["gold"][panel] = (d, _with_gaps(entry["runs"], "gold"), None)
                runs["proxy"][panel] = (d, _with_gaps(entry["runs"], "proxy"), None)
    figure = plots.grid_figure(
        runs,
        panels,
        xlabel="d = √KL(π ‖ π_SFT)",
        ncols=len(results),
        title="Reward gain over the SFT policy (gold fit dashed; RL: bin means ●, 1 line a seed)",
    )
    for axes, panel in zip(figure.axes, panels, strict=False):
        method, size = panel.split(", ")[0], panel.split(", ")[1].removesuffix(" RM")
        entry = results[size][method]
        d = np.linspace(0.0, np.nanmax(entry["points"]["d"]) * 1.05, 100)
        fit = entry["fit"]
        form = "bon" if method == "bon" else "rl"
        axes.plot(d, curve(form, d, fit["alpha"], fit["beta"]), "--", color="0.3", linewidth=1.0)
        if "binned" in entry:
            axes.plot(entry["binned"]["d"], entry["binned"]["gold"], "o", color="k", ms=3.5)
        axes.axhline(0.0, color="0.8", linewidth=0.8)
        axes.set_ylabel("reward gain")
    for line in (ax.get_lines() for ax in figure.axes):
        for artist in line:
            if artist.get_label() == "proxy":
                artist.set_linestyle(":")
    figure.axes[0].legend(fontsize="small")  # again, to show the proxy dotted
    plots.save_figure(figure, path)


def _pm(pair: list[float], digits: int = 2) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def markdown(results: dict, quality: dict, seconds: float) -> str:
    lines = [
        f"Over-optimization fits (`python -m experiments.overoptimization`, {seconds / 60:.1f} "
        "min): gold-reward gain over the SFT policy against d = √KL; Best-of-N: d(α − βd), RL: "
        f"d(α − β log d) on the pooled points of {_SEEDS.value} seed(s); ± is the standard "
        "deviation across seeds (each seed fitted alone for α, β); R² (bins): the pooled fit "
        "against the means of 12 equal-count bins of d; measured peak: the bin of the largest "
        "mean (Best-of-N: the N); R² (other): the other form fitted to the same points; "
        "gold acc.: the proxy's held-out pairwise accuracy against the gold reward.",
        "",
        "| proxy RM (gold acc.) | method | α | β | R² | R² (bins) | R² (other) | fitted peak d "
        "(gain) | measured peak d (gain) | final d | final gold gain | final proxy gain | α per "
        "seed | β per seed |",
        "|---" * 14 + "|",
    ]
    for size, by_method in results.items():
        for method, entry in by_method.items():
            fit, peak = entry["fit"], entry["measured_peak"]
            row = [
                f"{size} ({quality[size]['gold_accuracy']:.3f})",
                method,
                f"{fit['alpha']:.3f}",
                f"{fit['beta']:.3f}",
                f"{fit['r2']:.2f}",
                f"{entry['r2_binned']:.2f}" if method != "bon" else "—",
                f"{entry['r2_other_form']:.2f}",
                f"{fit['peak_d']:.2f} ({fit['peak_reward']:+.2f})",
                f"{peak['d']:.2f} ({peak['gold']:+.2f})",
            ]
            if method == "bon":
                points = entry["points"]
                row += [f"{points['d'][-1]:.2f}", f"{points['gold'][-1]:+.2f}"]
                row += [f"{points['proxy'][-1]:+.2f}", "—", "—"]
            else:
                s = entry["spread"]
                row += [_pm(s["final_d"]), _pm(s["final_gold"]), _pm(s["final_proxy"])]
                row += [_pm(s["alpha"], 3), _pm(s["beta"], 3)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def fits_only(report: dict) -> dict:
    """The report without its points: fits, spreads, bin means, peaks, settings and times."""
    results = {
        size: {
            method: {k: v for k, v in entry.items() if k not in ("points", "runs")}
            | ({"seed_fits": [run["fit"] for run in entry["runs"]]} if "runs" in entry else {})
            for method, entry in by_method.items()
        }
        for size, by_method in report["results"].items()
    }
    return {**report, "results": results}


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _SMOKE.value:
        flags.FLAGS.max_n, flags.FLAGS.prompts = 4, 8
        flags.FLAGS.rl_steps, flags.FLAGS.eval_every = 4, 2
        flags.FLAGS.seeds = min(_SEEDS.value, 2)
    workdir = os.path.abspath(_WORKDIR.value)
    common.compilation_cache(workdir)
    clock, start = common.Clock(), time.perf_counter()
    policy = clock("sft", sft_policy, workdir)
    reward_models = {size: clock(f"rm_{size}", proxy, workdir, size) for size in _SIZES.value}
    scores = clock("bon_draw", bon_scores, workdir, policy, reward_models)
    jobs = {}  # name -> (config, run directory)
    for size, reward_model in reward_models.items():
        for method in _RL.value:
            for seed in range(_SEEDS.value):
                name = f"{method}_{size}_seed{seed}"
                config = rl_config(policy, reward_model, method, seed)
                jobs[name] = (config, os.path.join(workdir, name))
    workers = _WORKERS.value or common.default_workers()
    finished = clock("rl", common.train_runs, jobs, workers, workdir)
    clock.seconds.update({name: run.seconds for name, run in finished.items()})
    results: dict[str, dict] = {}
    for size in reward_models:
        base = {"gold": float(scores["gold"].mean()), "proxy": float(scores[size].mean())}
        results[size] = {"bon": bon_entry(bon_points(scores, size))}
        for method in _RL.value:
            runs = [
                rl_points(jobs[f"{method}_{size}_seed{seed}"][1], seed, base)
                for seed in range(_SEEDS.value)
            ]
            results[size][method] = rl_entry(runs)
    seconds = time.perf_counter() - start
    quality = {size: proxy_quality(workdir, size) for size in reward_models}
    settings = {
        name: flags.FLAGS[name].value
        for name in ("sft", "sizes", "rl", "max_n", "prompts", "grpo_kl_coef", "ppo_kl_coef")
        + ("rl_steps", "eval_every", "seeds", "smoke")
    } | {"workers": workers}
    report = {
        "seconds": seconds,
        "stage_seconds": clock.seconds,
        "settings": settings,
        "sft_baseline": {"gold": float(scores["gold"].mean())}
        | {size: float(scores[size].mean()) for size in reward_models},
        "proxy_quality": quality,
        "results": results,
    }

    def write(name: str, text: str) -> None:
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write(text)

    write("overoptimization.json", json.dumps(report, indent=1))
    write("overoptimization_fits.json", json.dumps(fits_only(report), indent=1))
    plot(results, os.path.join(workdir, "overoptimization.png"))
    table = markdown(results, quality, seconds)
    write("overoptimization.md", table)
    print(table)


if __name__ == "__main__":
    app.run(main)
