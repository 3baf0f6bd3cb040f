"""Orbax checkpoints of the train state, the data-iterator position and the config.

The only module that imports orbax. Checkpoints live in ``WORKDIR/checkpoints/<step>``; writes
are asynchronous and atomic (a crash mid-save leaves the previous checkpoint intact); the newest
``max_to_keep`` are kept. Restoring takes the *target* shardings, so a run resumes onto the
current mesh (which may differ from the one that saved it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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
