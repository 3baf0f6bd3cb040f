"""Two JAX processes (4 CPU devices each, gloo collectives) train exactly like one process with
8 devices: each process feeds its own slice of every batch and reads only its blocks of a
checkpoint, process 0 alone writes logs and exports, and a multi-process run resumes exactly.
Also: how a process decides to start ``jax.distributed`` (never on a laptop or CI), and which
blocks of a checkpoint tensor a process reads."""

import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging
from flax import traverse_util
from jax._src import cloud_tpu_init
from safetensors.numpy import load_file

from irl_jax import sharding
from irl_jax.metrics import read_metrics
from irl_jax.models import Transformer, hf, preset
from irl_jax.models import source as model_source
from irl_jax.tasks import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FSDP over the two processes (fsdp=4): each holds, and reads from the checkpoint, half of every
# sharded param; every batch is split between them too.
MESH_FLAGS = ["--config.mesh_shape.data=1", "--config.mesh_shape.fsdp=4"]
MESH_FLAGS.append("--config.mesh_shape.tensor=2")
SFT_FLAGS = [
    "--config=experiments/configs/sft.py",
    "--config.num_steps=6",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=3",
    "--config.data.num_train=512",
    "--config.data.num_eval=64",
    *MESH_FLAGS,
]
# GRPO (experiments/configs/grpo.py) on the preference task, whose smooth gold reward differs
# between any two responses (a random policy never solves arithmetic: all advantages would be 0):
# 8 prompts × 4 responses per iteration, k3 KL to the frozen reference in the loss.
GRPO_OVERRIDES = {
    "data.task": "preference",
    "data.max_prompt_length": 12,
    "data.max_length": 20,
    "num_steps": 4,
    "log_every": 1,
    "eval_every": 0,
    "checkpoint_every": 2,
    "batch_size": 8,
    "sampling.group_size": 4,
    # Two minibatches: the second one's policy has moved (ratios ≠ 1, a non-zero surrogate).
    "policy_gradient.num_minibatches": 2,
    # An entropy bonus keeps the loss well away from 0 (the surrogate of group-centred advantages
    # nearly cancels), so that its relative error measures something.
    "policy_gradient.entropy_coef": 0.01,
    "optimizer.learning_rate": 3e-3,
    "optimizer.warmup_steps": 0,
    "data.num_train": 64,
    "mesh_shape.data": 1,
    "mesh_shape.fsdp": 4,
    "mesh_shape.tensor": 2,
    # The final policy evaluation: batch-sharded samples and scores gathered across processes.
    "policy_eval.num_prompts": 16,
    "policy_eval.batch_size": 8,
    "policy_eval.max_new_tokens": 8,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    # Runs of the same program (a resumed run, the second process) reuse compiled steps.
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _start_single(command: list[str], cache: str) -> list[subprocess.Popen]:
    """Starts ``command`` as one process with 8 devices."""
    env = _env(8, cache)
    return [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)]


