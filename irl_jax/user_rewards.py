"""Reward functions that a user names in the config, as one reward source.

``config.reward.source = "functions"`` with ``reward.functions = "my_rewards:exact_match,
my_rewards:format_ok"`` (a module on ``PYTHONPATH`` or a ``.py`` file path, then ``:`` and the
function's name) and ``reward.weights = "1.0,0.2"`` (default: all 1) scores every sample with

    r(x, y) = Σ_k w_k r_k(x, y)   over the functions k whose r_k(x, y) is not None

(TRL's ``reward_funcs`` / ``reward_weights`` convention). Two kinds of function:

* **Host functions** ``f(prompts: list[str], responses: list[str], **row_columns) ->
  list[float | None]``, on decoded text (special tokens skipped). ``row_columns`` are the other
  columns of the prompt's data row (e.g. ``answer=[...]``, one value per row), as TRL passes
  them (only those the function names, unless it takes ``**kwargs``). Each sampled prompt is
  found in ``data.path`` / ``data.eval_path`` by its token ids, so every algorithm and the
  evaluation get the right row without carrying row indices through their jitted steps. All
  host functions of a batch run in one ``jax.pure_callback``, each with ``reward.timeout``
  seconds per call, in-process or split over a process pool of ``reward.num_workers`` (for slow
  checkers such as unit tests). ``None`` drops that function from the row's sum; a row where
  every function returns ``None`` is an error.
* **Jittable functions** ``f(prompt_ids, prompt_mask, response_ids, response_mask) -> [B]``
  (recognized by those parameter names; ``irl_jax.rewards``' interface), traced into the step.

The source is ``irl_jax.rewards.UserRewards`` (a leafless pytree); this module holds the host
side only (no JAX import: pool workers start fast). A function that raises, returns the wrong
number of values or a non-number stops the run with a ``UserRewardError`` naming the function
and the row (its data file row, when known), raised on the host once the step has run
(``checked``), before its state can be saved. Each function's mean is logged as
``train/reward/<name>_mean`` (``irl_jax.rollout.part_means``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import math
import multiprocessing
import numbers
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

JITTABLE_PARAMETERS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask")


class UserRewardError(ValueError):
    """A user reward function that cannot be loaded, or that misbehaved on a batch."""


# ----------------------------------------------------------------------------- loading


def parse_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


@functools.cache
def load_function(spec: str) -> Callable[..., Any]:
    """The function named by ``"module.path:name"`` or ``"path/to/file.py:name"``.

    Cached per process, so a pool worker imports a user module once.

    Raises:
      UserRewardError: a malformed spec, a module that cannot be imported, a missing name or a
        name that is not callable.
    """
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise UserRewardError(f"reward function {spec!r}: expected 'module:function'")
    try:
        module = _import(module_name)
    except Exception as e:
        raise UserRewardError(
            f"reward function {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); "
            "a module must be on PYTHONPATH, or give a .py file path"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserRewardError(f"reward function {spec!r}: {module_name!r} has no function {name!r}")
    return fn


def _import(module_name: str) -> Any:
    """A module by name, or a ``.py`` file as a module of its own (under a name derived from
    its path, so that two files named alike do not clash)."""
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = os.path.abspath(module_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    unique = f"irl_jax_user_rewards_{abs(hash(path))}"
    if unique not in sys.modules:
        spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[unique] = module
    return sys.modules[unique]


def is_jittable(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes ``(prompt_ids, prompt_mask, response_ids, response_mask)``."""
    names = tuple(inspect.signature(fn).parameters)[: len(JITTABLE_PARAMETERS)]
    return names == JITTABLE_PARAMETERS


def function_names(specs: Sequence[str]) -> tuple[str, ...]:
    """Metric names: each function's own name, ``module.name`` where two share a name."""
    short = [spec.rpartition(":")[2] for spec in specs]
    return tuple(
        name if short.count(name) == 1 else spec.replace(":", ".").replace("/", ".")
        for name, spec in zip(short, specs)
    )


def parse_weights(weights: str, count: int) -> tuple[float, ...]:
    """``reward.weights``: one float per function, or all 1 when empty."""
    if not weights.strip():
        return (1.0,) * count
    try:
        values = tuple(float(w) for w in parse_list(weights))
    except ValueError:
        raise UserRewardError(
            f"reward weights {weights!r}: expected comma-separated numbers"
        ) from None
    if len(values) != count:
        raise UserRewardError(f"{len(values)} reward weights for {count} reward functions")
    return values


