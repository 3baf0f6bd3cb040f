"""The one training loop: data → step → periodic eval → metrics → checkpoint → resume → export.

Every algorithm runs through ``train_loop``. The loop knows only the step counter: it takes the
algorithm's ``step(state, batch) -> (state, metrics)``, one or several named resumable data
streams, ``evaluate(state) -> (metrics, samples)`` and ``export(state)``. It owns resumption
(the state and every stream's position from the newest checkpoint), logging and checkpointing.
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

_MAX_IN_FLIGHT = 4

Evaluate = Callable[[Any], tuple[Mapping[str, float], list[dict[str, Any]]]]


class ResumableIterator(Protocol):
    """What the loop needs from a data stream: batches and a restorable position."""

    state: Mapping[str, int]

    def restore(self, state: Mapping[str, int]) -> None: ...

    def __next__(self) -> dict[str, np.ndarray]: ...


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k if "/" in k else f"{prefix}/{k}": v for k, v in metrics.items()}


def _mean_metrics(window: list[Mapping[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}


class _Streams:
    """One stream (the step gets its batch) or several named ones (the step gets a dict of
    batches by name); positions are saved and restored by name."""

    def __init__(self, batches: Any, mesh: Mesh):
        self.single = not isinstance(batches, Mapping)
        self.streams: dict[str, Any] = {"train": batches} if self.single else dict(batches)
        self.sharding = sharding_lib.batch_sharding(mesh)

    def __next__(self) -> Any:
        batches = {
            name: sharding_lib.global_batch(next(stream), self.sharding)
            for name, stream in self.streams.items()
        }
        return batches["train"] if self.single else batches

    @property
    def state(self) -> dict[str, dict[str, int]]:
        return {name: dict(s.state) for name, s in self.streams.items() if hasattr(s, "state")}

    def restore(self, saved: Mapping[str, Mapping[str, int]]) -> None:
        for name, stream in self.streams.items():
            if hasattr(stream, "restore") and name in saved:
                stream.restore(saved[name])


def train_loop(
    *,
    state: Any,
    state_shardings: Any,
    train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    batches: ResumableIterator | Iterator | Mapping[str, ResumableIterator | Iterator],
    mesh: Mesh,
    workdir: str,
    num_steps: int,
    evaluate: Evaluate | None = None,
    export: Callable[[Any], Any] | None = None,
    config: Mapping[str, Any] | None = None,
    eval_every: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = True,
    description: str = "train",
) -> tuple[Any, dict[str, float]]:
    """Runs ``train_step`` until ``state.step == num_steps``.

    At the end the state is saved first, then exported, then evaluated, so a failing
    evaluation never loses the trained state (a finished run that is run again restores,
    exports and evaluates).

    Args:
      state, state_shardings: the initial state and its shardings (the restore target). The
        loop reads ``state.step`` once, after restoring, and counts steps on the host.
      train_step: ``(state, batch) -> (state, metrics)``; ``batch`` is one stream's global
        batch, or a dict of global batches by stream name.
      batches: one stream or a dict of named streams; each yields this process's rows of each
        global batch, and its ``state`` (position) is checkpointed under its name.
      mesh: batches are assembled into global arrays sharded over ``('data', 'fsdp')``.
      workdir: metrics, TensorBoard files and ``checkpoints/`` go here.
      num_steps: total steps (a resumed run continues to the same total).
      evaluate: ``state -> (metrics, samples)``, every ``eval_every`` steps and at the end;
        metrics are logged as ``eval/<name>`` (names with a ``/`` as they are), samples as
        texts.
      export: ``state -> …``, called once at the end (e.g. write a Hugging Face directory).
      config: stored in every checkpoint (JSON).
      log_every: train metrics are averaged over this many steps, then fetched and written.
      checkpoint_every: save every this many steps (and at the end); 0 saves at the end only.
      keep_checkpoints: newest checkpoints kept.
      resume: continue from the newest checkpoint in ``workdir`` if there is one.

    Returns:
      ``(final state, the last evaluation's metrics)``.

    Raises:
      FloatingPointError: a non-finite train loss; the last good checkpoint stays on disk.
    """
    checkpoints = CheckpointManager(workdir, max_to_keep=keep_checkpoints)
    writer = MetricsWriter(workdir)
    streams = _Streams(batches, mesh)
    final: dict[str, float] = {}
    try:
        if resume and checkpoints.latest_step() is not None:
            state, data_state, _ = checkpoints.restore(state, state_shardings)
            streams.restore(data_state.get("streams", {}))
            logging.info("resumed from %s at step %d", checkpoints.directory, int(state.step))
        step = int(state.step)

        def save(step: int) -> None:
            checkpoints.save(step, state, {"streams": streams.state}, config)

        def run_evaluation(step: int) -> None:
            if evaluate is None:
                return
            metrics, samples = evaluate(state)
            final.clear()
            final.update(_prefixed("eval", metrics))
            writer.write(step, final)
            writer.write_samples(step, "samples", samples)

        bar = progress_bar(num_steps, step, description)
        window: list[Mapping[str, Any]] = []
        window_start = time.perf_counter()
        while step < num_steps:
            state, metrics = train_step(state, next(streams))
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
            if checkpoint_every and step % checkpoint_every == 0 and step != num_steps:
                save(step)
            if eval_every and step % eval_every == 0 and step != num_steps:
                run_evaluation(step)
        bar.close()
        if checkpoints.latest_step() != step:
            save(step)
        checkpoints.wait()
        if export is not None:
            export(state)
        run_evaluation(step)
        return state, final
    finally:
        checkpoints.close()
        writer.close()
