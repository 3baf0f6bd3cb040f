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

With a heterogeneous demonstrator (``--task=preference_hetero``, ``afd_hetero.py``: ``indeed``
iff a rule on the prompt's remark holds) it also reports how often the pick's ``indeed`` follows
the rule (``rule agreement``, ``preference.rule_agreement``) and how strongly each reward
rewards the feature (``style_effects``): the reward of one held-out SFT sample per prompt with
``indeed`` at the demonstrator's slot minus the same sample without it, in units of the reward's
std over the samples, separately where the rule asks for ``indeed``, where a remark's rule
forbids it, and without a remark (no ``indeed`` either; the easy part of the rule).
"""

from __future__ import annotations

import json
import os
from typing import Any

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
_TASK = flags.DEFINE_string("task", "preference", "The pipeline's task (preference_hetero).")
_NUM_EFFECT_PROMPTS = flags.DEFINE_integer(
    "num_effect_prompts", 1024, "Held-out prompts of the style effects (a rule task only)."
)

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


GROUPS = {  # prompt group -> its heading in the effects table
    "rule": "rule says indeed",
    "no_rule": "rule says none, remark",
    "no_remark": "no remark",
}


def effect_row(
    scores: np.ndarray, styled: np.ndarray, plain: np.ndarray, groups: dict[str, np.ndarray]
) -> dict[str, float]:
    """The style effect of one reward in each group of rows: mean (r(with) − r(without)) /
    std(r over the samples) ± stderr, and the share of rows where r(with) > r(without)."""
    spread = max(float(np.std(scores)), 1e-8)
    row = {"spread": spread}
    for name, rows in groups.items():
        delta = (styled[rows] - plain[rows]) / spread
        row[f"{name}_effect"] = float(delta.mean())
        row[f"{name}_stderr"] = float(delta.std() / np.sqrt(max(len(delta), 1)))
        row[f"{name}_prefers_style"] = float(np.mean(delta > 0))
        row[f"{name}_count"] = int(len(delta))
    return row


def style_effects(setup: Any, params: Any, sources: dict, num_prompts: int, seed: int) -> dict:
    """One SFT sample per held-out prompt, scored by every source as drawn and with and without
    ``indeed`` at the demonstrator's slot (``preference.toggle_style``); ``effect_row`` per
    source."""
    from irl_jax import rewards as rewards_lib
    from irl_jax import rollout
    from irl_jax.algorithms import setup as setup_lib
    from irl_jax.tasks import preference, vocab

    config = setup.config
    prompts = setup_lib.prompt_arrays(config, setup.tokenizer, num_prompts, seed, split="eval")
    settings = rollout.SamplingSettings.from_config(config.sampling)
    draw = jax.jit(
        lambda params, ids, mask, key: rollout.sample(
            setup.model_config, params, ids, mask, rng=key, settings=settings
        )
    )
    score = jax.jit(lambda sources, rows: {name: source(*rows) for name, source in sources.items()})
    sources = {name: rewards_lib.as_pytree(source) for name, source in sources.items()}
    p_ids, p_mask = prompts["prompt_ids"], prompts["prompt_mask"]
    with jax.set_mesh(setup.mesh):
        samples = jax.device_get(draw(params, p_ids, p_mask, jax.random.key(seed)))
        ids, mask = samples.response_ids, samples.response_mask
        adjectives = {vocab.VOCAB[w] for w in vocab.ADJECTIVES}
        with_style, without_style, keep = preference.toggle_style(ids, mask, adjectives)
        drawn = jax.device_get(score(sources, (p_ids, p_mask, ids, mask)))
        styled = jax.device_get(score(sources, (p_ids, p_mask, *with_style)))
        plain = jax.device_get(score(sources, (p_ids, p_mask, *without_style)))
    wants = np.asarray(preference.rule_wants_style(p_ids, p_mask))
    remark = np.any(np.isin(p_ids, list(adjectives)) & (p_mask > 0), axis=-1)  # requests have none
    groups = {"rule": wants[keep], "no_rule": (remark & ~wants)[keep], "no_remark": ~remark[keep]}
    has_style = np.asarray(style_indicator(vocab.STYLE_ID)(p_ids, p_mask, ids, mask)) > 0
    agreement = np.asarray(preference.rule_agreement(p_ids, p_mask, ids, mask))
    return {
        "num_prompts": num_prompts,
        "usable": int(keep.sum()),
        "sample_rule_agreement": float(agreement.mean()),
        "sample_rule_agreement_remark": float(agreement[remark].mean()),
        **{
            f"sample_style_rate_{name}": float(has_style[rows].mean())
            for name, rows in zip(GROUPS, (wants, remark & ~wants, ~remark))
        },
        "rows": {
            name: effect_row(drawn[name], styled[name][keep], plain[name][keep], groups)
            for name in sources
        },
    }


def compare(workdir: str) -> dict:
    """Draws, scores and reports (see the module docstring)."""
    from irl_jax import rewards as rewards_lib
    from irl_jax.algorithms import best_of_n as bon
    from irl_jax.algorithms import experiment_config
    from irl_jax.algorithms import setup as setup_lib
    from irl_jax.evaluation import best_of_n as estimators
    from irl_jax.models import source as model_source
    from irl_jax.policy_rewards import LogRatio
    from irl_jax.tasks import STYLE_TOKEN, get_task, preference

    export = lambda stage: os.path.join(workdir, stage, "export")
    config = experiment_config("best_of_n")
    config.init_from = export("sft")
    config.data.task = _TASK.value
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
    with_rule = getattr(get_task(_TASK.value), "style_rule", False)
    effects = None
    if with_rule:
        effects = style_effects(
            setup, params, sources, _NUM_EFFECT_PROMPTS.value, config.data.seed + 11
        )
    sources["gold"] = setup.task.gold_reward
    sources["style"] = style_indicator(style_id)
    if with_rule:
        sources["rule"] = preference.rule_agreement
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, _NUM_PROMPTS.value, config.data.seed + 7, split="eval"
    )
    scores, _ = bon.draw_prompts(
        setup,
        params,
        prompts,
        sources=sources,
        rng=jax.random.key(config.seed),
        num_samples=_MAX_N.value,
        samples_per_chunk=min(32, _MAX_N.value),
        prompts_per_chunk=64,
    )
    shown = estimators.powers(2, _SHOW_N.value)
    report = {"num_prompts": _NUM_PROMPTS.value, "max_n": _MAX_N.value, "rows": {}}
    rates = [name for name in ("style", "rule") if name in scores]
    for label in [*PROXIES, LOG_RATIO]:
        ranked = estimators.rank(scores[label])
        rows = []
        for n in shown:
            gold = estimators.mean_and_stderr(estimators.best_of_n_mean(ranked, scores["gold"], n))
            row = {"n": n, "gold_mean": gold[0], "gold_stderr": gold[1]}
            for name in rates:
                row[name] = estimators.best_of_n_mean(ranked, scores[name], n).mean()
            rows.append(row)
        report["rows"][label] = rows
    report["sample_style_rate"] = float(scores["style"].mean())
    oracle = estimators.rank(scores["gold"])
    report["rows"]["oracle (gold)"] = [
        {
            "n": n,
            "gold_mean": float(estimators.best_of_n_mean(oracle, scores["gold"], n).mean()),
            "gold_stderr": float("nan"),
            **{
                name: float(estimators.best_of_n_mean(oracle, scores[name], n).mean())
                for name in rates
            },
        }
        for n in shown
    ]
    if with_rule:
        report["task"] = _TASK.value
        report["sample_rule_agreement"] = float(scores["rule"].mean())
        # A reward that always picks ``indeed`` agrees with the rule on this share of prompts.
        wants = preference.rule_wants_style(prompts["prompt_ids"], prompts["prompt_mask"])
        report["prompt_rule_rate"] = float(np.mean(wants))
        report["style_effects"] = effects
    return report


def table(report: dict) -> str:
    """The Best-of-N table (and, for a rule task, the style-effect table) in Markdown."""
    ns = [row["n"] for row in next(iter(report["rows"].values()))]
    rates = [name for name in ("style", "rule") if name in report["rows"]["oracle (gold)"][0]]
    titles = {"style": "style rate", "rule": "rule agreement"}
    lines = [
        "| reward | "
        + " | ".join(f"N = {n}" for n in ns)
        + "".join(f" | {titles[name]} at N = 1 → 16" for name in rates)
        + " |",
        "|---" * (len(ns) + 1 + len(rates)) + "|",
    ]
    for label, rows in report["rows"].items():
        stderr = lambda r: "" if np.isnan(r["gold_stderr"]) else f" ± {r['gold_stderr']:.3f}"
        cells = [f"{r['gold_mean']:.3f}{stderr(r)}" for r in rows]
        for name in rates:
            by_n = {r["n"]: r[name] for r in rows}
            cells.append(f"{by_n[1]:.2f} → {by_n.get(16, float('nan')):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "style_effects" in report:
        lines += ["", effects_table(report["style_effects"])]
    return "\n".join(lines)


def effects_table(effects: dict) -> str:
    """Each reward's style effect (σ units ± stderr; share of samples preferring ``indeed``) in
    each prompt group (``GROUPS``), and the rule-aware part: its effect where the rule asks for
    ``indeed`` minus where a remark's rule forbids it."""
    first = next(iter(effects["rows"].values()))
    rates = ", ".join(f"{effects[f'sample_style_rate_{g}']:.2f} ({GROUPS[g]})" for g in GROUPS)
    lines = [
        f"SFT samples of {effects['num_prompts']} held-out prompts carry `indeed`: {rates}; "
        f"rule agreement {effects['sample_rule_agreement']:.2f} "
        f"({effects['sample_rule_agreement_remark']:.2f} on prompts with a remark).",
        "",
        "| reward | "
        + " | ".join(f"{title} (n = {first[f'{g}_count']})" for g, title in GROUPS.items())
        + " | rule-aware part |",
        "|---" * (len(GROUPS) + 2) + "|",
    ]

    def cell(row: dict, group: str) -> str:
        return (
            f"{row[f'{group}_effect']:+.2f} ± {row[f'{group}_stderr']:.2f} σ "
            f"({row[f'{group}_prefers_style']:.2f})"
        )

    for label, row in effects["rows"].items():
        aware = row["rule_effect"] - row["no_rule_effect"]
        cells = " | ".join(cell(row, group) for group in GROUPS)
        lines.append(f"| {label} | {cells} | {aware:+.2f} σ |")
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
        title=(
            f"AfD Best-of-N, {report['task']} ({report['num_prompts']} held-out prompts)"
            if "task" in report
            else f"AfD Best-of-N from the SFT policy ({report['num_prompts']} held-out prompts)"
        ),
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
