"""Rows from local files, saved ``datasets`` directories or in-memory datasets (offline).

Files are read by ``datasets`` (``.json``/``.jsonl`` with the ``json`` builder, ``.parquet``,
``.csv``), directories with ``datasets.load_from_disk``. Whatever goes wrong while reading (a
missing file, invalid JSON, a corrupt Parquet file, an unsupported extension, an empty file) is
re-raised as a ``DataError`` that names the source, never as a traceback from inside
``datasets`` or ``pyarrow``. Row numbers in later errors are 0-based data rows (a CSV header is
not a row; JSONL blank lines are skipped).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from irl_jax.data.formats import DataError

IN_MEMORY = "<in-memory dataset>"
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclasses.dataclass(frozen=True)
class RawRows:
    """Untyped rows as read, with their columns already renamed by any ``column_map``.

    Attributes:
      source: the file or directory path as given, or ``"<in-memory dataset>"``.
      columns: column names.
      rows: one ``{column: value}`` dict per row (Python values: str, list, dict, bool, ...).
      original: ``{new name: name in the source}`` for the columns ``column_map`` renamed.
    """

    source: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    original: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _read_error(source: str, what: str, error: BaseException) -> DataError:
    cause = _innermost(error)
    detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return DataError(f"{source}: cannot be read as {what} ({detail})", source=source)


def _select_split(dataset: Any, split: str, source: str) -> Any:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(
                f"{source}: has no split {split!r} (splits: {sorted(dataset)})", source=source
            )
        return dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"{source}: expected a datasets.Dataset, DatasetDict, path or list of row dicts, got "
            f"{type(dataset).__name__}",
            source=source,
        )
    return dataset


def _read_path(path: str, split: str, cache_dir: str | None) -> Any:
    import datasets

    if not os.path.exists(path):
        raise DataError(f"{path}: file or directory not found", source=path)
    if os.path.isdir(path):
        try:
            dataset = datasets.load_from_disk(path)
        except Exception as error:
            raise _read_error(path, "a directory saved by datasets.save_to_disk", error) from None
        return _select_split(dataset, split, path)
    extension = os.path.splitext(path)[1].lower()
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: the file is empty", source=path)
    builder = BUILDERS.get(extension)
    if builder is None:
        raise DataError(
            f"{path}: unsupported file extension {extension!r}; expected one of "
            f"{sorted(BUILDERS)} or a directory saved by datasets.save_to_disk",
            source=path,
        )
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
    except Exception as error:
        problem = _json_problem(path, extension) if builder == "json" else None
        raise (problem or _read_error(path, extension[1:].upper(), error)) from None


def _json_problem(path: str, extension: str) -> DataError | None:
    """Pinpoints why ``datasets`` could not read a JSON/JSONL file (only on that error path)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        return DataError(f"{path}: is not UTF-8 text ({error})", source=path)
    if extension == ".jsonl":
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        for row, (number, line) in enumerate(lines):
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                return DataError(
                    f"{path} row {row} (line {number}): invalid JSON ({error.msg} at column "
                    f"{error.colno})",
                    source=path,
                    row=row,
                )
        return None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        return DataError(
            f"{path} line {error.lineno}: invalid JSON ({error.msg} at column {error.colno})",
            source=path,
        )
    if isinstance(rows, list) and not rows:
        return DataError(f"{path}: the file holds no rows", source=path)
    return None


def _rename(
    columns: list[str], rows: list[dict[str, Any]], column_map: Mapping[str, str], source: str
) -> tuple[list[str], list[dict[str, Any]]]:
    for old, new in column_map.items():
        if old not in columns:
            raise DataError(
                f"{source}: column_map renames column {old!r}, which is not in the data "
                f"(columns: {sorted(columns)})",
                source=source,
                field=old,
            )
        if new in columns and new not in column_map:
            raise DataError(
                f"{source}: column_map renames {old!r} to {new!r}, which already exists",
                source=source,
                field=new,
            )
    renamed = [column_map.get(name, name) for name in columns]
    rows = [{column_map.get(key, key): value for key, value in row.items()} for row in rows]
    return renamed, rows


def load_rows(
    source: Any,
    column_map: Mapping[str, str] | None = None,
    *,
    split: str = "train",
    cache_dir: str | None = None,
) -> RawRows:
    """Reads every row of ``source``.

    Args:
      source: a path to a ``.json``/``.jsonl``/``.parquet``/``.csv`` file or to a directory
        written by ``save_to_disk``; a ``datasets.Dataset`` / ``DatasetDict`` (e.g. a synthetic
        task's output); or a sequence of row dicts.
      column_map: renames source columns, ``{"question": "prompt", "answer": "completion"}``.
      split: the split to use when the source is a ``DatasetDict``.
      cache_dir: ``datasets`` cache directory for files (default: its own default).

    Returns:
      ``RawRows``.

    Raises:
      DataError: the source cannot be read, is empty, or ``column_map`` names a missing column.
    """
    column_map = dict(column_map or {})
    name, columns, rows = _read(source, split, cache_dir)
    if not rows:
        raise DataError(f"{name}: the dataset is empty (no rows)", source=name)
    columns, rows = _rename(columns, rows, column_map, name)
    original = {new: old for old, new in column_map.items()}
    return RawRows(name, tuple(columns), rows, original)


def _read(source: Any, split: str, cache_dir: str | None) -> tuple[str, list[str], list[dict]]:
    """``(source name, columns, rows)`` of any supported source."""
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        dataset = _read_path(name, split, cache_dir)
    elif isinstance(source, Sequence) and not isinstance(source, str | bytes):
        bad = next((i for i, row in enumerate(source) if not isinstance(row, Mapping)), None)
        if bad is not None:
            raise DataError(
                f"{IN_MEMORY} row {bad}: expected a dict of columns, got "
                f"{type(source[bad]).__name__}",
                source=IN_MEMORY,
                row=bad,
            )
        rows = [dict(row) for row in source]
        return IN_MEMORY, list(dict.fromkeys(key for row in rows for key in row)), rows
    else:
        name, dataset = IN_MEMORY, _select_split(source, split, IN_MEMORY)
    try:
        return name, list(dataset.column_names), dataset.to_list()
    except Exception as error:
        raise _read_error(name, "rows", error) from None
