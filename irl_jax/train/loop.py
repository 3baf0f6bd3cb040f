"""The one training loop: data → step → periodic eval → metrics → checkpoint → resume.

Every algorithm runs through ``train_loop``: supervised ones pass a jitted ``train_step``;
RL passes a Python function that samples, scores and runs several jitted updates. The loop owns
resumption (state + data position from the newest checkpoint), logging and checkpointing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from irl_jax import sharding as sharding_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.metrics import MetricsWriter, progress_bar
from irl_jax.train.step import global_batch

_MAX_IN_FLIGHT = 4


class ResumableIterator(Protocol):
    """What the loop needs from a data source: batches and a restorable position."""

    state: Mapping[str, int]

    def restore(self, state: Mapping[str, int]) -> None: ...

    def __next__(self) -> dict[str, np.ndarray]: ...


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k if "/" in k else f"{prefix}/{k}": v for k, v in metrics.items()}


def _mean_metrics(window: list[Mapping[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}


def train_loop(
    *,
    state: Any,
    state_shardings: Any,
    train_step: Callable[[Any, dict[str, jax.Array]], tuple[Any, Mapping[str, Any]]],
    batches: ResumableIterator | Iterator[dict[str, np.ndarray]],
    mesh: Mesh,
    workdir: str,
    num_steps: int,
    config: Mapping[str, Any] | None = None,
    eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
    eval_every: int = 0,
    sample_fn: Callable[[Any], list[dict[str, Any]]] | None = None,
    log_every: int = 10,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = True,
    description: str = "train",
) -> Any:
    """Runs ``train_step`` until ``state.step == num_steps``; returns the final state.

    Args:
      state, state_shardings: the initial state and its shardings (the restore target).
      train_step: ``(state, global batch) -> (state, metrics)``.
      batches: yields this process's rows of each global batch; its ``state`` is checkpointed.
      mesh: batches are assembled into global arrays sharded over ``('data', 'fsdp')``.
      workdir: metrics, TensorBoard files and ``checkpoints/`` go here.
      num_steps: total steps (a resumed run continues to the same total).
      config: stored in every checkpoint (JSON).
      eval_fn: ``state -> metrics`` every ``eval_every`` steps and at the end.
      sample_fn: ``state -> sample dicts`` logged as texts at every evaluation.
      log_every: train metrics are averaged over this many steps, then fetched and written.
      checkpoint_every: save every this many steps (and at the end); 0 saves at the end only.
      keep_checkpoints: newest checkpoints kept.
      resume: continue from the newest checkpoint in ``workdir`` if there is one.

    Raises:
      FloatingPointError: a non-finite train loss; the last good checkpoint stays on disk.
    """
    checkpoints = CheckpointManager(workdir, max_to_keep=keep_checkpoints)
    writer = MetricsWriter(workdir)
    data_sharding = sharding_lib.batch_sharding(mesh)
    try:
        if resume and checkpoints.latest_step() is not None:
            state, data_state, _ = checkpoints.restore(state, state_shardings)
            if hasattr(batches, "restore") and "iterator" in data_state:
                batches.restore(data_state["iterator"])
            logging.info("resumed from %s at step %d", checkpoints.directory, int(state.step))
        step = int(state.step)

        def save(step: int) -> None:
            data_state = {"iterator": dict(batches.state)} if hasattr(batches, "state") else {}
            checkpoints.save(step, state, data_state, config)

        def evaluate(step: int) -> None:
            if eval_fn is not None:
                writer.write(step, _prefixed("eval", eval_fn(state)))
            if sample_fn is not None:
                writer.write_samples(step, "samples", sample_fn(state))

        bar = progress_bar(num_steps, step, description)
        window: list[Mapping[str, Any]] = []
        window_start = time.perf_counter()
        while step < num_steps:
            batch = global_batch(next(batches), data_sharding)
            state, metrics = train_step(state, batch)
            step += 1
            window.append(metrics)
            if len(window) > _MAX_IN_FLIGHT:
                # Bound the steps dispatched ahead of the host: a deep queue of steps can starve
                # XLA:CPU's collective rendezvous on many (fake) devices.
                jax.block_until_ready(window[-_MAX_IN_FLIGHT - 1])
            bar.update(1)
            if step % log_every == 0 or step == num_steps:
                averaged = _mean_metrics(window)
                if not math.isfinite(averaged.get("loss", 0.0)):
                    raise FloatingPointError(
                        f"non-finite train loss {averaged['loss']} by step {step}; the last good "
                        f"checkpoint is kept in {checkpoints.directory}"
                    )
                elapsed = time.perf_counter() - window_start
                averaged["steps_per_second"] = len(window) / max(elapsed, 1e-9)
                writer.write(step, _prefixed("train", averaged))
                bar.set_postfix(loss=f"{averaged.get('loss', float('nan')):.4f}")
                window, window_start = [], time.perf_counter()
            if eval_every and step % eval_every == 0 and step != num_steps:
                evaluate(step)
            if checkpoint_every and step % checkpoint_every == 0 and step != num_steps:
                save(step)
        bar.close()
        if checkpoints.latest_step() != step:
            evaluate(step)
            save(step)
        return state
    finally:
        checkpoints.close()
        writer.close()
