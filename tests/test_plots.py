"""The plotting helper: files of the configured pixel size, error bars, log axes, colors."""

import subprocess
import sys

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from irl_jax import plots


def _pixels(path) -> tuple[int, int]:
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def _handle_colors(axes) -> dict:
    """Legend label -> RGBA of its line (an error-bar container's data line)."""
    colors = {}
    for handle, label in zip(*axes.get_legend_handles_labels()):
        line = handle[0] if isinstance(handle, tuple) else handle
        colors[label] = matplotlib.colors.to_rgba(line.get_color())
    return colors


def test_line_plot_size_error_bars_log_axes_and_references(tmp_path):
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    series = {
        "policy": (x, [0.5, 1.0, 1.5, 1.2], [0.1, 0.05, 0.2, 0.1]),
        "reference": (x, [0.4, 0.4, 0.41, 0.39], None),
        "no_error": (x, [0.3, 0.6, 0.9, 1.0]),
    }
    out = plots.line_plot(
        series,
        xlabel="KL",
        ylabel="gold reward",
        title="over-optimization",
        out=tmp_path / "sub" / "curve.png",
        logx=True,
        logy=True,
        references={"gold optimum": 2.0},
        figsize=(5.0, 4.0),
    )
    assert out == str(tmp_path / "sub" / "curve.png")
    assert _pixels(out) == (600, 480)  # figsize × DPI = (5, 4) × 120


def test_line_figure_draws_error_bars_bands_and_labelled_references():
    x = np.arange(30.0)
    figure = plots.line_figure(
        {"a": (x, x**2, np.ones(30)), "b": (x, -x, 0.5 * np.ones(30))},
        xlabel="step",
        ylabel="y",
        references={"optimum": 3.0},
        err_style="band",
    )
    axes = figure.axes[0]
    # Bands: one shaded area per series with errors.
    assert len(axes.collections) == 2
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["a", "b", "optimum"]
    reference = axes.lines[-1]
    np.testing.assert_array_equal(reference.get_ydata(), [3.0, 3.0])


def test_metric_grid_size_colors_and_missing_metrics(tmp_path):
    runs = {
        "run_a": {"loss": ([0, 1, 2], [3.0, 2.0, 1.0], None)},
        "run_b": {"loss": ([0, 1, 2], [3.0, 2.5, 2.0], [0.1, 0.1, 0.1]), "kl": ([0, 2], [0, 1])},
    }
    metrics = ["loss", "kl", "gold", "nll"]
    figure = plots.grid_figure(
        runs, metrics, ncols=3, logy=["loss"], references={"kl": [0.5]}, panel_size=(4.0, 3.0)
    )
    np.testing.assert_allclose(figure.get_size_inches(), [12.0, 6.0])  # 3 cols × 2 rows
    visible = [axes for axes in figure.axes if axes.get_visible()]
    assert [axes.get_title() for axes in visible] == metrics
    assert visible[0].get_yscale() == "log" and visible[1].get_yscale() == "linear"
    # A run keeps its color in every panel (run_b is the only, hence first, line of "kl").
    colors = plots.run_colors(["run_a", "run_b"])
    loss = _handle_colors(visible[0])
    assert loss == {"run_a": colors["run_a"], "run_b": colors["run_b"]}
    assert _handle_colors(visible[1]) == {"run_b": colors["run_b"]}
    assert colors["run_a"] != colors["run_b"]
    # Panels without data say so; the legend lists both runs once.
    assert [t.get_text() for t in visible[2].texts] == ["no data"]
    assert [t.get_text() for t in visible[0].get_legend().get_texts()] == ["run_a", "run_b"]

    out = plots.metric_grid(runs, metrics, tmp_path / "grid.png", ncols=2, logx=True)
    assert _pixels(out) == (2 * 576, 2 * 432)  # default panel 4.8 × 3.6 in at 120 dpi


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="1-D of one length"):
        plots.line_figure({"a": ([1, 2, 3], [1, 2])}, xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="err_style"):
        plots.line_figure({"a": ([1], [1])}, xlabel="x", ylabel="y", err_style="dots")
    with pytest.raises(ValueError, match="at least one metric"):
        plots.grid_figure({"a": {}}, [])


def test_importing_the_package_does_not_import_matplotlib():
    code = (
        "import sys, irl_jax, irl_jax.plots, irl_jax.plot, irl_jax.report, irl_jax.cli; "
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