# ----------------------------------------------------------------------------- row columns


@dataclasses.dataclass(frozen=True)
class RowColumns:
    """The data rows' extra columns, found by the prompt's token ids.

    Attributes:
      columns: the column names passed to host functions (every column but ``prompt``).
      rows: ``{prompt token ids as bytes: (where, {column: value})}`` with ``where`` the row's
        description for error messages (``"row 17 of data.jsonl"``).
    """

    columns: tuple[str, ...] = ()
    rows: Mapping[bytes, tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def lookup(self, prompt_ids: np.ndarray, prompt_mask: np.ndarray):
        """``(where [B], {column: [B] values})`` (``None`` for prompts not in the data)."""
        found = [self.rows.get(prompt_key(i, m)) for i, m in zip(prompt_ids, prompt_mask)]
        where = [f[0] if f else None for f in found]
        columns = {c: [f[1].get(c) if f else None for f in found] for c in self.columns}
        return where, columns


def prompt_key(prompt_ids: np.ndarray, prompt_mask: np.ndarray) -> bytes:
    """A prompt's identity: its real token ids (padding removed)."""
    return np.asarray(prompt_ids)[np.asarray(prompt_mask) > 0].astype(np.int64).tobytes()


def row_columns(
    sources: Sequence[Any],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None = None,
    column_map: Mapping[str, str] | None = None,
) -> RowColumns:
    """The extra columns of each data file's rows, keyed by their tokenized prompts (tokenized
    exactly as ``irl_jax.data.load_and_tokenize(..., kind="prompt")`` does for training).

    Raises:
      UserRewardError: two rows share a prompt but not their other columns (a host function
        could not tell which row a sample answers).
    """
    from irl_jax.data import load_and_tokenize, load_rows

    rows: dict[bytes, tuple[str, dict[str, Any]]] = {}
    columns: list[str] = []
    for source in sources:
        raw = load_rows(source, column_map)
        arrays, _ = load_and_tokenize(
            source, tokenizer, "prompt", max_length, max_prompt_length, column_map
        )
        if len(arrays["prompt_ids"]) != len(raw.rows):
            raise UserRewardError(f"{raw.source}: rows were dropped; cannot match row columns")
        columns += [c for c in raw.columns if c != "prompt" and c not in columns]
        for index, (row, ids, mask) in enumerate(
            zip(raw.rows, arrays["prompt_ids"], arrays["prompt_mask"])
        ):
            extra = {c: v for c, v in row.items() if c != "prompt"}
            where = f"row {index} of {raw.source}"
            key = prompt_key(ids, mask)
            if key in rows and rows[key][1] != extra:
                raise UserRewardError(
                    f"{where} and {rows[key][0]} have the same prompt but different columns "
                    f"({extra} vs {rows[key][1]}): make prompts unique"
                )
            rows.setdefault(key, (where, extra))
    return RowColumns(tuple(columns), rows)


# ----------------------------------------------------------------------------- host calls


def _call_spec(spec: str, prompts, responses, columns):
    """Calls ``spec`` with the row columns it takes (all of them if it takes ``**kwargs``).
    Also runs in a pool worker: the function is looked up there (a ``.py`` file's module cannot
    be pickled by reference)."""
    fn = load_function(spec)
    parameters = inspect.signature(fn).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        names = {p.name for p in parameters}
        columns = {c: v for c, v in columns.items() if c in names}
    values = fn(prompts, responses, **columns)
    try:
        return list(values)  # a generator or an array, materialized (and picklable)
    except TypeError:
        return values  # not a sequence: _check_values says so


def _check_values(name: str, values: Any, rows: int, where: Callable[[int], str]) -> np.ndarray:
    """A host function's output as ``[rows]`` float64, NaN for ``None``."""
    try:
        values = list(values)
    except TypeError:
        raise UserRewardError(
            f"reward function {name!r} returned {type(values).__name__}, expected a list of "
            f"{rows} floats (or None)"
        ) from None
    if len(values) != rows:
        raise UserRewardError(
            f"reward function {name!r} returned {len(values)} values for {rows} rows "
            f"(one float or None per response)"
        )
    out = np.full(rows, np.nan)
    for row, value in enumerate(values):
        if value is None:
            continue
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise UserRewardError(
                f"reward function {name!r} returned {value!r} ({type(value).__name__}) for "
                f"{where(row)}; expected a finite float, or None to leave the row out"
            )
        out[row] = float(value)
    return out


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every HostFunctions of this process


def raise_pending() -> None:
    """Raises (and clears) the first error that a host function recorded (see
    ``HostFunctions.__call__``); call it once the computation that scored has finished."""
    for host in list(_LIVE):
        failure, host.failure = host.failure, None
        if failure is not None:
            raise failure


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a training step, an evaluation), then — when host reward functions exist — a
    wait for its results and ``raise_pending``: a step whose rewards failed raises before its
    state can be saved or used."""

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        if len(_LIVE):
            import jax

            jax.block_until_ready(out)
            raise_pending()
        return out

    return run


class HostFunctions:
    """The host functions of a ``UserRewards``: the body of its ``jax.pure_callback``, on numpy.

    Compared by identity (it is a static field of the source pytree: one compiled step per
    source object)."""

    def __init__(
        self,
        specs: Sequence[str],
        names: Sequence[str],
        tokenizer: Any,
        table: RowColumns,
        *,
        timeout: float,
        num_workers: int,
        every_row_needs_a_value: bool,
    ):
        self.specs, self.names = tuple(specs), tuple(names)
        self.tokenizer, self.table = tokenizer, table
        self.timeout, self.num_workers = timeout, num_workers
        self.every_row_needs_a_value = every_row_needs_a_value
        self._pool = None  # created on first use
        self.failure: Exception | None = None  # the first error, until ``raise_pending``
        _LIVE.add(self)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> np.ndarray:
        """``[B, K]`` float32 rewards of the K host functions (NaN where one returned None; 0
        on padding rows, which have no prompt tokens and are never passed to a function).

        Never raises: an exception inside a ``pure_callback`` of a program that spans several
        devices aborts the process (the other devices wait in their collectives), so the first
        error is kept in ``self.failure`` and zeros are returned until ``raise_pending``."""
        if self.failure is None:
            try:
                return self.scores(prompt_ids, prompt_mask, response_ids, response_mask)
            except Exception as e:
                self.failure = e
        return np.zeros((len(prompt_ids), len(self.specs)), np.float32)

    def scores(self, prompt_ids, prompt_mask, response_ids, response_mask) -> np.ndarray:
        """``__call__``'s rewards, raising a ``UserRewardError`` for a misbehaving function."""
        prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        response_ids, response_mask = np.asarray(response_ids), np.asarray(response_mask)
        index = np.flatnonzero(prompt_mask.sum(axis=-1) > 0)
        decode = lambda ids, mask: self.tokenizer.decode(ids[mask > 0], skip_special_tokens=True)
        prompts = [decode(prompt_ids[i], prompt_mask[i]) for i in index]
        responses = [decode(response_ids[i], response_mask[i]) for i in index]
        found, columns = self.table.lookup(prompt_ids[index], prompt_mask[index])

        def where(r: int) -> str:
            data = f", {found[r]}" if found[r] else ""
            return f"row {index[r]} of the batch{data}, prompt {prompts[r][-60:]!r}"

        out = np.zeros((len(prompt_ids), len(self.specs)), np.float32)
        for k, (spec, name) in enumerate(zip(self.specs, self.names)):
            values = self._run(spec, name, prompts, responses, columns, where)
            out[index, k] = _check_values(name, values, len(index), where)
        if self.every_row_needs_a_value and len(index):
            empty = np.flatnonzero(np.isnan(out[index]).all(axis=1))
            if len(empty):
                raise UserRewardError(
                    f"every reward function ({', '.join(self.names)}) returned None for "
                    f"{where(empty[0])} ({len(empty)} such rows): a response needs a reward"
                )
        return out

    def _run(self, spec, name, prompts, responses, columns, where) -> Any:
        """One function on the batch (timed, maybe in the pool); an exception is re-raised as a
        ``UserRewardError`` naming the first row that raises on its own."""
        try:
            return self._call(spec, prompts, responses, columns)
        except (_CallTimeout, multiprocessing.TimeoutError):
            self.close()  # a stuck call cannot be cancelled: drop its worker(s)
            raise UserRewardError(
                f"reward function {name!r} took longer than reward.timeout={self.timeout} s on "
                f"a batch of {len(prompts)} rows"
            ) from None
        except Exception as e:
            row = self._first_failing_row(spec, prompts, responses, columns)
            at = where(row) if row is not None else f"a batch of {len(prompts)} rows"
            raise UserRewardError(
                f"reward function {name!r} raised {type(e).__name__}: {e} on {at}"
            ) from None

    def _call(self, spec, prompts, responses, columns) -> list[Any]:
        if self.num_workers > 0:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")  # fork is unsafe under JAX
                self._pool = context.Pool(self.num_workers)
            chunks = np.array_split(np.arange(len(prompts)), self.num_workers)
            calls = [
                self._pool.apply_async(
                    _call_spec,
                    (
                        spec,
                        [prompts[i] for i in chunk],
                        [responses[i] for i in chunk],
                        {c: [v[i] for i in chunk] for c, v in columns.items()},
                    ),
                )
                for chunk in chunks
                if len(chunk)
            ]
            timeout = self.timeout or None
            return [value for call in calls for value in call.get(timeout)]
        call = lambda: _call_spec(spec, prompts, responses, columns)
        return _with_timeout(call, self.timeout) if self.timeout else call()

    def _first_failing_row(self, spec, prompts, responses, columns) -> int | None:
        for r in range(len(prompts)):
            try:
                _call_spec(
                    spec, [prompts[r]], [responses[r]], {c: [v[r]] for c, v in columns.items()}
                )
            except Exception:
                return r
        return None

    def close(self) -> None:
        """Stops the worker processes (a stuck call in them is killed)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


class _CallTimeout(Exception):
    """A host call ran past ``reward.timeout`` (distinct from a ``TimeoutError`` of its own)."""


def _with_timeout(call: Callable[[], Any], timeout: float) -> Any:
    """``call()`` in a daemon thread, or ``_CallTimeout`` after ``timeout`` seconds. A stuck
    call is abandoned (a thread cannot be killed); being a daemon, it does not keep the process
    alive at exit, as an executor's thread would."""
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=target, name="user-reward", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _CallTimeout
    if "error" in result:
        raise result["error"]
    return result["value"]


