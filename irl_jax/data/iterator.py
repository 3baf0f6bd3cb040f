"""Fixed-shape batches over tokenized arrays, with an exactly resumable position.

A tokenized dataset is a ``dict[str, np.ndarray]`` whose arrays share their first dimension
(rows). ``BatchIterator`` yields global batches of ``batch_size`` rows in a seeded order that is
reshuffled every epoch; in a multi-process run each process yields only its contiguous slice of
the global batch (``batch_size / process_count`` rows), which the train loop assembles into one
global array. Its ``state`` (epoch, batch index) goes into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np

Arrays = Mapping[str, np.ndarray]


def num_rows(arrays: Arrays) -> int:
    """Row count of a tokenized dataset; all arrays must agree."""
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"tokenized arrays disagree on their row count: {counts}")
    return next(iter(counts.values()))


class BatchIterator:
    """Infinite iterator of shuffled fixed-shape batches; ``state`` makes resume exact.

    Args:
      arrays: tokenized dataset (equal first dimensions).
      batch_size: global batch size (rows per step across all processes).
      seed: shuffling seed; epoch e uses ``default_rng([seed, e])``.
      shuffle: reshuffle every epoch (else sequential order).
      process_index, process_count: this process's slice of each global batch (default: JAX's).
      prompt_buckets: widths for left-padded ``prompt_ids``/``prompt_mask`` columns: each batch
        keeps only its last ``prompt_width(...)`` columns, the smallest bucket that holds the
        longest prompt of the *global* batch (so every process picks the same width without
        communicating); the dropped columns are padding in every row.

    The remainder of each epoch (``rows % batch_size``) is skipped, so every batch is full.
    """

    def __init__(
        self,
        arrays: Arrays,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        prompt_buckets: Sequence[int] = (),
    ):
        self._arrays = dict(arrays)
        self._buckets = tuple(sorted(prompt_buckets)) if "prompt_mask" in self._arrays else ()
        self._rows = num_rows(self._arrays)
        self._process_index = jax.process_index() if process_index is None else process_index
        self._process_count = jax.process_count() if process_count is None else process_count
        if batch_size <= 0 or batch_size % self._process_count:
            raise ValueError(
                f"batch_size={batch_size} must be positive and divisible by the "
                f"{self._process_count} processes"
            )
        if self._rows < batch_size:
            raise ValueError(
                f"the dataset has {self._rows} rows, fewer than batch_size={batch_size}"
            )
        self.batch_size = batch_size
        self.batches_per_epoch = self._rows // batch_size
        self._seed, self._shuffle = seed, shuffle
        self._epoch, self._index = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self._shuffle:
            return np.arange(self._rows)
        return np.random.default_rng([self._seed, epoch]).permutation(self._rows)

    @property
    def state(self) -> dict[str, int]:
        """Position of the next batch: ``{"epoch": e, "index": i}``."""
        return {"epoch": self._epoch, "index": self._index}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continues from a ``state`` saved earlier (the next batch is the one not yet seen)."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if not 0 <= index < self.batches_per_epoch:
            raise ValueError(f"iterator state {dict(state)} is out of range for this dataset")
        self._epoch, self._index = epoch, index
        self._order = self._epoch_order(epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        local = self.batch_size // self._process_count
        first = self._index * self.batch_size
        rows = self._order[first + self._process_index * local :][:local]
        width = None
        if self._buckets:
            lengths = self._arrays["prompt_mask"][self._order[first : first + self.batch_size]]
            width = prompt_width(int(lengths.sum(axis=-1).max()), self._buckets)
        self._index += 1
        if self._index == self.batches_per_epoch:
            self._epoch, self._index = self._epoch + 1, 0
            self._order = self._epoch_order(self._epoch)
        batch = {name: array[rows] for name, array in self._arrays.items()}
        return batch if width is None else trim_prompts(batch, width)


def prompt_width(longest: int, buckets: Sequence[int]) -> int | None:
    """The smallest of ``buckets`` (ascending) that holds ``longest`` prompt tokens; ``None``
    (keep the full width) when none does."""
    return next((b for b in buckets if b >= longest), None)


def trim_prompts(batch: Mapping[str, np.ndarray], width: int | None) -> dict[str, np.ndarray]:
    """``batch`` with left-padded ``prompt_ids``/``prompt_mask`` cut to their last ``width``
    columns (the caller guarantees the cut columns are padding); other arrays unchanged."""
    out = dict(batch)
    if width is not None:
        for name in ("prompt_ids", "prompt_mask"):
            if width < out[name].shape[1]:
                out[name] = out[name][:, -width:]
    return out


def eval_batches(arrays: Arrays, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Every row once, in order, as full batches; the last batch is padded with all-zero rows.

    Zero rows have zero masks, so per-token sums over them are 0: evaluation functions should
    return sums and counts, and the caller divides totals.
    """
    rows = num_rows(arrays)
    batches = []
    for start in range(0, rows, batch_size):
        batch = {name: array[start : start + batch_size] for name, array in arrays.items()}
        short = batch_size - (min(rows, start + batch_size) - start)
        if short:
            batch = {
                name: np.concatenate([a, np.zeros((short, *a.shape[1:]), a.dtype)])
                for name, a in batch.items()
            }
        batches.append(batch)
    return batches
