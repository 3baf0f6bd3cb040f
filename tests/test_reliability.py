"""Never losing a run: a failing final evaluation, non-finite steps, changed configs on resume,
the workdir lock, unreadable checkpoints, torn outputs, and SIGTERM / SIGKILL at seeded steps
resumed bit-identically (issue 24)."""

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from irl_jax import sharding
from irl_jax.algorithms import experiment_config, pipeline, sft, validate_config, validate_paths
from irl_jax.checkpoint import CheckpointError, CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.metrics import MetricsWriter, read_metrics
from irl_jax.models import Transformer, hf, preset
from irl_jax.models import source as model_source
from irl_jax.train import (
    Loss,
    create_model,
    create_state,
    make_optimizer,
    supervised_step,
    train_loop,
)
from irl_jax.workdir import WorkdirLock, WorkdirLocked, _process_start, publish_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = preset("llama-tiny", vocab_size=64, num_layers=1)
ROWS, BATCH = 64, 8
COMPLETE = model_source.COMPLETE_MARKER


class Stream:
    """Batch i holds rows 8i … 8i+7 (mod 64) and a loss scale: NaN at the ``poisoned`` steps
    (step i + 1 consumes batch i), else 1. Its position is checkpointed."""

    def __init__(self, poisoned=()):
        rng = np.random.default_rng(0)
        ids = rng.integers(3, CFG.vocab_size, (ROWS, 12)).astype(np.int32)
        mask = (np.arange(12)[None] < rng.integers(6, 13, ROWS)[:, None]).astype(np.int32)
        self.arrays = {"input_ids": ids * mask, "attention_mask": mask, "loss_mask": mask}
        self.poisoned, self.index = set(poisoned), 0

    @property
    def state(self):
        return {"index": self.index}

    def restore(self, state):
        self.index = state["index"]

    def __next__(self):
        rows = (self.index * BATCH + np.arange(BATCH)) % ROWS
        scale = np.nan if self.index + 1 in self.poisoned else 1.0
        self.index += 1
        return {**{k: v[rows] for k, v in self.arrays.items()}, "scale": np.full(BATCH, scale)}


def scaled_loss(params, batch, rng, frozen):
    loss, metrics = sft.make_loss_fn(CFG)(params, batch, rng, frozen)
    return Loss(loss.total * batch["scale"][0], loss.count), metrics


@pytest.fixture(scope="module")
def tiny():
    """``run(workdir, num_steps, poisoned=(), **loop_options) -> final state`` on one device;
    the jitted step is built once and shared by every run."""
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    optimizer, schedule = make_optimizer(num_steps=8, learning_rate=3e-2, warmup_steps=2)

    policy = create_model(model_source.init_fn(Transformer(CFG), 0), optimizer, mesh)
    initial, shardings = create_state(mesh, seed=0, models={"policy": policy})
    copy = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=shardings)
    step = supervised_step(scaled_loss, optimizer, shardings, mesh, schedule=schedule)

    def run(workdir, num_steps, poisoned=(), **options):
        state = copy(initial)  # the step donates it
        options = {"log_every": 1, **options}
        return train_loop(
            state=state,
            state_shardings=shardings,
            train_step=step,
            batches=Stream(poisoned),
            mesh=mesh,
            workdir=str(workdir),
            num_steps=num_steps,
            **options,
        )[0]

    run.initial_params = params_of(initial)
    return run


def params_of(state):
    return jax.device_get(state.models["policy"].params)


def assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def train_losses(workdir):
    return [(r["step"], r["train/loss"]) for r in read_metrics(str(workdir)) if "train/loss" in r]


# ----------------------------------------------------------------------------- 1. final evaluation


def test_failed_final_evaluation_keeps_the_trained_state(tiny, tmp_path):
    exported = []

    def failing(state):
        raise RuntimeError("evaluation crashed")

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        tiny(tmp_path, 3, evaluate=failing, export=lambda s: exported.append(params_of(s)))
    assert CheckpointManager(str(tmp_path)).all_steps() == [3] and len(exported) == 1
    # The rerun trains nothing: it restores step 3, exports it again and evaluates.
    state = tiny(tmp_path, 3, evaluate=lambda s: ({"score": 1.0}, []))
    assert int(state.step) == 3
    assert_same_params(params_of(state), exported[0])
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 3]