# ----------------------------------------------------------------------------- the source


def user_rewards(
    specs: Sequence[str],
    tokenizer: Any,
    *,
    weights: Sequence[float] | None = None,
    table: RowColumns | None = None,
    timeout: float = 0.0,
    num_workers: int = 0,
) -> Any:
    """The source (``irl_jax.rewards.UserRewards``) of the functions ``specs``
    (``"module:name"`` / ``"file.py:name"``).

    Args:
      specs: the functions, in order.
      tokenizer: decodes prompts and responses for host functions.
      weights: w_k (default all 1).
      table: the data rows' extra columns (``row_columns``; default none).
      timeout: seconds per host call (0: none).
      num_workers: host functions split each batch over this many processes (0: in-process).

    Raises:
      UserRewardError: a function that cannot be loaded, or a weight count that differs.
    """
    from irl_jax.rewards import UserRewards

    specs = tuple(specs)
    if not specs:
        raise UserRewardError("no reward functions given")
    weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(specs)
    if len(weights) != len(specs):
        raise UserRewardError(f"{len(weights)} reward weights for {len(specs)} reward functions")
    fns = [load_function(spec) for spec in specs]
    names = function_names(specs)
    jitted = tuple(fn if is_jittable(fn) else None for fn in fns)
    host_specs = [s for s, fn in zip(specs, jitted) if fn is None]
    host = None
    if host_specs:
        host = HostFunctions(
            host_specs,
            [n for n, fn in zip(names, jitted) if fn is None],
            tokenizer,
            table or RowColumns(),
            timeout=timeout,
            num_workers=num_workers,
            every_row_needs_a_value=len(host_specs) == len(specs),
        )
    return UserRewards(names, weights, jitted, host)


def from_config(config: Any, tokenizer: Any) -> Any:
    """``config.reward``'s functions, with the extra columns of ``data.path`` and
    ``data.eval_path`` (none for a synthetic task)."""
    r, data = config.reward, config.data
    specs = parse_list(r.functions)
    sources = [p for p in dict.fromkeys((data.path, data.eval_path)) if p]
    table = row_columns(
        sources,
        tokenizer,
        data.max_length,
        data.max_prompt_length or None,
        dict(data.column_map) or None,
    )
    return user_rewards(
        specs,
        tokenizer,
        weights=parse_weights(r.weights, len(specs)),
        table=table,
        timeout=r.timeout,
        num_workers=r.num_workers,
    )
