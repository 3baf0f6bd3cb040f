"""Reward-model ensembles against over-optimization (Coste et al. 2024; SURVEY §6): one reward
model vs K independently trained ones (mean, worst-case WCO, uncertainty-weighted UWO) vs K
heads on one shared backbone, under ~25 % flipped preference labels.

    python -m experiments.ensembles --workdir=runs/ensembles --sft=runs/sft/export
    python -m experiments.ensembles --smoke   # the reduced size the test suite runs

Steps (each a normal run directory under WORKDIR, reused by a rerun):

1. the SFT policy into WORKDIR/sft, unless ``--sft`` names one;
2. ``--members`` Bradley–Terry reward models (``rm_bt.py``, from scratch) on the same labelled
   pairs (β_ann = ``--beta_ann``: 1 flips ~26 % of the labels), each with its own seed (init and
   data order), and one ``--members``-head ensemble on a shared backbone (``rm_ensemble.py``);
3. on held-out same-prompt pairs with gold labels: the members' correlation, and their margin
   variance and minority share on the pairs the ensemble mean ranks wrongly vs rightly
   (``evaluation.ensemble``), for the independent and the shared-backbone ensemble;
4. Best-of-N (N ≤ ``--max_n``): one draw from the SFT policy, scored by the gold reward and every
   proxy (``best_of_n.score_proxies``, cached in WORKDIR/bon_scores.npz) — the first member
   alone, the independent ensemble's mean / WCO / UWO (λ = ``--uwo_penalty``), the shared heads'
   UWO (``--proxies`` also takes ``member 1`` … to run a member alone);
5. GRPO (β = ``--kl_coef``, evaluated every ``--eval_every`` iterations, ``--seeds`` runs) from
   the SFT policy against each proxy, and the gold reward at matched KL (linear interpolation
   between a run's evaluations; mean and standard deviation over the seeds).

Writes WORKDIR/ensembles.json, WORKDIR/ensembles.md (the tables, also printed) and
WORKDIR/ensembles.png (gold reward against KL for Best-of-N and RL, one line per proxy).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging

from experiments import common
from experiments.configs import best_of_n, rlhf, rm_bt, rm_ensemble, sft

_WORKDIR = flags.DEFINE_string("workdir", "runs/ensembles", "Runs and results.")
_SFT = flags.DEFINE_string("sft", "", "SFT policy export (default: trained into WORKDIR/sft).")
_MEMBERS = flags.DEFINE_integer("members", 4, "Ensemble members (independent models / heads).")
_BETA_ANN = flags.DEFINE_float("beta_ann", 1.0, "Annotation β: labels ~ σ(β_ann Δr*).")
_UWO = flags.DEFINE_float("uwo_penalty", 1.0, "UWO's λ on the members' variance.")
_MAX_N = flags.DEFINE_integer("max_n", 256, "Best-of-N up to this N (draws per prompt).")
_BON_PROMPTS = flags.DEFINE_integer("bon_prompts", 64, "Held-out prompts for Best-of-N.")
_KL_COEF = flags.DEFINE_float("kl_coef", 0.1, "GRPO's KL coefficient.")
_RL_STEPS = flags.DEFINE_integer("rl_steps", 150, "GRPO iterations.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "GRPO runs (seeds 0 … seeds − 1) per proxy.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "GRPO iterations between evaluations.")
_PAIRS = flags.DEFINE_integer("pairs", 1024, "Held-out pairs for the agreement metrics.")
_PROXIES = flags.DEFINE_list(
    "proxies", ["single", "mean", "wco", "uwo", "shared uwo"], "Proxies to optimize against."
)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes end to end (the test suite's run).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Rewrite the tables and the figure from WORKDIR/ensembles.json."
)

MATCHED_KL = {"bon": (1.0, 2.0, 3.0, 4.0), "grpo": (5.0, 10.0, 20.0, 30.0, 40.0, 50.0)}


def _run(config, workdir: str) -> dict[str, float]:
    from irl_jax import algorithms

    config.checkpoint_every = 0
    if _SMOKE.value:
        config.num_steps, config.eval_every = min(config.num_steps, 4), 0
        config.data.num_train = min(config.data.num_train, 256)
        config.data.num_eval = min(config.data.num_eval, 64)
        if "policy_eval" in config:
            config.policy_eval.num_prompts = 16
    return algorithms.run(config, workdir)


def sft_policy(workdir: str) -> str:
    if _SFT.value:
        return _SFT.value
    _run(sft.get_config(), os.path.join(workdir, "sft"))
    return os.path.join(workdir, "sft", "export")


def reward_models(workdir: str) -> tuple[list[str], str]:
    """The independent members' exports and the shared-backbone ensemble's export."""
    paths = []
    for k in range(_MEMBERS.value):
        config = rm_bt.get_config()
        config.seed = k  # init and data order; the labelled pairs are the same
        config.reward_model.beta_ann = _BETA_ANN.value
        if _SMOKE.value:
            config.reward_model.num_eval_prompts = 16
        _run(config, os.path.join(workdir, f"member_{k}"))
        paths.append(os.path.join(workdir, f"member_{k}", "export"))
    config = rm_ensemble.get_config()
    config.reward_model.num_heads = _MEMBERS.value
    config.reward_model.beta_ann = _BETA_ANN.value
    if _SMOKE.value:
        config.reward_model.num_eval_prompts = 16
    _run(config, os.path.join(workdir, "shared"))
    return paths, os.path.join(workdir, "shared", "export")


def agreement(member_paths: list[str], shared_path: str) -> dict[str, dict[str, float]]:
    """Disagreement metrics of both ensembles on held-out same-prompt pairs (gold-labelled)."""
    import jax

    from irl_jax import rewards, sharding
    from irl_jax.algorithms import setup as setup_lib
    from irl_jax.evaluation import ensemble
    from irl_jax.evaluation.batches import map_rows
    from irl_jax.evaluation.reward import sequence_gold, side_arrays

    config = rm_bt.get_config()
    setup = setup_lib.setup(config)
    task, mesh = setup.task, setup.mesh
    pairs, _ = task.preferences(_PAIRS.value, 12345, float("inf"), "same_prompt", split="eval")
    arrays = setup_lib.tokenize(config, setup.tokenizer, pairs, "preference")
    sides = [side_arrays(arrays, side) for side in ("chosen", "rejected")]
    gold = [
        sequence_gold(task.gold_reward, a["input_ids"], a["attention_mask"], a["loss_mask"])
        for a in sides
    ]
    load = dict(mesh=mesh, vocab_size=setup.model_config.vocab_size)
    sources = {
        "independent": rewards.load_ensemble(member_paths, **load),
        "shared": rewards.load_reward_model(shared_path, **load),
    }
    out = {}
    for name, source in sources.items():
        score = jax.jit(
            lambda params, batch, source=source: source.apply_fn(
                params, batch["input_ids"], batch["attention_mask"]
            ),
            out_shardings=sharding.replicated(mesh),
        )
        chosen, rejected = (map_rows(score, source.params, a, 64, mesh) for a in sides)
        out[name] = ensemble.disagreement(chosen, rejected, *gold)
    return out


def proxies(member_paths: list[str], shared_path: str) -> dict[str, tuple[str, str, float]]:
    """name → (reward.model, reward.aggregation, reward.uwo_penalty). ``single`` is member 0
    alone; ``member k`` (not in the default ``--proxies``) the k-th alone, to tell an ensemble's
    effect from the luck of one member."""
    members = ",".join(member_paths)
    return {
        "single": (member_paths[0], "mean", 0.0),
        "mean": (members, "mean", 0.0),
        "wco": (members, "wco", 0.0),
        "uwo": (members, "uwo", _UWO.value),
        "shared uwo": (shared_path, "uwo", _UWO.value),
        **{f"member {k}": (path, "mean", 0.0) for k, path in enumerate(member_paths) if k},
    }


def bon_scores(workdir: str, policy: str, names: list[str], proxy_of: dict) -> dict:
    """``[prompts, max_n]`` rewards of one draw from the SFT policy: gold and each proxy."""
    from irl_jax.algorithms import best_of_n as bon

    config = best_of_n.get_config()
    config.init_from = policy
    s = config.best_of_n
    s.max_n, s.num_prompts = _MAX_N.value, _BON_PROMPTS.value
    s.prompts_per_chunk = min(s.prompts_per_chunk, _BON_PROMPTS.value)
    s.samples_per_chunk = min(s.samples_per_chunk, _MAX_N.value)
    fields = lambda proxy: dict(zip(("model", "aggregation", "uwo_penalty"), proxy, strict=True))
    proxies = {name: fields(proxy_of[name]) for name in names}
    return bon.score_proxies(config, proxies, cache=os.path.join(workdir, "bon_scores.npz"))


def bon_points(scores: dict, name: str) -> dict:
    """Best-of-N by ``name``'s score for every N ≤ max_n: gold and proxy means, and the exact
    KL where the draws allow it (N ≤ max_n / 4), else the bound log N − (N − 1)/N."""
    from irl_jax.evaluation import best_of_n as estimators

    rows = estimators.report_rows(scores[name], scores["gold"], scores[name].shape[1])
    return {
        "n": [r["n"] for r in rows],
        "kl": [r["kl_bound"] if r["kl_exact"] is None else r["kl_exact"] for r in rows],
        "gold": [r["gold_mean"] for r in rows],
        "gold_stderr": [r["gold_stderr"] for r in rows],
        "proxy": [r["proxy_mean"] for r in rows],
    }


def rl_points(workdir: str, policy: str, name: str, proxy, seed: int) -> dict:
    """Gold, proxy and KL at every evaluation of one GRPO run (``seed``) against ``proxy``."""
    from irl_jax.metrics import policy_evaluations

    config = rlhf.get_config()
    config.seed = seed
    config.init_from = policy
    config.reward.model, config.reward.aggregation, config.reward.uwo_penalty = proxy
    config.num_steps, config.eval_every = _RL_STEPS.value, _EVAL_EVERY.value
    config.policy_eval.num_prompts = 128
    config.policy_gradient.kl_coef = _KL_COEF.value
    if _SMOKE.value:
        config.batch_size = 8
    run_dir = os.path.join(workdir, f"grpo_{name.replace(' ', '_')}_seed{seed}")
    _run(config, run_dir)
    points = policy_evaluations(
        run_dir,
        kl="eval/kl_mean",
        gold="eval/reward/gold_mean",
        gold_stderr="eval/reward/gold_stderr",
        proxy="eval/reward/model_mean",
        sft_gold="eval/ref_reward/gold_mean",
    )
    points["sft_gold"] = points["sft_gold"][0] if points["sft_gold"] else float("nan")
    return points


def at_kl(points: dict, kl: float) -> float:
    """The gold reward at ``kl`` nats, interpolated between measured points (NaN outside their
    range: a first evaluation already past ``kl`` says nothing about it)."""
    x, y = np.asarray(points["kl"]), np.asarray(points["gold"])
    order = np.argsort(x)
    x, y = x[order], y[order]
    if not len(x) or kl > x[-1] or kl < x[0]:
        return float("nan")
    return float(np.interp(kl, x, y))


def at_kl_over_seeds(runs: list[dict], kl: float) -> tuple[float, float, int]:
    """Mean and standard deviation over the seeds that reached ``kl`` of their gold reward
    there, and how many did."""
    values = [v for v in (at_kl(run, kl) for run in runs) if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), _sd(values), len(values)


def _sd(values: list[float]) -> float:
    """The sample standard deviation (ddof = 1; 0 for one value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(mean: float, sd: float, n: int, seeds: int) -> str:
    if not n:
        return "—"
    return f"{mean:.2f} ± {sd:.2f}" + (f" ({n})" if n < seeds else "")


def markdown(results: dict, seconds: float) -> str:
    seeds = _SEEDS.value
    lines = [
        f"Reward-model ensembles (`python -m experiments.ensembles`, {seconds / 60:.1f} min; "
        f"β_ann = {_BETA_ANN.value:g}, {_MEMBERS.value} members, GRPO β = {_KL_COEF.value:g}, "
        f"{seeds} seeds).",
        "",
        "| ensemble | member correlation (mean / max) | margin variance, wrongly / rightly "
        "ranked pairs | minority share, wrongly / rightly | wrongly ranked |",
        "|---|---|---|---|---|",
    ]
    for name, a in results["agreement"].items():
        lines.append(
            f"| {name} | {a['mean_correlation']:.3f} / {a['max_correlation']:.3f} | "
            f"{a['var_wrong']:.3f} / {a['var_right']:.3f} | "
            f"{a['split_wrong']:.3f} / {a['split_right']:.3f} | {a['wrong_fraction']:.3f} |"
        )
    header = " | ".join(f"KL {kl:g}" for kl in MATCHED_KL["bon"])
    lines += [
        "",
        "**Best-of-N: gold reward at matched KL (nats; one draw, ± stderr over prompts)**",
        "",
        f"| proxy | {header} | peak gold (at KL) | gold at N = {_MAX_N.value} (KL) |",
        "|---" * (len(MATCHED_KL["bon"]) + 3) + "|",
    ]
    for name, by_method in results["proxies"].items():
        p = by_method["bon"]
        cells = " | ".join(f"{at_kl(p, kl):.3f}" for kl in MATCHED_KL["bon"])
        best = int(np.argmax(p["gold"]))
        lines.append(
            f"| {name} | {cells} | {p['gold'][best]:.3f} ({p['kl'][best]:.1f}) | "
            f"{p['gold'][-1]:.3f} ± {p['gold_stderr'][-1]:.3f} ({p['kl'][-1]:.1f}) |"
        )
    header = " | ".join(f"KL {kl:g}" for kl in MATCHED_KL["grpo"])
    lines += [
        "",
        f"**GRPO: gold reward at matched KL (nats; mean ± sd over {seeds} seeds, (n): seeds "
        "that reached it), the runs' peak and their end**",
        "",
        f"| proxy | {header} | peak gold (at KL) | last gold | last KL |",
        "|---" * (len(MATCHED_KL["grpo"]) + 4) + "|",
    ]
    for name, by_method in results["proxies"].items():
        runs = by_method["grpo"]
        cells = " | ".join(_pm(*at_kl_over_seeds(runs, kl), seeds) for kl in MATCHED_KL["grpo"])
        peaks = [int(np.argmax(run["gold"])) for run in runs]
        peak_gold = np.mean([run["gold"][i] for run, i in zip(runs, peaks)])
        peak_kl = np.mean([run["kl"][i] for run, i in zip(runs, peaks)])
        last_gold = [run["gold"][-1] for run in runs]
        last_kl = np.mean([run["kl"][-1] for run in runs])
        lines.append(
            f"| {name} | {cells} | {peak_gold:.2f} ({peak_kl:.0f}) | "
            f"{_pm(np.mean(last_gold), _sd(last_gold), len(runs), seeds)} | {last_kl:.0f} |"
        )
    return "\n".join(lines).replace("nan", "—") + "\n"


def mean_curve(runs: list[dict], points: int = 30) -> tuple[list, list, list]:
    """The seeds' gold reward on a common KL grid (up to the KL every seed reached): mean and
    standard deviation."""
    top = min(max(run["kl"]) for run in runs)
    low = max(min(run["kl"]) for run in runs)
    grid = np.linspace(low, top, points) if top > low else np.array([low])
    values = np.array([[at_kl(run, kl) for kl in grid] for run in runs])
    sd = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(grid))
    return grid.tolist(), values.mean(0).tolist(), sd.tolist()


