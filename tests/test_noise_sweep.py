"""The annotation-noise sweep driver (experiments/noise_sweep.py) end to end in a smoke size."""

import math
import os
import subprocess
import sys

import numpy as np

from irl_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_driver_runs_end_to_end_in_its_smoke_size(tmp_path, preference_sft):
    """2 noise levels × 2 pairings × 2 losses × 2 label draws of 128 pairs, trained two at a
    time in worker processes; every table cell is the mean ± stderr of its runs' final
    evaluations, as read back from the runs' own metrics."""
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "experiments.noise_sweep", f"--workdir={tmp_path}"]
    command += [f"--backbone={preference_sft}", "--betas=inf,1", "--data_seeds=2"]
    command += ["--num_steps=20", "--quantities=128", f"--out={out}", "--workers=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 16 and "cross_prompt-classification-beta1-n128-seed1" in runs
    table = (tmp_path / "sweep.md").read_text()
    assert "**Accuracy against gold, 128 training pairs**" in table
    assert "**Spearman ρ, 128 training pairs**" in table

    def cell(pairing: str, loss: str, beta: str, metric: str) -> str:
        finals = [
            [r for r in read_metrics(tmp_path / "runs" / name) if metric in r][-1][metric]
            for name in (f"{pairing}-{loss}-beta{beta}-n128-seed{s}" for s in (0, 1))
        ]
        stderr = np.std(finals, ddof=1) / math.sqrt(2)
        return f"{np.mean(finals):.3f} ± {stderr:.3f}"

    accuracy = table.split("**Spearman")[0]
    row = next(line for line in accuracy.splitlines() if line.startswith("| 1 |"))
    columns = [c.strip() for c in row.strip("|").split("|")]
    # | β_ann | flip rate | BT, same | cls, same | BT, cross | cls, cross |
    assert columns[2] == cell("same_prompt", "bradley_terry", "1", "eval/gold_accuracy")
    assert columns[5] == cell("cross_prompt", "classification", "1", "eval/gold_accuracy")
    assert (tmp_path / "sweep.png").stat().st_size > 0
