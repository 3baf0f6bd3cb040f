"""Best-of-N from the SFT policy selected by each reward of the AfD pipeline, scored by gold:
the demonstration-only reward models (Init-Demo, SFT-Demo, Init-SFT), the closed-form
log π_SFT − log π_init and the preference-trained Bradley–Terry reward model (Sun & van der
Schaar 2024 find Init-SFT on par with BT and ahead of the other two).

    python -m experiments.run --config=experiments/configs/afd.py --workdir=runs/afd
    python -m experiments.afd_best_of_n --workdir=runs/afd     # ~3 min on 2 CPU cores

Draws ``--max_n`` responses of the SFT policy to each of ``--num_prompts`` held-out prompts
once, scores all of them with every reward (``best_of_n.best_of_n``) and reports, for N = 1, 2,
4, …, the unbiased order-statistics estimate of the best-of-N pick's gold reward ± stderr over
prompts (``evaluation.best_of_n``) and how often that pick carries the demonstrator's style
token (``indeed``, ignored by gold; ``style rate``). Writes ``OUT.md``, ``OUT.json`` and
``OUT.png``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "runs/afd", "The AfD pipeline's directory.")
_OUT = flags.DEFINE_string("out", "docs/afd_best_of_n", "Writes OUT.md, OUT.json, OUT.png.")
_MAX_N = flags.DEFINE_integer("max_n", 128, "Responses drawn per prompt (M).")
_SHOW_N = flags.DEFINE_integer("show_n", 64, "Largest N reported.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 128, "Held-out prompts.")

PROXIES = {  # label -> the pipeline stage of the reward model
    "Init-Demo": "init_demo",
    "SFT-Demo": "sft_demo",
    "Init-SFT": "init_sft",
    "BT (preferences)": "rm_bt",
}
LOG_RATIO = "log π_SFT − log π_init"


def style_indicator(style_id: int):
    """A reward source: 1 if the response holds the style token, else 0."""

    def source(prompt_ids, prompt_mask, response_ids, response_mask):
        del prompt_ids, prompt_mask
        return jnp.any((response_ids == style_id) & (response_mask > 0), axis=-1).astype(
            jnp.float32
        )

    return source


def compare(workdir: str) -> dict:
    """Draws, scores and reports (see the module docstring)."""
    from irl_jax import rewards as rewards_lib
    from irl_jax import rollout
    from irl_jax import sharding as sharding_lib
    from irl_jax.algorithms import best_of_n as bon
    from irl_jax.algorithms import experiment_config
    from irl_jax.algorithms import setup as setup_lib
    from irl_jax.evaluation import best_of_n as estimators
    from irl_jax.models import source as model_source
    from irl_jax.policy_rewards import LogRatio
    from irl_jax.tasks import STYLE_TOKEN

    export = lambda stage: os.path.join(workdir, stage, "export")
    config = experiment_config("best_of_n")
    config.init_from = export("sft")
    config.data.task = "preference"
    config.data.max_length = 40
    config.sampling.max_new_tokens = 24
    setup = setup_lib.setup(config)
    params = setup_lib.create_policy(setup, optax.identity())[0].params
    vocab = setup.model_config.vocab_size
    sources = {
        label: rewards_lib.load_reward_model(export(stage), mesh=setup.mesh, vocab_size=vocab)
        for label, stage in PROXIES.items()
    }
    init_params = model_source.load_params(export("init"), setup.mesh)
    cfg = setup.model_config
    sources[LOG_RATIO] = LogRatio(params, init_params, cfg, cfg)
    style_id = setup.tokenizer.convert_tokens_to_ids(STYLE_TOKEN)
    sources["gold"] = setup.task.gold_reward
    sources["style"] = style_indicator(style_id)
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, _NUM_PROMPTS.value, config.data.seed + 7, split="eval"
    )
    data = sharding_lib.batch_sharding(setup.mesh)
    settings = rollout.SamplingSettings.from_config(config.sampling)
    scores = {name: [] for name in sources}
    chunk = 64
    for index, first in enumerate(range(0, _NUM_PROMPTS.value, chunk)):
        rows = slice(first, first + chunk)
        with jax.set_mesh(setup.mesh):
            part, _, _ = bon.best_of_n(
                setup.model_config,
                params,
                jax.device_put(prompts["prompt_ids"][rows], data),
                jax.device_put(prompts["prompt_mask"][rows], data),
                sources=sources,
                rng=jax.random.fold_in(jax.random.key(config.seed), index),
                settings=settings,
                num_samples=_MAX_N.value,
                samples_per_chunk=min(32, _MAX_N.value),
            )
        for name in sources:
            scores[name].append(part[name])
    scores = {name: np.concatenate(parts) for name, parts in scores.items()}
    shown = estimators.powers(2, _SHOW_N.value)
    report = {"num_prompts": _NUM_PROMPTS.value, "max_n": _MAX_N.value, "rows": {}}
    for label in [*PROXIES, LOG_RATIO]:
        ranked = estimators.rank(scores[label])
        rows = []
        for n in shown:
            gold = estimators.mean_and_stderr(estimators.best_of_n_mean(ranked, scores["gold"], n))
            style = estimators.best_of_n_mean(ranked, scores["style"], n).mean()
            rows.append({"n": n, "gold_mean": gold[0], "gold_stderr": gold[1], "style": style})
        report["rows"][label] = rows
    report["sample_style_rate"] = float(scores["style"].mean())
    oracle = estimators.rank(scores["gold"])
    report["rows"]["oracle (gold)"] = [
        {
            "n": n,
            "gold_mean": float(estimators.best_of_n_mean(oracle, scores["gold"], n).mean()),
            "gold_stderr": float("nan"),
            "style": float(estimators.best_of_n_mean(oracle, scores["style"], n).mean()),
        }
        for n in shown
    ]
    return report


def table(report: dict) -> str:
    ns = [row["n"] for row in next(iter(report["rows"].values()))]
    lines = [
        "| reward | " + " | ".join(f"N = {n}" for n in ns) + " | style rate at N = 1 → 16 |",
        "|---" * (len(ns) + 2) + "|",
    ]
    for label, rows in report["rows"].items():
        stderr = lambda r: "" if np.isnan(r["gold_stderr"]) else f" ± {r['gold_stderr']:.3f}"
        cells = [f"{r['gold_mean']:.3f}{stderr(r)}" for r in rows]
        by_n = {r["n"]: r["style"] for r in rows}
        style = f"{by_n[1]:.2f} → {by_n.get(16, float('nan')):.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {style} |")
    return "\n".join(lines)


def plot(report: dict, out: str) -> str:
    from irl_jax import plots

    series = {
        label: (
            [r["n"] for r in rows],
            [r["gold_mean"] for r in rows],
            [0.0 if np.isnan(r["gold_stderr"]) else r["gold_stderr"] for r in rows],
        )
        for label, rows in report["rows"].items()
    }
    return plots.line_plot(
        series,
        out=out,
        xlabel="N",
        ylabel="gold reward of the Best-of-N pick",
        logx=True,
        title=f"AfD Best-of-N from the SFT policy ({report['num_prompts']} held-out prompts)",
    )


def main(argv):
    del argv
    report = compare(_WORKDIR.value)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = table(report)
    with open(_OUT.value + ".md", "w") as f:
        f.write(text + "\n")
    plot(report, _OUT.value + ".png")
    print(text)


if __name__ == "__main__":
    app.run(main)
