"""Orbax checkpoints of a run: the train state, the data-stream positions and the config.

The only module that imports orbax. Checkpoints of the train state, the data-iterator position
and the config live in ``WORKDIR/checkpoints/<step>``; writes are asynchronous and atomic (a
crash mid-save leaves the previous checkpoint intact); the newest ``max_to_keep`` are kept.
Restoring takes the *target* shardings, so a run resumes onto the current mesh (which may differ
from the one that saved it); ``restore_newest`` falls back to an older checkpoint when the
newest cannot be read. (The run directory's lock and whole-or-nothing outputs:
``irl_jax.workdir``.)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

UNREADABLE = "unreadable_checkpoints"  # WORKDIR/<this>/<step>: checkpoints set aside


class CheckpointError(RuntimeError):
    """No checkpoint of a run directory can be read."""


def everywhere(ok: bool) -> bool:
    """``ok`` on every process (one small collective in a multi-process run)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _drop_closed_loop_reports() -> None:
    """When a restore fails, tensorstore reads still in flight call back into orbax's closed
    asyncio loop, and each callback would print a ``RuntimeError: Event loop is closed``
    traceback (hundreds of lines that bury the one-line warning). Drops exactly those reports
    (installed before the first restore, for the rest of the process); every other unraisable
    exception is reported as before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:limit]}"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys → their raw ``uint32`` key data (what orbax can store)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: Any, shardings: Any) -> Any:
    def spec(x, sharding):
        if _is_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(spec, tree, shardings)


def _data_to_keys(restored: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x
        ),
        restored,
        like,
    )


class CheckpointManager:
    """Saves and restores ``(state, data_state, config)`` under ``WORKDIR/checkpoints``.

    Args:
      workdir: the run directory.
      max_to_keep: newest checkpoints kept on disk.
      async_save: write in a background thread (call ``wait`` / ``close`` before exit).
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> bool:
        """Starts saving ``state`` at ``step`` (returns at once when asynchronous)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_keys_to_data(state)),
            data=ocp.args.JsonSave(dict(data_state or {})),
            config=ocp.args.JsonSave(json.loads(json.dumps(dict(config or {}), default=str))),
        )
        return self._manager.save(step, args=args, force=True)

    def restore(
        self, like: Any, shardings: Any, step: int | None = None
    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Restores the checkpoint at ``step`` (default: latest) onto ``shardings``.

        Args:
          like: a state (arrays or ``ShapeDtypeStruct``) with the target structure and dtypes.
          shardings: the matching tree of target ``NamedSharding``.
          step: which checkpoint; ``None`` for the latest.

        Returns:
          ``(state, data_state, config)``.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(like, shardings)),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return _data_to_keys(restored.state, like), dict(restored.data), dict(restored.config)

    def read_config(self, step: int | None = None) -> dict[str, Any]:
        """The config saved with the checkpoint at ``step`` (default: latest)."""
        step = self.latest_step() if step is None else step
        args = ocp.args.Composite(config=ocp.args.JsonRestore())
        return dict(self._manager.restore(step, args=args).config)

    def restore_newest(
        self,
        like: Any,
        shardings: Any,
        check: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> tuple[int, Any, dict[str, Any], dict[str, Any]] | None:
        """Restores the newest checkpoint that can be read, newest first.

        A checkpoint that cannot be read (a truncated or corrupt file) is skipped with a
        warning; when an older one restores, the unreadable newer ones are moved to
        ``WORKDIR/unreadable_checkpoints/<step>`` (kept for inspection; the run saves those
        steps again). When none can be read, nothing is moved.

        Args:
          like, shardings: the restore target (see ``restore``).
          check: ``(step, saved config) -> None``, called before a checkpoint is restored;
            what it raises (a config that does not match) propagates.

        Returns:
          ``(step, state, data_state, config)``, or ``None`` when there is no checkpoint.

        Raises:
          CheckpointError: there are checkpoints and none can be read.
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            restored, error = None, None
            try:
                config = self.read_config(step)
            except Exception as e:  # noqa: BLE001 (any reader error: the next one is tried)
                config, error = None, e
            if config is not None:
                if check is not None:
                    check(step, config)
                _drop_closed_loop_reports()
                try:
                    restored = self.restore(like, shardings, step)
                except Exception as e:  # noqa: BLE001
                    error = e
            if not everywhere(restored is not None):
                message = _first_line(error) if restored is None else "on another process"
                logging.warning(
                    "checkpoint %d in %s cannot be read: %s", step, self.directory, message
                )
                failures.append((step, message))
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
                logging.warning(
                    "resumed from checkpoint %d instead of the unreadable newer checkpoint(s) %s, "
                    "which were moved to %s",
                    step,
                    [s for s, _ in failures],
                    os.path.join(os.path.dirname(self.directory), UNREADABLE),
                )
            return (step, *restored)
        if failures:
            listed = "; ".join(f"step {s}: {m}" for s, m in failures)
            raise CheckpointError(f"no checkpoint in {self.directory} can be read ({listed})")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves the checkpoints of ``steps`` to ``WORKDIR/unreadable_checkpoints``."""
        if jax.process_index() == 0:
            target = os.path.join(os.path.dirname(self.directory), UNREADABLE)
            os.makedirs(target, exist_ok=True)
            for step in steps:
                name = str(step)
                while os.path.exists(os.path.join(target, name)):
                    name += "+"
                os.rename(os.path.join(self.directory, str(step)), os.path.join(target, name))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("irl_jax.checkpoint.set_aside")
        self._manager.reload()

    def read(self, step: int | None = None) -> Any:
        """The state saved at ``step`` (default: latest) as host numpy arrays, without a target
        structure (typed PRNG keys come back as their raw key data): for inspecting and
        comparing checkpoints."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        metadata = self._manager.item_metadata(step).state
        target = jax.tree.map(
            lambda m: np.zeros(m.shape, m.dtype), metadata, is_leaf=lambda m: hasattr(m, "shape")
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return jax.tree.map(np.asarray, restored.state)

    def read_data(self, step: int | None = None) -> dict[str, Any]:
        """The data-stream positions saved at ``step`` (default: latest)."""
        step = self.latest_step() if step is None else step
        args = ocp.args.Composite(data=ocp.args.JsonRestore())
        return dict(self._manager.restore(step, args=args).data)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
