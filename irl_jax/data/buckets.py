"""Length buckets: fewer padding tokens while every batch keeps a fixed shape.

Rows of a tokenized dataset are grouped by the smallest configured length that holds them and
each group's time axis is trimmed to it; a trainer then draws each batch from one bucket, so
there are only ``len(bucket_lengths)`` shapes to compile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_by_length(
    arrays: dict[str, np.ndarray], bucket_lengths: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """Groups rows by the smallest bucket length that holds them, trimming the padding.

    Args:
      arrays: output of ``tokenize_records`` (time axis last; ``prompt_*`` left-padded).
      bucket_lengths: a few lengths; the largest must hold the longest row.

    Returns:
      ``{length: arrays}`` for each non-empty bucket; each bucket keeps fixed shapes (its time
      axis is ``length``) and the rows' original order.
    """
    masks = [v for k, v in arrays.items() if k.endswith(("attention_mask", "prompt_mask"))]
    lengths = np.max([m.reshape(len(m), -1, m.shape[-1]).sum(-1).max(-1) for m in masks], axis=0)
    buckets = sorted(set(bucket_lengths))
    if lengths.size and lengths.max() > buckets[-1]:
        raise ValueError(f"a row of {lengths.max()} tokens exceeds every bucket {buckets}")
    which = np.searchsorted(np.asarray(buckets), lengths)
    out = {}
    for b, length in enumerate(buckets):
        rows = np.flatnonzero(which == b)
        if rows.size:
            out[length] = {k: _trim(k, v[rows], length) for k, v in arrays.items()}
    return out


def _trim(name: str, array: np.ndarray, length: int) -> np.ndarray:
    if array.ndim < 2 or name in ("margin", "label"):
        return array
    return array[..., -length:] if name.startswith("prompt_") else array[..., :length]
