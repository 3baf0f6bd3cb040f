"""One per-process batch map for evaluation: a jitted function over every row of host arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from irl_jax import sharding as sharding_lib
from irl_jax.data.iterator import eval_batches


def map_rows(
    fn: Callable[[Any, dict[str, jax.Array]], Any],
    params: Any,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> Any:
    """``fn(params, batch)`` over every row in sharded batches: each output leaf (per-row values
    ``[B, ...]``: an array, or a dict of arrays) concatenated ``[N, ...]`` on the host.

    Every process feeds its slice of each global batch; ``fn`` should return replicated outputs
    (``out_shardings=replicated``). The zero rows padding the last batch are dropped. Sums over
    rows (token counts, summed losses) are then plain ``np.sum`` of the outputs.
    """
    data = sharding_lib.batch_sharding(mesh)
    local = batch_size // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    outputs = [
        jax.device_get(
            fn(params, sharding_lib.global_batch({k: v[rows] for k, v in batch.items()}, data))
        )
        for batch in eval_batches(arrays, batch_size)
    ]
    count = len(next(iter(arrays.values())))
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:count], *outputs)
