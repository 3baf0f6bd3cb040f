"""SFT end to end: reaching the demonstrator's entropy, exact resume across processes, config
errors before anything compiles."""

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from irl_jax.algorithms import experiment_config, sft, validate_config
from irl_jax.config import ConfigError
from irl_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_sft_config(**changes):
    config = experiment_config("sft")
    config.model = "gpt2-tiny"
    config.num_steps = 400
    config.batch_size = 32
    config.eval_every = 0
    config.log_every = 50
    config.data.task = "preference"
    config.data.num_train = 8192
    config.data.num_eval = 1024
    config.data.max_length = 40
    config.optimizer.learning_rate = 3e-3
    config.export = False
    for key, value in changes.items():
        config[key] = value
    return config


def test_sft_reaches_demonstrator_entropy(tmp_path):
    metrics = sft.train(small_sft_config(), str(tmp_path))
    # The demonstrator's per-token entropy is the floor of the eval NLL.
    assert metrics["eval/demonstrator_entropy"] == pytest.approx(1.0405, abs=1e-3)
    assert 0.0 < metrics["eval/nll_gap"] < 0.15, metrics
    rows = read_metrics(str(tmp_path))
    assert rows[-1]["eval/nll_gap"] == pytest.approx(metrics["eval/nll_gap"])


def run(workdir, *overrides):
    command = [
        sys.executable,
        "-m",
        "experiments.run",
        "--config=experiments/configs/sft.py",
        f"--workdir={workdir}",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.checkpoint_every=5",
        "--config.data.num_train=512",
        "--config.data.num_eval=64",
        *overrides,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_exact_resume_across_processes(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight, "--config.num_steps=10").returncode == 0
    first = run(resumed, "--config.num_steps=5")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(resumed, "--config.num_steps=10")  # a new process resumes from step 5
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stderr
    # Bit-identical final params (the exported HF weights) ...
    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(resumed / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # ... and the same data order: identical per-step losses after the resume point.
    losses = lambda workdir: {
        r["step"]: r["train/loss"] for r in read_metrics(str(workdir)) if "train/loss" in r
    }
    straight_losses, resumed_losses = losses(straight), losses(resumed)
    assert sorted(resumed_losses) == list(range(1, 11))
    assert [resumed_losses[s] for s in range(6, 11)] == [straight_losses[s] for s in range(6, 11)]


def test_config_errors_before_compiling(tmp_path):
    result = run(tmp_path / "bad", "--config.num_stepz=3")
    assert result.returncode != 0 and "num_stepz" in result.stderr
    result = run(tmp_path / "bad", "--config.mesh_shape.data=3")
    assert result.returncode != 0
    assert "config.mesh_shape" in result.stderr and "needs 3 devices" in result.stderr
    assert not (tmp_path / "bad").exists()  # nothing ran

    config = small_sft_config()
    with pytest.raises(ConfigError, match="mesh_shape.*at most one axis may be -1"):
        config.mesh_shape.fsdp = -1
        validate_config(config)
    config = small_sft_config()
    config.unlock()
    config.optimizer.lr = 1.0
    with pytest.raises(ConfigError, match="unknown config field optimizer.'lr'"):
        validate_config(config)
    config = small_sft_config(batch_size=12)
    with pytest.raises(ConfigError, match="batch_size.*divisible by the data-parallel size"):
        validate_config(config)
    for field, value, message in [
        ("seed", -1, r"config.seed: must be in \[0, 2\*\*31\), got -1"),
        ("keep_checkpoints", 0, "config.keep_checkpoints: must be >= 1"),
        ("eval_batch_size", 12, "config.eval_batch_size: 12 must be positive and divisible"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_config(small_sft_config(**{field: value}))
    config = small_sft_config()
    config.model_overrides.hidden_size = 66  # gpt2-tiny has 4 heads
    with pytest.raises(ConfigError, match="model_overrides.hidden_size: 66 is not divisible by"):
        validate_config(config)
    config = small_sft_config(model="no-such-model")
    with pytest.raises(ConfigError, match="config.model: 'no-such-model' is neither a preset"):
        validate_config(config)
    config = small_sft_config()
    config.data.task = "poetry"
    with pytest.raises(ConfigError, match="data.task: 'poetry' is not a synthetic task"):
        validate_config(config)