def _start_pair(command: list[str], cache: str) -> list[subprocess.Popen]:
    """Starts ``command`` as two processes with 4 devices each, joined by flags."""
    port = _free_port()
    return [
        subprocess.Popen(
            [
                *command,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=_env(4, cache),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _logs(workers: list[subprocess.Popen]) -> list[str]:
    """Waits for ``workers`` to succeed; returns their logs (stderr)."""
    try:
        logs = [worker.communicate(timeout=300)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
    return logs


def _train_rows(workdir) -> dict[int, dict[str, float]]:
    """The train metrics of each step (the last row written for it)."""
    return {r["step"]: r for r in read_metrics(str(workdir)) if "train/loss" in r}


def _eval_row(workdir) -> dict[str, float]:
    """The metrics of the last policy evaluation."""
    rows = [r for r in read_metrics(str(workdir)) if "eval/kl_mean" in r]
    assert rows, f"no policy evaluation logged in {workdir}"
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")}


def _assert_same_export(a, b, **tolerance) -> None:
    left = load_file(str(a / "export" / "model.safetensors"))
    right = load_file(str(b / "export" / "model.safetensors"))
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_allclose(right[name], left[name], err_msg=name, **tolerance)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """A persistent compilation cache shared by the runs of this module."""
    return str(tmp_path_factory.mktemp("compilation_cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A randomly initialized one-layer Llama (``llama-tiny``) over the task vocabulary, as an HF
    directory."""
    config = model_source.resolve_config(
        "llama-tiny", tokenizer=build_tokenizer(), overrides={"num_layers": 1}
    )
    params = sharding.unbox(model_source.init_fn(Transformer(config), 0)())
    return hf.save_pretrained(str(tmp_path_factory.mktemp("init") / "llama"), config, params)


def _read_percent(log: str) -> int:
    """The share of the checkpoint that ``load_pretrained`` logged this process read."""
    return int(re.search(r"load_pretrained\(.*\): process \d read .* \((\d+)%\)", log).group(1))


def test_two_processes_equal_one(tmp_path, checkpoint, cache):
    run = [sys.executable, "-m", "experiments.run", *SFT_FLAGS, f"--config.init_from={checkpoint}"]
    single = _start_single([*run, f"--workdir={tmp_path / 'single'}"], cache)
    pair = _start_pair([*run, f"--workdir={tmp_path / 'multi'}"], cache)
    (single_log,), logs = _logs(single), _logs(pair)

    losses = lambda d: [r["train/loss"] for r in _train_rows(d).values()]
    np.testing.assert_allclose(losses(tmp_path / "multi"), losses(tmp_path / "single"), rtol=1e-5)
    _assert_same_export(tmp_path / "single", tmp_path / "multi", rtol=1e-4, atol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "6").is_dir()
    # Start-up: each process logs its place; each read only its half of the FSDP-sharded
    # checkpoint (norm scales are replicated), where one process reads all of it.
    for i, log in enumerate(logs):
        assert f"process {i} of 2: 4 local cpu devices of 8 (jax.distributed from flags)" in log
        assert f"process {i} holds data 0 of 1, fsdp {2 * i}-{2 * i + 1} of 4, tensor 0-1" in log
        assert 45 <= _read_percent(log) <= 55
    assert _read_percent(single_log) == 100
    assert "process 0 of 1: 8 local cpu devices of 8\n" in single_log


# PPO (experiments/configs/ppo.py:gold) on the same task: policy and critic (from the policy's
# checkpoint: its backbone, a fresh value head) trained in one step, both FSDP-sharded over the
# two processes; 8 prompts × 2 responses per iteration, two minibatches.
PPO_OVERRIDES = {
    **{k: v for k, v in GRPO_OVERRIDES.items() if not k.startswith("policy_gradient.")},
    "num_steps": 3,
    "checkpoint_every": 0,
    "sampling.group_size": 2,
    "sampling.max_new_tokens": 8,
    "policy_eval.max_new_tokens": 8,
    "ppo.num_epochs": 1,
    "ppo.num_minibatches": 2,
    "ppo.entropy_coef": 0.01,
    "ppo.kl_target": 4.0,  # the adaptive β is part of the state too
    "ppo.critic.optimizer.learning_rate": 3e-3,
}
# AIRL (experiments/configs/airl.py): policy and discriminator (the policy's backbone plus a
# fresh score head), both FSDP-sharded, the discriminator's replay buffer and running reward
# statistics in the state; demonstrations of the preference task's demonstrator.
AIRL_OVERRIDES = {
    **{k: v for k, v in GRPO_OVERRIDES.items() if not k.startswith("policy_gradient.")},
    "num_steps": 3,
    "checkpoint_every": 0,
    "log_every": 1,
    "eval_every": 0,
    "sampling.group_size": 2,
    "sampling.max_new_tokens": 8,
    "adversarial.num_demonstrations": 32,
    "adversarial.demo_batch_size": 16,
    "adversarial.discriminator.replay_size": 32,
    "adversarial.discriminator.replay_batch_size": 8,
}


def rl_worker(algorithm: str, workdir: str, init_from: str, *distributed: str) -> None:
    """Trains ``algorithm`` (``grpo``: ``experiments/configs/grpo.py`` with ``GRPO_OVERRIDES``;
    ``ppo``: ``experiments/configs/ppo.py:gold`` with ``PPO_OVERRIDES``; ``airl``:
    ``experiments/configs/airl.py`` with ``AIRL_OVERRIDES``) like
    ``experiments.run`` does, final policy evaluation included."""
    from experiments.configs import airl, grpo, ppo
    from irl_jax.algorithms import adversarial, policy_gradient, validate_config
    from irl_jax.algorithms import ppo as ppo_lib

    flags = dict(arg.removeprefix("--").split("=", 1) for arg in distributed)
    sharding.initialize_distributed(
        flags.get("coordinator_address"),
        int(flags["num_processes"]) if "num_processes" in flags else None,
        int(flags["process_id"]) if "process_id" in flags else None,
    )
    config, overrides, train = {
        "grpo": (grpo.get_config(), GRPO_OVERRIDES, policy_gradient.train),
        "ppo": (ppo.get_config("gold"), PPO_OVERRIDES, ppo_lib.train),
        "airl": (airl.get_config(), AIRL_OVERRIDES, adversarial.train),
    }[algorithm]
    config.init_from = init_from
    for field, value in overrides.items():
        *sections, name = field.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    validate_config(config)
    logging.set_verbosity(logging.INFO)
    train(config, workdir)


def test_grpo_two_processes_equal_one_and_resume_exactly(tmp_path, checkpoint, cache):
    single, multi = tmp_path / "single", tmp_path / "multi"
    worker = lambda workdir: [sys.executable, __file__, "grpo", str(workdir), checkpoint]
    started = _start_single(worker(single), cache), _start_pair(worker(multi), cache)
    for workers in started:
        _logs(workers)

    # Sampling, scoring, advantages and updates: every train metric of every iteration.
    rows_single, rows_multi = _train_rows(single), _train_rows(multi)
    assert sorted(rows_multi) == [1, 2, 3, 4] and rows_multi[1].keys() == rows_single[1].keys()
    assert {"train/reward_mean", "train/kl", "train/clip_fraction"} <= rows_multi[1].keys()
    assert min(rows_multi[step]["train/reward_std"] for step in rows_multi) > 0.05
    assert min(abs(rows_multi[step]["train/loss"]) for step in rows_multi) > 1e-2
    assert rows_multi[4]["train/kl"] > 1e-3  # the policy moved away from the reference
    for step, row in rows_single.items():
        np.testing.assert_allclose(rows_multi[step]["train/loss"], row["train/loss"], rtol=1e-5)
        for name, value in row.items():
            if name != "train/steps_per_second":
                np.testing.assert_allclose(
                    rows_multi[step][name], value, rtol=1e-5, atol=1e-6, err_msg=name
                )
    _assert_same_export(single, multi, rtol=1e-5, atol=1e-6)
    # The final evaluation (samples of both policies gathered across processes, gold reward, KL,
    # win rate) gives the same numbers.
    eval_single, eval_multi = _eval_row(single), _eval_row(multi)
    assert eval_multi.keys() == eval_single.keys() and "eval/win_rate" in eval_multi
    for name, value in eval_single.items():
        np.testing.assert_allclose(eval_multi[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # Process 0 alone writes logs and exports: one row per step, one TensorBoard file.
    assert len(read_metrics(str(multi))) == len(read_metrics(str(single)))
    assert len(os.listdir(multi / "tensorboard")) == 1

    # Exact resume: without the final checkpoint the run resumes at step 2 and redoes 3 and 4.
    straight = {step: row["train/loss"] for step, row in rows_multi.items()}
    exported = load_file(str(multi / "export" / "model.safetensors"))
    shutil.rmtree(multi / "checkpoints" / "4")
    shutil.rmtree(multi / "export")
    logs = _logs(_start_pair(worker(multi), cache))
    assert "resumed from" in logs[0] and "at step 2" in logs[0]
    assert "exported the final model" in logs[0] and "exported the final model" not in logs[1]
    resumed = _train_rows(multi)
    assert [resumed[step]["train/loss"] for step in (3, 4)] == [straight[3], straight[4]]
    again = load_file(str(multi / "export" / "model.safetensors"))
    for name, value in exported.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_ppo_two_processes_equal_one(tmp_path, checkpoint, cache):
    single, multi = tmp_path / "single", tmp_path / "multi"
    worker = lambda workdir: [sys.executable, __file__, "ppo", str(workdir), checkpoint]
    started = _start_single(worker(single), cache), _start_pair(worker(multi), cache)
    (single_log,), logs = (_logs(workers) for workers in started)

    # The rollout (samples, gold scores, KL-shaped token rewards, values, GAE), the updates of
    # both models and the adaptive β: every train metric of every iteration.
    rows_single, rows_multi = _train_rows(single), _train_rows(multi)
    assert sorted(rows_multi) == [1, 2, 3] and rows_multi[1].keys() == rows_single[1].keys()
    names = {"train/value_loss", "train/critic_loss", "train/explained_variance", "train/kl_coef"}
    assert names | {"train/clip_fraction", "train/approx_kl"} <= rows_multi[1].keys()
    assert min(abs(rows_multi[step]["train/loss"]) for step in rows_multi) > 1e-2
    assert min(rows_multi[step]["train/value_loss"] for step in rows_multi) > 1e-3
    assert rows_multi[3]["train/kl_coef"] != rows_multi[1]["train/kl_coef"]
    for step, row in rows_single.items():
        for name in ("train/loss", "train/critic_loss"):
            np.testing.assert_allclose(rows_multi[step][name], row[name], rtol=1e-5, err_msg=name)
        for name, value in row.items():
            if name != "train/steps_per_second":
                np.testing.assert_allclose(
                    rows_multi[step][name], value, rtol=1e-5, atol=1e-6, err_msg=name
                )
    # Adam turns float noise in a near-zero gradient into a fraction of an lr = 3e-3 step: with
    # prompts as wide as their longest (9 columns, not 48) one weight of a rare token's
    # embedding row in 11,264 differed by 3.2e-5 after the 6 updates, every metric equal to 1e-5.
    _assert_same_export(single, multi, rtol=1e-4, atol=1e-4)
    # Process 0 alone writes logs and exports; each process read half of the policy's and of
    # the critic's checkpoint (the same directory: backbone of both).
    assert len(read_metrics(str(multi))) == len(read_metrics(str(single)))
    assert len(os.listdir(multi / "tensorboard")) == 1
    assert "exported the final model" in logs[0] and "exported the final model" not in logs[1]
    for log in logs:
        read = re.findall(r"load_pretrained\(.*\): process \d read .* \((\d+)%\)", log)
        assert len(read) >= 2 and all(45 <= int(percent) <= 55 for percent in read), read


# ----------------------------------------------------------------------------- start-up

LAUNCHER_ENV = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_distributed_plan_sources(monkeypatch):
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)
    plan = sharding.distributed_plan
    # A laptop or CI: nothing given, no cluster: a single process, nothing started.
    assert plan(environ={}) is None
    assert plan(environ={**LAUNCHER_ENV, "SLURM_NTASKS": "1"}) is None  # one task keeps all
    # Flags, else the environment; with all three explicit jax detects nothing.
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4"}
    env["JAX_PROCESS_ID"] = "3"
    assert plan(environ=env) == sharding.DistributedPlan(
        "environment", "10.0.0.1:1234", 4, 3, cluster="deactivate"
    )
    assert plan("h:1", 2, 0, environ=env) == sharding.DistributedPlan(
        "flags", "h:1", 2, 0, cluster="deactivate"
    )
    assert plan(process_id=1, environ=env).process_id == 1
    # A launcher supplies what is not given.
    assert plan(environ=LAUNCHER_ENV) == sharding.DistributedPlan(
        "slurm", None, None, None, cluster="slurm"
    )
    assert plan("h:1", environ=LAUNCHER_ENV).source == "flags+slurm"
    ompi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5", "OMPI_COMM_WORLD_SIZE": "8"}
    assert plan(environ=ompi).cluster == "ompi"
    # Half a configuration with no cluster to complete it is an error naming what is missing.
    with pytest.raises(ValueError, match=r"needs --num_processes \(or JAX_NUM_PROCESSES\)"):
        plan("h:1", process_id=0, environ={})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        plan(environ={**env, "JAX_NUM_PROCESSES": "two"})


def test_cloud_tpu_pods_start_without_arguments(monkeypatch):
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
    # A TPU VM: jax reads the worker list and this worker's index from the VM's metadata.
    assert sharding.distributed_plan(environ={}) == sharding.DistributedPlan(
        "gcetpu", None, None, None, cluster="gcetpu"
    )
    assert sharding.distributed_plan(environ={"TPU_WORKER_HOSTNAMES": "a,b"}).cluster == "gketpu"
    assert sharding.distributed_plan(environ={"TPU_SKIP_MDS_QUERY": "1"}) is None


def test_a_single_process_starts_nothing(monkeypatch):
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)
    for var in (*sharding.DISTRIBUTED_ENV, *LAUNCHER_ENV, "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("jax.distributed.initialize was called")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    assert sharding.initialize_distributed() is None
    assert sharding.describe_processes() == "process 0 of 1: 8 local cpu devices of 8"


# ----------------------------------------------------------------------------- sliced loading


@pytest.mark.parametrize("architecture", ["gpt2", "qwen2"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_process_reads_only_the_blocks_of_its_devices(tmp_path, architecture, scan_layers):
    """Loading onto an (fsdp=4, tensor=2) mesh on 8 devices; the blocks of "process 0" (the
    first 4 devices: fsdp 0-1) are read as a second process would read them."""
    if architecture == "gpt2":
        config = preset("gpt2-tiny", vocab_size=96)
    else:  # q/k/v biases too, and two KV heads sharded over tensor=2
        config = preset("llama-tiny", vocab_size=96, architecture="qwen2", qkv_bias=True)
    params = sharding.unbox(model_source.init_fn(Transformer(config), 0)())
    path = hf.save_pretrained(str(tmp_path / architecture), config, params)
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    loaded_config, loaded = hf.load_pretrained(path, mesh=mesh, scan_layers=scan_layers)
    assert loaded_config.scan_layers == scan_layers
    _, host = hf.load_pretrained(path, scan_layers=scan_layers)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), host)

    reader = hf._TensorReader(path)
    unrolled = loaded_config.replace(scan_layers=False)
    boxed = traverse_util.flatten_dict(hf._abstract_params(unrolled, "causal_lm"), sep="/")
    first_process = set(mesh.devices.flat[:4])
    halved = []
    for rule in hf._rules(unrolled, "causal_lm"):
        shape = reader.shape(rule.hf)
        whole = rule.to_ours(reader.read(rule.hf, tuple(slice(None) for _ in shape)))
        target = sharding.tree_shardings(boxed[rule.ours], mesh)
        mine = {
            tuple((s.start, s.stop) for s in index): index
            for device, index in target.devices_indices_map(whole.shape).items()
            if device in first_process
        }
        before = reader.values_read
        for index in mine.values():
            block = hf._read_block(reader.read, rule, shape, index)
            np.testing.assert_array_equal(block, whole[index], err_msg=rule.hf)
        needed = sum(whole[index].size for index in mine.values())
        # GPT-2's fused QKV (3 × heads × head_dim) sharded over heads: whole columns are read.
        extra = 2 if "c_attn" in rule.hf else 1
        assert reader.values_read - before == extra * needed, rule.hf
        if "fsdp" in jax.tree.leaves(tuple(target.spec)):
            assert 2 * needed == whole.size, rule.hf
            halved.append(rule.hf)
    # Every matrix (embedding, attention, MLP) is FSDP-sharded: the first process reads half.
    assert len(halved) >= 1 + config.num_layers * (4 if config.is_gpt2 else 7)


def test_airl_two_processes_equal_one(tmp_path, checkpoint, cache):
    single, multi = tmp_path / "single", tmp_path / "multi"
    worker = lambda workdir: [sys.executable, __file__, "airl", str(workdir), checkpoint]
    for workers in (_start_single(worker(single), cache), _start_pair(worker(multi), cache)):
        _logs(workers)

    # Rollout, discriminator step (demonstrations, fresh and replayed samples), rewards from the
    # discriminator, the policy step: every train metric of every iteration; the evaluation too.
    rows_single, rows_multi = _train_rows(single), _train_rows(multi)
    assert sorted(rows_multi) == [1, 2, 3] and rows_multi[1].keys() == rows_single[1].keys()
    assert {"train/disc_loss", "train/h_sample_mean", "train/reward_std"} <= rows_multi[1].keys()
    for step, row in rows_single.items():
        for name, value in row.items():
            if name != "train/steps_per_second":
                np.testing.assert_allclose(
                    rows_multi[step][name], value, rtol=1e-5, atol=1e-6, err_msg=name
                )
    eval_single, eval_multi = _eval_row(single), _eval_row(multi)
    assert eval_multi.keys() == eval_single.keys()
    for name, value in eval_single.items():
        np.testing.assert_allclose(eval_multi[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    _assert_same_export(single, multi, rtol=1e-4, atol=1e-5)
    assert len(read_metrics(str(multi))) == len(read_metrics(str(single)))


if __name__ == "__main__":  # a GRPO, PPO or AIRL worker process of the tests above
    rl_worker(*sys.argv[1:])