def test_validation_checks_what_the_evaluation_needs():
    def config(model="gpt2-tiny", **data):
        c = experiment_config("sft")
        c.model = model
        c.data.update(data)
        return c

    validate_config(config(max_length=200))  # 200 + 24 new tokens fit 256 positions
    with pytest.raises(ConfigError, match="data.max_length: 300 exceeds the 256 positions"):
        validate_config(config(max_length=300))
    c = config(max_length=200)
    c.policy_eval.max_new_tokens = 64
    with pytest.raises(ConfigError, match=r"policy_eval.max_new_tokens: a prompt of up to 200 "):
        validate_config(c)
    c.policy_eval.max_new_tokens, c.data.max_prompt_length = 64, 150  # a shorter prompt fits
    validate_config(c)
    c.sampling.max_new_tokens = 120
    with pytest.raises(ConfigError, match=r"sampling.max_new_tokens: .*150 tokens.* \+ 120"):
        validate_config(c)
    validate_config(config("llama-tiny", max_length=300))  # RoPE: no position table
    c = config()
    c.policy_eval.num_prompts = 12  # 12 prompts over 8 data-parallel devices
    with pytest.raises(ConfigError, match="policy_eval.batch_size: .* = 12 prompts"):
        validate_config(c)


# ----------------------------------------------------------------------------- 2. non-finite


def test_nonfinite_step_is_never_saved(tiny, tmp_path):
    message = "non-finite loss or gradient norm at step 3 .*newest good checkpoint is step 2: "
    message += os.path.join(str(tmp_path), "checkpoints", "2")
    for _ in range(2):  # a rerun resumes the good step 2 and stops at step 3 again
        with pytest.raises(FloatingPointError, match=message):
            tiny(tmp_path, 6, poisoned={3}, checkpoint_every=1, keep_checkpoints=3, log_every=4)
        manager = CheckpointManager(str(tmp_path))
        assert manager.all_steps() == [1, 2]
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(manager.read()["models"]))
    with pytest.raises(FloatingPointError, match="at step 1 .*no checkpoint was saved"):
        tiny(tmp_path / "fresh", 4, poisoned={1}, checkpoint_every=1)
    assert CheckpointManager(str(tmp_path / "fresh")).all_steps() == []


def test_skip_step_discards_the_nonfinite_update_on_device(tiny, tmp_path):
    options = {"checkpoint_every": 1, "keep_checkpoints": 5, "on_nonfinite": "skip_step"}
    state = tiny(tmp_path, 5, poisoned={3}, **options)
    assert int(state.step) == 5 and int(state.models["policy"].step) == 4  # 4 updates applied
    manager = CheckpointManager(str(tmp_path))
    before, after = manager.read(2)["models"]["policy"], manager.read(3)["models"]["policy"]
    jax.tree.map(np.testing.assert_array_equal, before, after)  # step 3 changed nothing
    skipped = {r["step"]: r["train/nonfinite_updates"] for r in read_metrics(str(tmp_path))}
    assert skipped == {1: 0.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 0.0}


# ----------------------------------------------------------------------------- 3. changed config


def test_resume_refuses_a_changed_config(tiny, tmp_path, caplog):
    config = {
        "num_steps": 4,
        "batch_size": 8,
        "data": {"path": "a.jsonl"},
        "optimizer": {"learning_rate": 0.03, "schedule": "cosine"},
        "resume_policy": "check",
    }
    tiny(tmp_path, 4, config=config)
    changed = {**config, "batch_size": 16, "data": {"path": "b.jsonl"}}
    with pytest.raises(ConfigError, match=r"batch_size: 8 → 16, data.path: 'a.jsonl' → 'b.jsonl'"):
        tiny(tmp_path, 4, config=changed)
    # Allowed: a longer run (warned about the decaying schedule), another logging interval ...
    with caplog.at_level(logging.WARNING):
        state = tiny(tmp_path, 6, config={**config, "num_steps": 6, "log_every": 2})
    assert int(state.step) == 6 and "optimizer.schedule='cosine' decays" in caplog.text
    # ... any change under resume_policy="ignore_config"; a total below the checkpoint: never.
    state = tiny(tmp_path, 7, config={**changed, "num_steps": 7, "resume_policy": "ignore_config"})
    assert int(state.step) == 7
    with pytest.raises(ConfigError, match="num_steps: 5 is below step 7"):
        tiny(tmp_path, 5, config={**changed, "num_steps": 5})


