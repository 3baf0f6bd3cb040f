"""Tables of the final metrics of runs: ``python -m irl_jax.report RUN_DIR...``.

Flags: ``--metrics=a,b`` (names or shell-style patterns such as ``eval/reward/*``; default every
``eval/*`` metric that is not a ``_stderr``, headline metrics first, then ``train/loss``) and
``--format=markdown|csv``.

A *run directory* holds ``metrics.jsonl`` (one JSON object per line: ``step`` and metric
values); a metric's final value is its value in the last line that has it. A *pipeline
directory* holds ``summary.json`` (``{stage: {metric: value}}``) and one run directory per
stage; it expands into one row per stage, named ``RUN/stage``, whose values are the stage's
``metrics.jsonl`` finals updated with its ``summary.json`` entry (keys without a ``/`` read as
``eval/<key>``, the name ``metrics.jsonl`` gives them). A stage directory that ``summary.json``
does not list yet (a pipeline still running) is added after the listed ones.

Cells read ``mean ± stderr`` when the run also logged the metric's standard error:
``<name>_stderr`` for ``<name>_mean`` (``eval/reward/gold_mean`` → ``eval/reward/gold_stderr``),
``<metric>_stderr`` otherwise (``eval/win_rate`` → ``eval/win_rate_stderr``). Numbers show
three decimals (magnitudes below 1e-3 or from 1e5 in scientific notation; a column of whole
numbers, such as a count, as integers); a missing value is ``-`` in markdown and empty in CSV,
where each standard error gets a column of its own and values keep full precision.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from irl_jax.metrics import read_metrics

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
DEFAULT_TRAIN_METRICS = ("train/loss",)
MISSING = "-"


class Run(NamedTuple):
    """One row of a report: a run directory (or a pipeline stage) and its metrics.

    Attributes:
      name: the directory as given (``RUN/stage`` for a pipeline stage).
      history: the rows of its ``metrics.jsonl`` in file order (empty if it has none).
      final: metric → final value (``step`` excluded).
      step: the last step logged (``None`` without ``metrics.jsonl``).
    """

    name: str
    history: list[dict[str, float]]
    final: dict[str, float]
    step: int | None


def stderr_name(metric: str) -> str:
    """The name of a metric's standard error: ``x_mean`` → ``x_stderr``, else ``x_stderr``."""
    return metric.removesuffix("_mean") + "_stderr"


