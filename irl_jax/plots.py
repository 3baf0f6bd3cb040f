"""The one plotting helper: line plots and panel grids of metrics, written as image files.

Every figure goes through here so that the whole project looks alike: one color per run (the
same in every panel of a figure), a legend, a light grid, tight layout, ``DPI`` dots per inch.
Error bars are optional per series, axes may be logarithmic, and panels may carry horizontal
reference lines (a gold optimum, a demonstrator's entropy, a reference policy's reward).

A *series* is ``(x, y, yerr)``: three equal-length sequences, ``yerr`` (a symmetric error such
as a standard error) or ``None``; ``(x, y)`` is accepted too. NaNs leave gaps.

matplotlib is imported lazily (``import irl_jax`` never needs it; install it with
``pip install 'irl_jax[plots]'``). Figures are drawn with the object-oriented API on the Agg
canvas, never through ``pyplot``: nothing needs a display, no global backend is switched, and
no figure is left open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DPI = 120
PANEL_SIZE = (4.8, 3.6)  # inches per panel of a grid: 576 × 432 pixels at DPI
FIGURE_SIZE = (6.4, 4.4)  # inches of a single line plot: 768 × 528 pixels at DPI
REFERENCE_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}

Series = tuple[Sequence[float], Sequence[float], Sequence[float] | None]
# A horizontal reference line: a value, or label -> value.
References = Sequence[float] | Mapping[str, float]


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib: pip install 'irl_jax[plots]' (or matplotlib>=3.8)"
        ) from e
    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def run_colors(names: Sequence[str]) -> dict[str, Any]:
    """One distinct color per name, in order (``tab10``, then ``tab20`` beyond ten names).

    Args:
      names: run (or series) names.

    Returns:
      ``{name: RGBA tuple}``.
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _as_series(series: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if len(series) == 2:
        x, y, yerr = *series, None
    elif len(series) == 3:
        x, y, yerr = series
    else:
        raise ValueError(f"a series is (x, y) or (x, y, yerr), got {len(series)} items")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    yerr = None if yerr is None else np.asarray(yerr, np.float64)
    if x.shape != y.shape or x.ndim != 1 or (yerr is not None and yerr.shape != y.shape):
        raise ValueError(
            f"x, y (and yerr) must be 1-D of one length; got shapes {x.shape}, {y.shape}"
            f"{'' if yerr is None else f', {yerr.shape}'}"
        )
    return x, y, yerr


def _draw(axes: Any, label: str, series: Any, color: Any, err_style: str) -> None:
    x, y, yerr = _as_series(series)
    if yerr is None or not np.any(np.isfinite(yerr)):
        axes.plot(x, y, color=color, label=label, marker="o" if len(x) <= 20 else None, ms=3)
    elif err_style == "band":
        axes.plot(x, y, color=color, label=label)
        axes.fill_between(x, y - yerr, y + yerr, color=color, alpha=0.2, linewidth=0)
    else:
        axes.errorbar(x, y, yerr=yerr, color=color, label=label, marker="o", ms=3, capsize=3)


def _references(axes: Any, references: References | None) -> None:
    if not references:
        return
    items = (
        references.items() if isinstance(references, Mapping) else ((None, v) for v in references)
    )
    for label, value in items:
        axes.axhline(float(value), label=label, **REFERENCE_STYLE)


def _style(axes: Any, *, xlabel: str, ylabel: str, title: str | None, logx: bool, logy: bool):
    if logx:
        axes.set_xscale("log")
    if logy:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)


def save_figure(figure: Any, out: str | os.PathLike) -> str:
    """Writes a figure with tight layout at ``DPI`` (its pixel size is its size in inches × DPI).

    Args:
      figure: a matplotlib ``Figure`` (e.g. from ``line_figure`` or ``grid_figure``).
      out: the image file (format from its extension: ``.png``, ``.pdf``, ``.svg``); parent
        directories are created.

    Returns:
      ``out`` as a string.
    """
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=DPI)  # no bbox_inches="tight": the pixel size stays figsize × DPI
    return out


def _check_err_style(err_style: str) -> None:
    if err_style not in ("bars", "band"):
        raise ValueError(f"err_style must be 'bars' or 'band', got {err_style!r}")


def line_figure(
    series: Mapping[str, Series],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    references: References | None = None,
    err_style: str = "bars",
    figsize: tuple[float, float] = FIGURE_SIZE,
) -> Any:
    """One panel, one line per named series (``line_plot`` without the file).

    Args:
      series: label → ``(x, y, yerr | None)`` (or ``(x, y)``); each label gets its own color.
      xlabel, ylabel, title: axis labels and an optional title.
      logx, logy: logarithmic axes (non-positive values are not shown).
      references: horizontal reference lines: values, or ``{label: value}`` (labelled in the
        legend).
      err_style: ``"bars"`` (error bars) or ``"band"`` (a shaded ±yerr band, for dense x).
      figsize: inches.

    Returns:
      The matplotlib ``Figure`` (it displays in a notebook; ``save_figure`` writes it).
    """
    _check_err_style(err_style)
    figure = _figure(figsize)
    axes = figure.add_subplot()
    colors = run_colors(list(series))
    for label, values in series.items():
        _draw(axes, label, values, colors[label], err_style)
    _references(axes, references)
    _style(axes, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx, logy=logy)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return figure