def test_pipeline_reruns_a_changed_stage_and_the_stages_reading_it(tmp_path):
    def stages(**changes):
        sft = experiment_config("sft")
        reward_model = experiment_config("reward_model")
        reward_model.init_from = "@sft"
        other = experiment_config("sft")
        for path, value in changes.items():
            name, *fields = path.split(".")
            section = {"sft": sft, "reward_model": reward_model}[name]
            for field in fields[:-1]:
                section = section[field]
            section[fields[-1]] = value
        return pipeline.pipeline_config({"sft": sft, "reward_model": reward_model, "other": other})

    finished = stages()
    for name in finished.run:  # every stage finished: a checkpoint with its config, a result
        manager = CheckpointManager(str(tmp_path / name))
        config = pipeline.resolve(finished.stages[name], str(tmp_path)).to_dict()
        manager.save(200, {"x": np.zeros(1)}, {}, config)
        manager.close()
        (tmp_path / name / "result.json").write_text("{}")

    def actions(config, workdir=str(tmp_path)):
        return {name: action for name, (action, _) in pipeline.plan(config, workdir).items()}

    assert actions(finished) == {"sft": "skip", "reward_model": "skip", "other": "skip"}
    # @sft reads the same stage when WORKDIR is spelled another way; eval_every may change.
    assert set(actions(stages(**{"sft.eval_every": 7}), f"{tmp_path}/.").values()) == {"skip"}
    changed = pipeline.plan(stages(**{"sft.optimizer.learning_rate": 0.01}), str(tmp_path))
    reason = "config changed since it ran: optimizer.learning_rate: 0.001 → 0.01"
    assert changed["sft"] == ("rerun", reason)
    assert changed["reward_model"] == ("rerun", "it reads sft, which train again")
    assert changed["other"][0] == "skip"
    longer = actions(stages(**{"sft.num_steps": 300}))  # sft resumes; its reader starts over
    assert longer == {"sft": "run", "reward_model": "rerun", "other": "skip"}
    ignored = stages(
        **{"reward_model.batch_size": 64, "reward_model.resume_policy": "ignore_config"}
    )
    assert actions(ignored)["reward_model"] == "skip"
    # A rerun stage's old directory is moved aside, never deleted.
    for number in (1, 2):
        assert pipeline._set_aside(str(tmp_path / "sft"), str(tmp_path)).endswith(f"sft-{number}")
        assert (tmp_path / "replaced" / f"sft-{number}" / "result.json").exists()
        (tmp_path / "sft").mkdir()
        (tmp_path / "sft" / "result.json").write_text("{}")


# ----------------------------------------------------------------------------- 4. workdir lock


def write_lock(workdir, **holder):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.lock").write_text(json.dumps({"since": "earlier", **holder}))


def test_workdir_lock(tiny, tmp_path, caplog):
    host = socket.gethostname()
    holder = subprocess.Popen(["sleep", "60"])
    write_lock(tmp_path, pid=holder.pid, host=host, start=_process_start(holder.pid))
    with pytest.raises(WorkdirLocked, match=f"in use by pid {holder.pid} on host {host}"):
        tiny(tmp_path, 2)
    assert not (tmp_path / "checkpoints").exists()  # nothing ran
    holder.kill()
    holder.wait()
    with caplog.at_level(logging.WARNING):  # a dead holder's lock is taken over
        assert int(tiny(tmp_path, 2).step) == 2
    assert f"from dead process {holder.pid}" in caplog.text
    assert not (tmp_path / "run.lock").exists()  # released at the end
    write_lock(tmp_path, pid=1, host="elsewhere", start=None)
    with pytest.raises(WorkdirLocked, match="in use by pid 1 on host elsewhere"):
        WorkdirLock(str(tmp_path)).acquire()
    (tmp_path / "run.lock").unlink()
    mine = f"in use by pid {os.getpid()}"  # exclusive within one process too
    with WorkdirLock(str(tmp_path)), pytest.raises(WorkdirLocked, match=mine):
        WorkdirLock(str(tmp_path)).acquire()


# ----------------------------------------------------------------------------- 5. unreadable


