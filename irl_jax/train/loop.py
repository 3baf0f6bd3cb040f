"""The one training loop: data → step → periodic eval → metrics → checkpoint → resume → export.

Every algorithm runs through ``train_loop``. The loop knows only the step counter: it takes the
algorithm's ``step(state, batch) -> (state, metrics)``, one or several named resumable data
streams, ``evaluate(state) -> (metrics, samples)`` and ``export(state)``. It owns resumption
(the state and every stream's position from the newest readable checkpoint, whose config must
match), logging, checkpointing, the workdir lock, non-finite checks and preemption.

What a failure leaves behind:

* **Non-finite values.** Every step's ``loss`` / ``grad_norm`` metrics (any name ending so)
  and ``nonfinite_updates`` (``make_update`` discards such updates on device) are folded into
  a small device array without a host sync; it is read before anything is logged, evaluated or
  saved, and the state itself is checked before each save, so a non-finite state is never
  saved. ``on_nonfinite="stop"`` raises ``FloatingPointError`` naming the step and the newest
  good checkpoint; ``"skip_step"`` goes on past discarded updates (with a warning).
* **SIGTERM** (preemption, maintenance, ``kill``): the step in flight finishes, the state is
  saved and ``Preempted`` is raised (``experiments.run`` exits with ``Preempted.exit_status``).
  All processes of a multi-process run stop at the same step (JAX's preemption sync point).
* **A crash or SIGKILL**: a rerun resumes from the newest checkpoint (an unreadable one is set
  aside for the previous one), drops the metrics rows logged after it, and continues exactly.
* **At the end** the state is saved, then exported, then evaluated: a failing export or
  evaluation never loses the trained state (a rerun restores, exports and evaluates).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from irl_jax import sharding as sharding_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import (
    ConfigError,
    config_differences,
    describe_differences,
    schedules_depending_on_num_steps,
)
from irl_jax.metrics import MetricsWriter, progress_bar
from irl_jax.workdir import WorkdirLock

_MAX_IN_FLIGHT = 4

Evaluate = Callable[[Any], tuple[Mapping[str, float], list[dict[str, Any]]]]


class ResumableIterator(Protocol):
    """What the loop needs from a data stream: batches and a restorable position."""

    state: Mapping[str, int]

    def restore(self, state: Mapping[str, int]) -> None: ...

    def __next__(self) -> dict[str, np.ndarray]: ...


class Preempted(Exception):
    """The run stopped on SIGTERM after saving step ``step``; rerunning it resumes there."""

    exit_status = 75  # EX_TEMPFAIL: a temporary failure, run the same command again

    def __init__(self, step: int, directory: str):
        super().__init__(f"SIGTERM: saved step {step} in {directory}; rerun to resume")
        self.step = step


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


# ----------------------------------------------------------------------------- non-finite values

# faults[i]: the first step with a non-finite value not discarded by the step, the first step
# with any non-finite value, the number of steps with a discarded update, the last such step.
_UNHANDLED, _FIRST, _SKIPPED, _LAST_SKIPPED = range(4)


@jax.jit
def _fold_faults(faults: jax.Array, metrics: Mapping[str, Any], step: jax.Array) -> jax.Array:
    """``faults`` updated with one step's metrics (on device: no host sync)."""
    checked = [v for k, v in metrics.items() if k.endswith(("loss", "grad_norm"))]
    nonfinite = jnp.any(jnp.array([~jnp.all(jnp.isfinite(v)) for v in checked] or [False]))
    flags = [v for k, v in metrics.items() if k.endswith("nonfinite_updates")]
    skipped = jnp.any(jnp.array([jnp.any(v > 0) for v in flags] or [False]))
    first = lambda index, event: jnp.where((faults[index] == 0) & event, step, faults[index])
    return jnp.stack(
        [
            first(_UNHANDLED, nonfinite & ~skipped),
            first(_FIRST, nonfinite | skipped),
            faults[_SKIPPED] + skipped,
            jnp.where(skipped, step, faults[_LAST_SKIPPED]),
        ]
    )


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    """Every floating-point value of ``tree`` is finite (one scalar)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


class _Faults:
    """Non-finite values seen by the loop: folded in on device every step, read on the host
    only before something is logged, evaluated or saved."""

    def __init__(self, mesh: Mesh, on_nonfinite: str, checkpoints: CheckpointManager):
        self.faults = jax.device_put(np.zeros(4, np.int32), sharding_lib.replicated(mesh))
        self.on_nonfinite = on_nonfinite
        self.checkpoints = checkpoints
        self.warned_skips = 0

    def fold(self, metrics: Mapping[str, Any], step: int) -> None:
        self.faults = _fold_faults(self.faults, metrics, step)

    def check(self, step: int, state: Any = None) -> None:
        """Raises ``FloatingPointError`` if a non-finite value was seen (or, given ``state``,
        is in it) — a discarded update only under ``on_nonfinite="stop"``; warns about newly
        discarded updates under ``"skip_step"``."""
        seen = np.asarray(jax.device_get(self.faults))
        first = int(seen[_FIRST if self.on_nonfinite == "stop" else _UNHANDLED])
        what = f"a non-finite loss or gradient norm at step {first}"
        if not first and state is not None and not bool(_all_finite(state)):
            first, what = step, f"non-finite values in the state at step {step}"
        if first:
            newest, directory = self.checkpoints.latest_step(), self.checkpoints.directory
            kept = f"no checkpoint was saved in {directory}"
            if newest is not None:
                path = os.path.join(directory, str(newest))
                kept = f"the newest good checkpoint is step {newest}: {path}"
            raise FloatingPointError(
                f"{what} (on_nonfinite={self.on_nonfinite!r}); nothing after it is saved: {kept}"
            )
        if seen[_SKIPPED] > self.warned_skips:
            self.warned_skips = int(seen[_SKIPPED])
            logging.warning(
                "discarded the non-finite updates of %d step(s) so far, the latest at step %d "
                "(on_nonfinite='skip_step')",
                self.warned_skips,
                seen[_LAST_SKIPPED],
            )


# ----------------------------------------------------------------------------- preemption


class _Preemption:
    """Whether to stop after the current step because of SIGTERM.

    One process: a SIGTERM handler (installed while the loop runs, in the main thread) sets a
    flag. Several processes: ``jax.distributed`` already catches SIGTERM on every process and
    agrees on a step (the maximum step reached + 1) at which ``reached_preemption_sync_point``
    returns True on all of them, without a collective per step.
    """

    def __init__(self):
        self.received = False
        self.multi_process = jax.process_count() > 1
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __enter__(self) -> _Preemption:
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def requested(self, step: int) -> bool:
        if not self.multi_process:
            return self.received
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM is not caught
            self.multi_process = False
            return False


# ----------------------------------------------------------------------------- the loop


def _config_check(
    config: Mapping[str, Any] | None, num_steps: int, directory: str
) -> Callable[[int, dict[str, Any]], None]:
    """``check(step, saved config)`` for ``CheckpointManager.restore_newest``: raises
    ``ConfigError`` listing the fields that differ (except ``RESUMABLE_FIELDS``), and warns
    when a changed ``num_steps`` moves a decaying learning-rate schedule."""

    def check(step: int, saved: dict[str, Any]) -> None:
        if config is None:
            return
        if config.get("resume_policy") != "ignore_config":
            differences = config_differences(saved, config)
            if differences:
                raise ConfigError(
                    f"config differs from the one checkpoint {step} in {directory} was saved "
                    f"with: {describe_differences(differences)}; rerun with those values, use "
                    "another workdir, or pass --config.resume_policy=ignore_config to resume "
                    "anyway"
                )
        schedules = schedules_depending_on_num_steps(config)
        if saved.get("num_steps", num_steps) != num_steps and schedules:
            logging.warning(
                "num_steps changed from %s to %d since checkpoint %d: %s decays over num_steps, "
                "so the learning rate from here on follows the new schedule (not what a "
                "%d-step run from scratch would have seen)",
                saved.get("num_steps"),
                num_steps,
                step,
                ", ".join(schedules),
                num_steps,
            )

    return check


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
    on_nonfinite: str = "stop",
    description: str = "train",
) -> tuple[Any, dict[str, float]]:
    """Runs ``train_step`` until ``state.step == num_steps``.

    At the end the state is saved first, then exported, then evaluated, so a failing
    evaluation never loses the trained state (a finished run that is run again restores,
    exports and evaluates). See the module docstring for failures.

    Args:
      state, state_shardings: the initial state and its shardings (the restore target). The
        loop reads ``state.step`` once, after restoring, and counts steps on the host.
      train_step: ``(state, batch) -> (state, metrics)``; ``batch`` is one stream's global
        batch, or a dict of global batches by stream name.
      batches: one stream or a dict of named streams; each yields this process's rows of each
        global batch, and its ``state`` (position) is checkpointed under its name.
      mesh: batches are assembled into global arrays sharded over ``('data', 'fsdp')``.
      workdir: metrics, TensorBoard files and ``checkpoints/`` go here; the loop holds its
        lock (``WORKDIR/run.lock``) while it runs.
      num_steps: total steps (a resumed run continues to the same total).
      evaluate: ``state -> (metrics, samples)``, every ``eval_every`` steps and at the end;
        metrics are logged as ``eval/<name>`` (names with a ``/`` as they are), samples as
        texts.
      export: ``state -> …``, called once at the end (e.g. write a Hugging Face directory).
      config: stored in every checkpoint (JSON) and compared with the checkpoint's on resume
        (see ``irl_jax.config.config_differences``) unless its ``resume_policy`` is
        ``"ignore_config"``.
      log_every: train metrics are averaged over this many steps, then fetched and written.
      checkpoint_every: save every this many steps (and at the end); 0 saves at the end only.
      keep_checkpoints: newest checkpoints kept.
      resume: continue from the newest checkpoint in ``workdir`` if there is one.
      on_nonfinite: ``"stop"`` or ``"skip_step"`` (see the module docstring).

    Returns:
      ``(final state, the last evaluation's metrics)``.

    Raises:
      FloatingPointError: a non-finite loss or gradient norm (or state); nothing past the
        newest good checkpoint is saved.
      Preempted: SIGTERM; the state was saved at the step the loop stopped.
      ConfigError: the checkpoint's config differs, or ``num_steps`` is below its step.
      irl_jax.workdir.WorkdirLocked: another live process holds ``workdir``.
      irl_jax.checkpoint.CheckpointError: there are checkpoints and none can be read.
    """
    streams = _Streams(batches, mesh)
    final: dict[str, float] = {}
    writer = None
    with WorkdirLock(workdir):
        checkpoints = CheckpointManager(workdir, max_to_keep=keep_checkpoints)
        faults = _Faults(mesh, on_nonfinite, checkpoints)
        try:
            with _Preemption() as preemption:
                restored = None
                if resume:
                    check = _config_check(config, num_steps, checkpoints.directory)
                    restored = checkpoints.restore_newest(state, state_shardings, check)
                if restored is not None:
                    _, state, data_state, _ = restored
                    streams.restore(data_state.get("streams", {}))
                step = int(state.step)
                if restored is not None:
                    logging.info("resumed from %s at step %d", checkpoints.directory, step)
                if step > num_steps:
                    raise ConfigError(
                        f"config.num_steps: {num_steps} is below step {step} of the newest "
                        f"checkpoint in {checkpoints.directory}"
                    )
                writer = MetricsWriter(
                    workdir,
                    resume_step=step,
                    reevaluate=step == num_steps and evaluate is not None,
                )

                def save(step: int) -> None:
                    faults.check(step, state)
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
                preempted = False
                while step < num_steps:
                    state, metrics = train_step(state, next(streams))
                    step += 1
                    faults.fold(metrics, step)
                    window.append(metrics)
                    if len(window) > _MAX_IN_FLIGHT:
                        # Bound the steps dispatched ahead of the host: a deep queue of steps
                        # can starve XLA:CPU's collective rendezvous on many (fake) devices.
                        jax.block_until_ready(window[-_MAX_IN_FLIGHT - 1])
                    bar.update(1)
                    preempted = preemption.requested(step)
                    if step % log_every == 0 or step == num_steps or preempted:
                        faults.check(step)
                        averaged = _mean_metrics(window)
                        elapsed = time.perf_counter() - window_start
                        averaged["steps_per_second"] = len(window) / max(elapsed, 1e-9)
                        writer.write(step, _prefixed("train", averaged))
                        if math.isfinite(averaged.get("loss", 0.0)):
                            bar.set_postfix(loss=f"{averaged['loss']:.4f}")
                        window, window_start = [], time.perf_counter()
                    if preempted:
                        break
                    if checkpoint_every and step % checkpoint_every == 0 and step != num_steps:
                        save(step)
                    if eval_every and step % eval_every == 0 and step != num_steps:
                        faults.check(step)
                        run_evaluation(step)
                bar.close()
                if checkpoints.latest_step() != step:
                    save(step)
                checkpoints.wait()
                if preempted or preemption.received:
                    logging.warning("SIGTERM: saved step %d; rerun to resume", step)
                    raise Preempted(step, checkpoints.directory)
            # SIGTERM is no longer caught: the state is saved, a rerun exports and evaluates.
            if export is not None:
                export(state)
            run_evaluation(step)
        finally:
            checkpoints.close()
            if writer is not None:
                writer.close()
    return state, final
