"""Data: local files or synthetic tasks -> validated rows -> fixed-shape numpy arrays.

``load_and_tokenize`` is the one entry point: ``load_rows`` (files, saved datasets, in-memory
datasets) -> ``detect_format`` -> ``validate_rows`` (every row checked; a ``DataError`` names the
source, row and field) -> ``tokenize_records`` (chat templates, truncation, masks, padding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from irl_jax.data.buckets import bucket_by_length
from irl_jax.data.formats import (
    FORMATS,
    KINDS,
    DataError,
    Example,
    Format,
    Record,
    check_kind,
    detect_format,
)
from irl_jax.data.loading import RawRows, load_rows
from irl_jax.data.stats import TokenizeStats
from irl_jax.data.tokenize import tokenize_records
from irl_jax.data.validation import validate_rows


def load_and_tokenize(
    source: Any,
    tokenizer: Any,
    kind: str,
    max_length: int,
    max_prompt_length: int | None = None,
    column_map: Mapping[str, str] | None = None,
    *,
    format: str | None = None,
    split: str = "train",
    margin_from_scores: bool = False,
    step_separator: str = "\n",
    max_errors: int = 5,
    max_unk_rate: float | None = 0.01,
    drop_identical: bool = True,
) -> tuple[dict[str, np.ndarray], TokenizeStats]:
    """Loads, validates and tokenizes a dataset into fixed-shape numpy arrays.

    Args:
      source: a ``.json``/``.jsonl``/``.parquet``/``.csv`` path, a ``save_to_disk`` directory, a
        ``datasets.Dataset``/``DatasetDict`` (e.g. from ``irl_jax.tasks``) or a list of row dicts.
      tokenizer: a ``transformers`` tokenizer.
      kind: ``"sft" | "preference" | "ranking" | "unpaired" | "prompt" | "stepwise"``.
      max_length: T, the length of every (padded) sequence.
      max_prompt_length: keep at most the last this many prompt tokens; for ``kind="prompt"``
        the padded prompt length P (default ``max_length``).
      column_map: renames source columns first, e.g. ``{"question": "prompt"}``.
      format: force a format (``irl_jax.data.FORMATS``) instead of detecting it.
      split: the split of a ``DatasetDict``.
      margin_from_scores: preference ``margin = chosen_score - rejected_score``.
      step_separator: text closing each step of stepwise rows.
      max_errors: how many invalid rows an error lists.
      max_unk_rate: the largest fraction of text tokens that may be the tokenizer's unknown
        token (``None``: no limit); more means the tokenizer does not fit the text.
      drop_identical: drop (and count in ``stats.rows_identical``) preference pairs / rankings
        whose sequences are not all distinct after truncation (``chosen == rejected``).

    Returns:
      ``(arrays, stats)``; the arrays per kind are listed in ``tokenize_records``.

    Raises:
      DataError: unreadable source, unknown format, an invalid row (naming row and field), or
        text that is mostly unknown tokens under ``tokenizer``.
    """
    raw = load_rows(source, column_map, split=split)
    fmt = detect_format(raw.columns, format, source=raw.source)
    records = validate_rows(
        raw, fmt, kind, margin_from_scores=margin_from_scores, max_errors=max_errors
    )
    return tokenize_records(
        records,
        tokenizer,
        kind,
        max_length,
        max_prompt_length,
        source=raw.source,
        step_separator=step_separator,
        max_unk_rate=max_unk_rate,
        drop_identical=drop_identical,
    )


__all__ = [
    "FORMATS",
    "KINDS",
    "DataError",
    "Example",
    "Format",
    "RawRows",
    "Record",
    "TokenizeStats",
    "bucket_by_length",
    "check_kind",
    "detect_format",
    "load_and_tokenize",
    "load_rows",
    "tokenize_records",
    "validate_rows",
]
