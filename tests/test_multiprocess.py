"""Two JAX processes (4 CPU devices each, gloo collectives) train exactly like one process with
8 devices: each process feeds its own slice of every batch, process 0 writes the logs."""

import os
import socket
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from irl_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--config=experiments/configs/sft.py",
    "--config.num_steps=6",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=3",
    "--config.data.num_train=512",
    "--config.data.num_eval=64",
    "--config.mesh_shape.data=2",
    "--config.mesh_shape.fsdp=2",
    "--config.mesh_shape.tensor=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_two_processes_equal_one(tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "experiments.run", f"--workdir={tmp_path / 'single'}", *FLAGS],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.run",
                f"--workdir={tmp_path / 'multi'}",
                *FLAGS,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]

    losses = lambda d: [r["train/loss"] for r in read_metrics(str(d)) if "train/loss" in r]
    np.testing.assert_allclose(losses(tmp_path / "multi"), losses(tmp_path / "single"), rtol=1e-5)
    a = load_file(str(tmp_path / "single" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "multi" / "export" / "model.safetensors"))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()
