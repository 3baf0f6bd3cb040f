"""Annotation-noise sweep: Bradley–Terry vs classification reward models, same- vs cross-prompt
pairs, over annotation noise and annotation quantity (the companion result of SURVEY §3 / §8:
Sun et al. 2025, "Rethinking Bradley–Terry", report classification RMs more robust to label
noise, and cross-prompt pairs more informative).

    python -m experiments.noise_sweep                  # 4096 pairs (the README's first table)
    python -m experiments.noise_sweep --quantities=256,1024,4096 --betas=inf,2,0.5 \
        --data_seeds=3 --out=docs/noise_quantity_sweep

For each number of labelled pairs, each β_ann (labels drawn from P(y₁ ≻ y₂) = σ(β_ann Δr*); the
resulting flip rate is measured), each pairing and each loss, ``embedding_rm`` trains 8 MLP heads
(vmapped seeds) on the cached embeddings of a frozen SFT backbone (trained first into WORKDIR/sft
unless ``--backbone`` names one), for each of ``--data_seeds`` label/pair draws. Every run is
scored on the same kind of held-out data: same-prompt pairs (accuracy against gold) and
Best-of-4 candidate sets (Spearman ρ per prompt). Cells are the mean over all heads ± the
standard error over the independent pair/label draws (the 8 heads of one draw share its data).
Writes ``OUT.md`` (tables) and ``OUT.png`` (plots) and prints the tables.
"""

from __future__ import annotations

import math
import os
import shutil
import time

import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import common
from experiments.configs import rm_embedding, sft

