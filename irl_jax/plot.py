"""Curves of logged metrics: ``python -m irl_jax.plot RUN_DIR... --metrics=a,b --out=FILE.png``.

One panel per metric, one line per run (a pipeline directory gives one line per stage, as in
``irl_jax.report``), on shared x: ``--x=step`` by default, or any logged metric, e.g.
``--x=eval/kl_mean`` for the gold reward against the KL to the reference (an over-optimization
curve). Where ``<name>_stderr`` is logged beside a metric (``irl_jax.report.stderr_name``), it is
drawn as error bars (``--err_style=band`` shades a band instead).

Rows of ``metrics.jsonl`` are merged by step first (the training and evaluation rows of one step
are written separately; a resumed run's repeated step keeps its later values), so a metric can be
plotted against another logged at the same step. Other flags: ``--logx``, ``--logy``,
``--title``, ``--ncols``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np

from irl_jax import plots
from irl_jax.report import Run, runs_and_metrics, runs_parser, stderr_name


def merge_by_step(history: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """Rows merged per step (later values win), sorted by step.

    Args:
      history: rows of a ``metrics.jsonl``, each with a ``step``.

    Returns:
      One row per distinct step, holding every metric logged at that step.
    """
    merged: dict[int, dict[str, float]] = {}
    for row in history:
        merged.setdefault(int(row["step"]), {}).update(row)
    return [merged[step] for step in sorted(merged)]


def metric_series(
    history: Sequence[dict[str, float]], metric: str, x: str = "step"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``(x, y, yerr)`` series of one metric of one run, in step order.

    Args:
      history: rows of a ``metrics.jsonl``.
      metric: the y metric.
      x: the x quantity: ``"step"`` or another metric logged at the same steps.

    Returns:
      ``(x, y, yerr)`` float arrays over the steps where both x and y are logged; ``yerr`` is
      the metric's logged standard error (NaN where absent), or ``None`` if it is never logged.
    """
    rows = [r for r in merge_by_step(history) if metric in r and x in r]
    xs = np.array([r[x] for r in rows], np.float64)
    ys = np.array([r[metric] for r in rows], np.float64)
    errs = np.array([r.get(stderr_name(metric), math.nan) for r in rows], np.float64)
    if metric.endswith("_stderr") or not np.any(np.isfinite(errs)):
        return xs, ys, None
    return xs, ys, errs


def plot_runs(
    runs: Sequence[Run],
    metrics: Sequence[str],
    out: str,
    *,
    x: str = "step",
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    ncols: int | None = None,
    err_style: str = "bars",
) -> str:
    """Draws ``metrics`` of ``runs`` as a grid of panels (``irl_jax.plots.metric_grid``).

    Args:
      runs: from ``irl_jax.report.load_runs``.
      metrics: one panel each.
      out: the image file.
      x: the shared x quantity (``"step"`` or a metric name).
      logx, logy: logarithmic axes.
      title: an optional figure title.
      ncols: panels per row (default up to 3).
      err_style: ``"bars"`` or ``"band"``.

    Returns:
      ``out``.
    """
    series = {run.name: {m: metric_series(run.history, m, x) for m in metrics} for run in runs}
    return plots.metric_grid(
        series,
        list(metrics),
        out,
        xlabel=x,
        ncols=ncols,
        title=title,
        logx=logx,
        logy=logy,
        err_style=err_style,
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line entry point.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).
      prog: the program name shown in usage messages.

    Returns:
      The exit status (0, or 1 when a directory is not a run or nothing is left to plot).
    """
    parser = runs_parser(
        prog or "python -m irl_jax.plot",
        "Plots logged metrics of runs: one panel per metric, one line per run.",
    )
    parser.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    parser.add_argument("--x", default="step", help="x quantity: step or a metric name")
    parser.add_argument("--logx", action="store_true")
    parser.add_argument("--logy", action="store_true")
    parser.add_argument("--title", default=None)
    parser.add_argument("--ncols", type=int, default=None)
    parser.add_argument("--err_style", choices=("bars", "band"), default="bars")
    args = parser.parse_args(argv)
    loaded = runs_and_metrics(args)
    if loaded is None:
        return 1
    runs, metrics = loaded
    if not metrics:
        print("error: no metric to plot", file=sys.stderr)
        return 1
    out = plot_runs(
        runs,
        metrics,
        args.out,
        x=args.x,
        logx=args.logx,
        logy=args.logy,
        title=args.title,
        ncols=args.ncols,
        err_style=args.err_style,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