def line_plot(series: Mapping[str, Series], *, out: str | os.PathLike, **kwargs: Any) -> str:
    """One panel, one line per named series, saved to ``out``.

    Args:
      series: label → ``(x, y, yerr | None)``, as in ``line_figure``.
      out: the image file; the file has ``figsize × DPI`` pixels.
      **kwargs: ``line_figure``'s options: ``xlabel``, ``ylabel`` (required), ``title``,
        ``logx``, ``logy``, ``references``, ``err_style``, ``figsize``.

    Returns:
      ``out``, the path written.
    """
    return save_figure(line_figure(series, **kwargs), out)


def grid_figure(
    runs: Mapping[str, Mapping[str, Series]],
    metrics: Sequence[str],
    *,
    xlabel: str = "step",
    ncols: int | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool | Sequence[str] = False,
    references: Mapping[str, References] | None = None,
    err_style: str = "bars",
    panel_size: tuple[float, float] = PANEL_SIZE,
) -> Any:
    """A grid of panels, one per metric, one line per run, all panels sharing the x quantity.

    A run keeps its color in every panel; the legend (runs and labelled references) is drawn
    once, in the first panel. A run that lacks a metric is simply absent from that panel; an
    empty panel says "no data".

    Args:
      runs: run name → {metric → ``(x, y, yerr | None)``}.
      metrics: the panels, in order (a metric is the panel's title and y label).
      xlabel: the shared x quantity (e.g. ``"step"`` or ``"eval/kl_mean"``).
      ncols: panels per row (default: up to 3).
      title: an optional figure title.
      logx: logarithmic x in every panel.
      logy: ``True`` for every panel, or the metrics whose panels get a logarithmic y.
      references: metric → horizontal reference lines of its panel (see ``line_figure``).
      err_style: ``"bars"`` or ``"band"``.
      panel_size: inches per panel; the figure is ``(ncols·w, nrows·h)`` inches.

    Returns:
      The matplotlib ``Figure``.
    """
    if not metrics:
        raise ValueError("a metric grid needs at least one metric")
    _check_err_style(err_style)
    ncols = ncols or min(len(metrics), 3)
    nrows = -(-len(metrics) // ncols)
    figure = _figure((panel_size[0] * ncols, panel_size[1] * nrows))
    grid = figure.subplots(nrows, ncols, squeeze=False)
    colors = run_colors(list(runs))
    log_metrics = set(metrics) if logy is True else set(logy or ())
    references = references or {}
    for index, metric in enumerate(metrics):
        axes = grid[index // ncols][index % ncols]
        drawn = False
        for run, series in runs.items():
            if metric in series and len(series[metric][0]):
                _draw(axes, run, series[metric], colors[run], err_style)
                drawn = True
        if not drawn:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        _references(axes, references.get(metric))
        _style(
            axes,
            xlabel=xlabel,
            ylabel=metric,
            title=metric,
            logx=logx and drawn,
            logy=metric in log_metrics and drawn,
        )
    for index in range(len(metrics), nrows * ncols):
        grid[index // ncols][index % ncols].set_visible(False)
    # One legend for the figure: every run (even one absent from the first panel).
    handles, labels = [], []
    for axes in grid.flat:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        grid[0][0].legend(handles, labels, fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def metric_grid(
    runs: Mapping[str, Mapping[str, Series]],
    metrics: Sequence[str],
    out: str | os.PathLike,
    **kwargs: Any,
) -> str:
    """A grid of metric panels (``grid_figure``), saved to ``out``.

    Args:
      runs: run name → {metric → ``(x, y, yerr | None)``}.
      metrics: the panels, in order.
      out: the image file; it has ``(ncols·w, nrows·h) × DPI`` pixels for ``panel_size`` (w, h).
      **kwargs: ``grid_figure``'s options: ``xlabel``, ``ncols``, ``title``, ``logx``, ``logy``,
        ``references``, ``err_style``, ``panel_size``.

    Returns:
      ``out``, the path written.
    """
    return save_figure(grid_figure(runs, metrics, **kwargs), out)


__all__ = [
    "DPI",
    "FIGURE_SIZE",
    "PANEL_SIZE",
    "Series",
    "grid_figure",
    "line_figure",
    "line_plot",
    "metric_grid",
    "run_colors",
    "save_figure",
]