_WORKDIR = flags.DEFINE_string("workdir", "runs/noise_sweep", "Runs and the embedding cache.")
_BACKBONE = flags.DEFINE_string(
    "backbone", "", "Frozen backbone (HF directory); default: SFT one into WORKDIR/sft."
)
_BETAS = flags.DEFINE_list("betas", ["inf", "5", "2", "1", "0.5"], "β_ann values.")
_DATA_SEEDS = flags.DEFINE_integer("data_seeds", 2, "Pair/label draws per condition.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 400, "Head training steps per run.")
_QUANTITIES = flags.DEFINE_list("quantities", ["4096"], "Labelled training pairs per run.")
_OUT = flags.DEFINE_string("out", "docs/noise_sweep", "Writes OUT.md and OUT.png.")
_WORKERS = flags.DEFINE_integer("workers", 0, common.WORKERS_HELP)

LOSSES = ("bradley_terry", "classification")
PAIRINGS = ("same_prompt", "cross_prompt")
METRICS = ("gold_accuracy", "spearman")


def backbone(workdir: str) -> str:
    """The frozen backbone: ``--backbone``, or an SFT policy trained once into WORKDIR/sft."""
    if _BACKBONE.value:
        return _BACKBONE.value
    export = os.path.join(workdir, "sft", "export")
    if not os.path.isfile(os.path.join(export, "config.json")):
        from irl_jax.algorithms import sft as sft_algorithm

        config = sft.get_config()
        config.checkpoint_every = 0
        sft_algorithm.train(config, os.path.join(workdir, "sft"))
    return export


def run_name(num_train: int, beta: float, pairing: str, loss: str, seed: int) -> str:
    return f"{pairing}-{loss}-beta{beta:g}-n{num_train}-seed{seed}"


def run_config(
    backbone_dir: str, num_train: int, beta: float, pairing: str, loss: str, seed: int
) -> ml_collections.ConfigDict:
    """One ``embedding_rm`` run (8 heads); the label/pair draw ``seed``."""
    config = rm_embedding.get_config()
    config.init_from = backbone_dir
    config.num_steps = _NUM_STEPS.value
    config.log_every = _NUM_STEPS.value
    config.checkpoint_every = 0
    config.data.seed = 100 * seed
    config.data.num_train = num_train
    settings = config.embedding_rm
    settings.beta_ann, settings.pairing, settings.loss = beta, pairing, loss
    settings.cache_dir = os.path.join(_WORKDIR.value, "embedding_cache")
    return config


def pooled(runs: list[dict[str, float]], name: str) -> tuple[float, float]:
    """The mean over every head of every run, and its standard error over the runs (independent
    pair/label draws; each run reports its heads' mean)."""
    means = np.array([r[name] for r in runs])
    stderr = means.std(ddof=1) / math.sqrt(len(means)) if len(means) > 1 else math.nan
    return float(means.mean()), float(stderr)


def summarize(results: dict[tuple, list[dict[str, float]]], betas: list[float]) -> list[dict]:
    rows = []
    for beta in betas:
        row = {"beta": beta}
        for pairing in PAIRINGS:
            runs = results[(beta, pairing, LOSSES[0])]
            row[f"flip_{pairing}"] = float(np.mean([r["train_flip_rate"] for r in runs]))
            for loss in LOSSES:
                for name in METRICS:
                    row[(pairing, loss, name)] = pooled(results[(beta, pairing, loss)], name)
        rows.append(row)
    return rows


def markdown(tables: dict[int, list[dict]], seconds: float) -> str:
    """The tables (gold accuracy, Spearman ρ; one pair per quantity) as markdown."""
    columns = [(p, loss) for p in PAIRINGS for loss in LOSSES]
    short = {"bradley_terry": "BT", "classification": "cls", "same_prompt": "same"}
    short["cross_prompt"] = "cross"
    header = "| β_ann | flip rate (same / cross) | " + " | ".join(
        f"{short[loss]}, {short[p]}" for p, loss in columns
    )
    lines = [
        f"Annotation-noise sweep (`python -m experiments.noise_sweep`, {seconds / 60:.1f} min). "
        f"Embedding RMs (MLP heads on a frozen SFT gpt2-tiny), {_DATA_SEEDS.value} pair/label "
        "draws × 8 seeds each; mean over all heads ± stderr over the draws. Held-out "
        "same-prompt pairs and Best-of-4 candidate sets.",
    ]
    for quantity, rows in tables.items():
        for name, title in (("gold_accuracy", "Accuracy against gold"), ("spearman", "Spearman ρ")):
            lines += ["", f"**{title}, {quantity} training pairs**", ""]
            lines += [header + " |", "|---" * (len(columns) + 2) + "|"]
            for row in rows:
                flips = f"{row['flip_same_prompt']:.3f} / {row['flip_cross_prompt']:.3f}"
                cells = [
                    f"{row[(p, loss, name)][0]:.3f} ± {row[(p, loss, name)][1]:.3f}"
                    for p, loss in columns
                ]
                lines.append(f"| {row['beta']:g} | {flips} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(tables: dict[int, list[dict]], path: str) -> None:
    """Both metrics against the measured flip rate, one line per (loss, pairing), one pair of
    panels per quantity."""
    from irl_jax import plots

    curves, panels = {}, []
    for quantity, rows in tables.items():
        panels += [f"{name}, {quantity} pairs" for name in METRICS]
        for pairing in PAIRINGS:
            flips = [row[f"flip_{pairing}"] for row in rows]
            for loss in LOSSES:
                label = f"{loss}, {pairing.replace('_', '-')}"
                curves.setdefault(label, {}).update(
                    {
                        f"{name}, {quantity} pairs": (
                            flips,
                            *np.array([row[(pairing, loss, name)] for row in rows]).T,
                        )
                        for name in METRICS
                    }
                )
    plots.metric_grid(
        curves,
        panels,
        path,
        xlabel="label flip rate (β_ann = ∞ … 0.5)",
        ncols=len(METRICS),
        title="Embedding reward models under annotation noise",
    )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # per-run INFO (orbax, data stats) would drown the table
    start = time.perf_counter()
    betas = [math.inf if b == "inf" else float(b) for b in _BETAS.value]
    backbone_dir = backbone(_WORKDIR.value)
    conditions = [
        (quantity, beta, pairing, loss)
        for quantity in map(int, _QUANTITIES.value)
        for pairing in PAIRINGS
        for beta in betas
        for loss in LOSSES
    ]
    jobs = {}  # name -> (config, a fresh run directory)
    for condition in conditions:
        for seed in range(_DATA_SEEDS.value):
            name = run_name(*condition, seed)
            workdir = os.path.join(_WORKDIR.value, "runs", name)
            shutil.rmtree(workdir, ignore_errors=True)
            jobs[name] = (run_config(backbone_dir, *condition, seed), workdir)
    workers = _WORKERS.value or common.default_workers()
    finished = common.train_runs(jobs, workers, os.path.abspath(_WORKDIR.value))
    final = {
        name: {k.removeprefix("eval/"): v for k, v in run.metrics.items()}
        for name, run in finished.items()
    }
    tables: dict[int, list[dict]] = {}
    for quantity in map(int, _QUANTITIES.value):
        results = {}
        for _, beta, pairing, loss in (c for c in conditions if c[0] == quantity):
            names = [run_name(quantity, beta, pairing, loss, s) for s in range(_DATA_SEEDS.value)]
            runs = [final[name] for name in names]
            results[(beta, pairing, loss)] = runs
            mean, stderr = pooled(runs, METRICS[0])
            print(
                f"{quantity} pairs, {pairing} {loss} β_ann={beta:g}: "
                f"gold accuracy {mean:.3f} ± {stderr:.3f}"
            )
        tables[quantity] = summarize(results, betas)
    table = markdown(tables, time.perf_counter() - start)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(f"{_OUT.value}.md", "w", encoding="utf-8") as f:
        f.write(table)
    plot(tables, f"{_OUT.value}.png")
    print(table)


if __name__ == "__main__":
    app.run(main)