def plot(results: dict, path: str) -> None:
    from irl_jax import plots

    runs = {
        name: {
            "Best-of-N": (m["bon"]["kl"], m["bon"]["gold"], m["bon"]["gold_stderr"]),
            f"GRPO (mean ± sd over {len(m['grpo'])} seeds)": mean_curve(m["grpo"]),
        }
        for name, m in results["proxies"].items()
    }
    plots.metric_grid(
        runs,
        list(next(iter(runs.values()))),
        path,
        xlabel="KL(π ‖ π_SFT), nats",
        title=f"Gold reward against KL, proxies trained with β_ann = {_BETA_ANN.value:g}",
        err_style="band",
    )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _SMOKE.value:
        flags.FLAGS.members, flags.FLAGS.max_n, flags.FLAGS.bon_prompts = 2, 4, 8
        flags.FLAGS.rl_steps, flags.FLAGS.eval_every, flags.FLAGS.pairs = 4, 2, 64
        flags.FLAGS.seeds = 1
    workdir = os.path.abspath(_WORKDIR.value)
    if not _REPORT_ONLY.value:
        run_all(workdir)
    write_report(workdir)


def run_all(workdir: str) -> None:
    """Every stage, into WORKDIR/ensembles.json."""
    common.compilation_cache(workdir)
    clock, start = common.Clock(), time.perf_counter()
    policy = clock("sft", sft_policy, workdir)
    member_paths, shared_path = clock("reward_models", reward_models, workdir)
    results = {"agreement": clock("agreement", agreement, member_paths, shared_path)}
    proxy_of = proxies(member_paths, shared_path)
    names = _PROXIES.value
    if unknown := [name for name in names if name not in proxy_of]:
        raise app.UsageError(f"--proxies: unknown {unknown}; expected names of {list(proxy_of)}")
    scores = clock("bon_draw", bon_scores, workdir, policy, names, proxy_of)
    results["proxies"] = {
        name: {
            "bon": bon_points(scores, name),
            "grpo": [
                clock(f"grpo {name} seed {k}", rl_points, workdir, policy, name, proxy_of[name], k)
                for k in range(_SEEDS.value)
            ],
        }
        for name in names
    }
    seconds = time.perf_counter() - start
    settings = {
        name: flags.FLAGS[name].value
        for name in ("sft", "members", "beta_ann", "uwo_penalty", "max_n", "bon_prompts")
        + ("kl_coef", "rl_steps", "seeds", "eval_every", "pairs", "proxies", "smoke")
    }
    report = {"seconds": seconds, "stage_seconds": clock.seconds, "settings": settings, **results}
    with open(os.path.join(workdir, "ensembles.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


def write_report(workdir: str) -> None:
    """WORKDIR/ensembles.png and ensembles.md (printed too) from WORKDIR/ensembles.json, under
    the settings it records (``--report_only`` runs only this)."""
    with open(os.path.join(workdir, "ensembles.json"), encoding="utf-8") as f:
        report = json.load(f)
    for name in ("members", "beta_ann", "max_n", "kl_coef", "seeds"):
        flags.FLAGS[name].value = report["settings"][name]
    plot(report, os.path.join(workdir, "ensembles.png"))
    table = markdown(report, report["seconds"])
    with open(os.path.join(workdir, "ensembles.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