def final_values(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's value in the last row that has it (``step`` excluded).

    Args:
      history: rows of a ``metrics.jsonl``, in order.

    Returns:
      metric → final value, in order of first appearance.
    """
    final: dict[str, float] = {}
    for row in history:
        final.update({k: v for k, v in row.items() if k != "step"})
    return final


def _read_run(path: str, name: str) -> Run:
    history = read_metrics(path) if os.path.exists(os.path.join(path, METRICS_FILE)) else []
    steps = [int(row["step"]) for row in history if "step" in row]
    return Run(name, history, final_values(history), max(steps) if steps else None)


def _summary_key(key: str) -> str:
    # Stage results carry evaluation metrics unprefixed when they have no "/" (as the loop's
    # metrics.jsonl writer prefixes them): "nll_gap" is "eval/nll_gap".
    return key if "/" in key else f"eval/{key}"


def _pipeline_runs(path: str, name: str) -> list[Run]:
    with open(os.path.join(path, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    unlisted = sorted(
        entry
        for entry in os.listdir(path)
        if entry not in summary and os.path.isfile(os.path.join(path, entry, METRICS_FILE))
    )
    runs = []
    for stage in [*summary, *unlisted]:
        run = _read_run(os.path.join(path, stage), f"{name}/{stage}")
        run.final.update({_summary_key(k): float(v) for k, v in summary.get(stage, {}).items()})
        runs.append(run)
    return runs


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Reads run and pipeline directories (see the module docstring).

    Args:
      paths: directories, each holding ``metrics.jsonl`` or ``summary.json``.

    Returns:
      One ``Run`` per run directory and per pipeline stage, in the order given.

    Raises:
      FileNotFoundError: a path that is neither a run nor a pipeline directory.
    """
    runs: list[Run] = []
    for path in paths:
        name = os.path.normpath(path)
        if os.path.isfile(os.path.join(path, SUMMARY_FILE)):
            runs += _pipeline_runs(path, name)
        elif os.path.isfile(os.path.join(path, METRICS_FILE)):
            runs.append(_read_run(path, name))
        else:
            raise FileNotFoundError(
                f"{path!r} is not a run directory: it has neither {METRICS_FILE} nor {SUMMARY_FILE}"
            )
    return runs


def _available(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(metric for run in runs for metric in run.final))


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Every ``eval/*`` metric that is not a ``_stderr``, then ``train/loss`` when logged.

    The headline metrics of ``irl_jax.algorithms.pipeline.HEADLINES`` (gold accuracy, gold
    reward, KL, win rate, ...) come first, in that order; the other evaluation metrics follow
    alphabetically.
    """
    from irl_jax.algorithms.pipeline import HEADLINES

    available = _available(runs)
    evals = {m for m in available if m.startswith("eval/") and not m.endswith("_stderr")}
    headlines = [m for m in dict.fromkeys(map(_summary_key, HEADLINES)) if m in evals]
    rest = sorted(evals - set(headlines))
    return headlines + rest + [m for m in DEFAULT_TRAIN_METRICS if m in available]


def select_metrics(runs: Sequence[Run], requested: Sequence[str] | None) -> list[str]:
    """The table's metric columns.

    Args:
      runs: the runs.
      requested: metric names or ``fnmatch`` patterns (a pattern matches no ``_stderr`` metric
        unless it ends in ``_stderr``); ``None`` or empty for ``default_metrics``.

    Returns:
      Metric names without duplicates; a requested name no run logged is kept (its cells are
      missing), a pattern that matches nothing is dropped.
    """
    if not requested:
        return default_metrics(runs)
    available = _available(runs)
    chosen: list[str] = []
    for item in requested:
        if not any(c in item for c in "*?["):
            chosen.append(item)
            continue
        chosen += [
            m
            for m in fnmatch.filter(available, item)
            if item.endswith("_stderr") or not m.endswith("_stderr")
        ]
    return list(dict.fromkeys(chosen))


def format_number(value: float | None, *, integer: bool = False) -> str:
    """Three decimals, scientific below 1e-3 or from 1e5 in magnitude; or an integer.

    Args:
      value: a number or ``None``.
      integer: write an integral value as an integer (counts, steps).

    Returns:
      e.g. ``"1.234"``, ``"2.500e-05"``, ``"64"`` (with ``integer``), ``"nan"``; ``"-"`` for
      ``None``.
    """
    if value is None:
        return MISSING
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if integer and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.3f}"


def is_integral(runs: Sequence[Run], metric: str) -> bool:
    """Whether every run's final value of ``metric`` is a whole number (a count column)."""
    values = [run.final[metric] for run in runs if metric in run.final]
    return bool(values) and all(float(v).is_integer() for v in values)


def format_cell(run: Run, metric: str, *, integer: bool = False) -> str:
    """``"mean ± stderr"`` when the run logged the metric's standard error, else the value.

    Args:
      run: the run.
      metric: the metric name.
      integer: format the value as an integer (see ``is_integral``); ignored with a stderr.

    Returns:
      The cell text (``"-"`` when the run lacks the metric).
    """
    if metric not in run.final:
        return MISSING
    stderr = None if metric.endswith("_stderr") else run.final.get(stderr_name(metric))
    if stderr is None:
        return format_number(run.final[metric], integer=integer)
    return f"{format_number(run.final[metric])} ± {format_number(stderr)}"


def markdown_table(runs: Sequence[Run], metrics: Sequence[str]) -> str:
    """A markdown table: one row per run (``run``, ``step``, then one column per metric).

    Args:
      runs: from ``load_runs``.
      metrics: the metric columns.

    Returns:
      The table, columns padded to equal width, without a trailing newline.
    """
    header = ["run", "step", *metrics]
    rows = [
        [run.name, format_number(run.step, integer=True)]
        + [format_cell(run, m, integer=is_integral(runs, m)) for m in metrics]
        for run in runs
    ]
    rows = [[cell.replace("|", "\\|") for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    align = ["---"] + ["---:"] * (len(header) - 1)
    rule = [a.rjust(w, "-") if a.endswith(":") else a.ljust(w, "-") for a, w in zip(align, widths)]
    lines = []
    for row in [rows[0], rule, *rows[1:]]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(runs: Sequence[Run], metrics: Sequence[str]) -> str:
    """CSV: ``run``, ``step``, each metric followed by its ``_stderr`` column when any run has
    one; full-precision values, empty when missing.

    Args:
      runs: from ``load_runs``.
      metrics: the metric columns.

    Returns:
      The CSV text (``\\n`` line ends).
    """
    columns = []
    for metric in metrics:
        columns.append(metric)
        stderr = stderr_name(metric)
        if stderr not in metrics and any(stderr in run.final for run in runs):
            columns.append(stderr)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "step", *columns])
    for run in runs:
        values = [run.final.get(c) for c in columns]
        writer.writerow(
            [run.name, "" if run.step is None else run.step]
            + ["" if v is None else repr(float(v)) for v in values]
        )
    return out.getvalue()


def metric_list(text: str) -> list[str]:
    """``'a, b,c'`` -> ``['a', 'b', 'c']`` (a comma-separated flag value)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def runs_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments ``report`` and ``plot`` share: run directories and ``--metrics``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument(
        "--metrics",
        type=metric_list,
        default=None,
        help="comma-separated metric names or patterns (default: eval/* and train/loss)",
    )
    return parser


def runs_and_metrics(args: argparse.Namespace) -> tuple[list[Run], list[str]] | None:
    """The runs of ``args.run_dirs`` and the selected metrics; ``None`` (after printing why)
    when a directory is not a run."""
    try:
        runs = load_runs(args.run_dirs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return runs, select_metrics(runs, args.metrics)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line entry point.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).
      prog: the program name shown in usage messages.

    Returns:
      The exit status (0, or 1 when a directory is not a run; bad flags exit with 2).
    """
    parser = runs_parser(
        prog or "python -m irl_jax.report",
        "Prints a table of the final metrics of runs (pipelines: one row per stage).",
    )
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    args = parser.parse_args(argv)
    loaded = runs_and_metrics(args)
    if loaded is None:
        return 1
    runs, metrics = loaded
    if args.format == "csv":
        sys.stdout.write(csv_table(runs, metrics))
    else:
        print(markdown_table(runs, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