def truncate_state_files(checkpoint_dir):
    for root, _, files in os.walk(os.path.join(checkpoint_dir, "state", "d")):
        for name in files:
            path = os.path.join(root, name)
            os.truncate(path, os.path.getsize(path) // 2)


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tiny, tmp_path, caplog):
    straight = tiny(tmp_path / "straight", 6, checkpoint_every=2)
    tiny(tmp_path / "run", 4, checkpoint_every=2)
    truncate_state_files(tmp_path / "run" / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING):
        resumed = tiny(tmp_path / "run", 6, checkpoint_every=2)  # from step 2
    assert "resumed from checkpoint 2 instead of the unreadable newer checkpoint(s) [4]" in (
        caplog.text
    )
    assert_same_params(params_of(resumed), params_of(straight))
    assert (tmp_path / "run" / "unreadable_checkpoints" / "4" / "state").is_dir()
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "straight")
    tiny(tmp_path / "none", 2)
    truncate_state_files(tmp_path / "none" / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read \(step 2: "):
        tiny(tmp_path / "none", 4)
    assert (tmp_path / "none" / "checkpoints" / "2").is_dir()  # nothing is moved then


# ----------------------------------------------------------------------------- 6. torn outputs


def test_torn_metrics_lines_and_rows_past_the_resume_step(tmp_path):
    rows = [{"step": s, "train/loss": float(s)} for s in range(1, 6)] + [{"step": 5, "eval/x": 1}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 6, "tra')  # killed mid-line
    assert read_metrics(str(tmp_path)) == rows
    MetricsWriter(str(tmp_path), tensorboard=False, resume_step=5, reevaluate=True).write(6, {})
    assert read_metrics(str(tmp_path)) == rows[:5]  # the final evaluation at 5 runs again
    MetricsWriter(str(tmp_path), tensorboard=False, resume_step=3).write(4, {"train/loss": 9.0})
    assert read_metrics(str(tmp_path)) == [*rows[:3], {"step": 4, "train/loss": 9.0}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2: not JSON"):
        read_metrics(str(tmp_path))


def test_interrupted_export_never_replaces_or_fakes_a_model(tiny, tmp_path):
    params = tiny.initial_params
    path = str(tmp_path / "export")

    def killed_after_config(directory):  # kill -9 after config.json (what the loop saw)
        os.makedirs(directory)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"model_type": "llama"}, f)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_directory(killed_after_config, path, COMPLETE)
    assert not os.path.exists(path)
    partial = f"{path}.partial"
    assert model_source.hf_dir_problem(partial) == (
        "is incomplete: model.safetensors is missing (an interrupted export or copy?)"
    )
    config = experiment_config("sft")
    config.init_from = partial
    with pytest.raises(ConfigError, match="config.init_from: .*export.partial' is incomplete"):
        validate_paths(config)
    publish_directory(lambda d: hf.save_pretrained(d, CFG, params), path, COMPLETE)
    assert model_source.is_hf_dir(path) and not os.path.exists(partial)
    with pytest.raises(KeyboardInterrupt):  # a failed re-export leaves the old one in place
        publish_directory(killed_after_config, path, COMPLETE)
    assert model_source.is_hf_dir(path)
    # Without the marker (another tool wrote it), the weights' lengths are checked.
    os.remove(os.path.join(path, COMPLETE))
    assert model_source.is_hf_dir(path)
    weights = os.path.join(path, "model.safetensors")
    os.truncate(weights, os.path.getsize(weights) - 1)
    assert "model.safetensors is truncated" in model_source.hf_dir_problem(path)


# ----------------------------------------------------------------------------- fault injection

FLAGS = [
    "--config=experiments/configs/sft.py",
    "--config.num_steps=30",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=6",
    "--config.data.num_train=256",
    "--config.data.num_eval=64",
]


def start(workdir, name):
    """``experiments.run`` in ``workdir`` on one CPU device (compiles fastest), its output in a
    file (a pipe could fill up and stall it)."""
    command = [sys.executable, "-m", "experiments.run", f"--workdir={workdir}", *FLAGS]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    log_path = workdir.parent / f"{workdir.name}.{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


def output(process):
    return process.log_path.read_text()


def signal_at(process, workdir, step, signum):
    """Sends ``signum`` once ``metrics.jsonl`` shows ``step``; returns the step seen."""
    path = workdir / "metrics.jsonl"
    while process.poll() is None:
        seen = [r["step"] for r in read_metrics(str(workdir))] if path.exists() else []
        if seen and max(seen) >= step:
            process.send_signal(signum)
            return max(seen)
        time.sleep(0.01)
    raise AssertionError(f"the run ended before step {step}:\n{output(process)[-3000:]}")


def test_sigterm_and_sigkill_at_seeded_steps_resume_bit_identically(tmp_path):
    rng = random.Random(24)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference = start(straight, "straight")
    first = start(resumed, "sigterm")
    signal_at(first, resumed, rng.randint(2, 10), signal.SIGTERM)
    assert first.wait(timeout=300) == 75, output(first)[-3000:]  # Preempted.exit_status
    saved = CheckpointManager(str(resumed)).latest_step()
    assert f"SIGTERM: saved step {saved}" in output(first)
    assert not (resumed / "run.lock").exists()

    second = start(resumed, "sigkill")
    signal_at(second, resumed, saved + rng.randint(4, 12), signal.SIGKILL)
    assert second.wait(timeout=300) == -signal.SIGKILL
    assert (resumed / "run.lock").exists()  # left behind by the killed process

    third = start(resumed, "resume")
    assert third.wait(timeout=300) == 0, output(third)[-3000:]
    assert "took over the lock" in output(third) and "resumed from" in output(third)
    assert reference.wait(timeout=300) == 0, output(reference)[-3000:]

    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(resumed / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # Every row once; the per-step losses are the uninterrupted run's, bit for bit.
    assert [step for step, _ in train_losses(resumed)] == list(range(1, 31))
    assert train_losses(resumed) == train_losses(straight)
    assert [r["step"] for r in read_metrics(str(resumed)) if "eval/nll" in r] == [30]
