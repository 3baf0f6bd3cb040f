"""Run reports and plots: final values, mean ± stderr cells, pipelines, CSV, image size."""

import csv
import io
import json
import os

import matplotlib.image
import numpy as np
import pytest

from irl_jax import report
from irl_jax.metrics import MetricsWriter
from irl_jax.plot import main as plot_main
from irl_jax.plot import metric_series


def _write(workdir, rows):
    writer = MetricsWriter(str(workdir), tensorboard=False, enabled=True)
    for step, metrics in rows:
        writer.write(step, metrics)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two runs and a pipeline under tmp_path; the working directory is tmp_path."""
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "rlhf",
        [
            (0, {"train/loss": 2.5}),
            (10, {"train/loss": 1.5}),
            (
                10,
                {
                    "eval/reward/gold_mean": 1.0,
                    "eval/reward/gold_stderr": 0.1,
                    "eval/kl_mean": 0.5,
                    "eval/kl_stderr": 0.05,
                },
            ),
            (20, {"train/loss": 0.75}),
            (
                20,
                {
                    "eval/reward/gold_mean": 1.2344,
                    "eval/reward/gold_stderr": 0.0451,
                    "eval/kl_mean": 3.25,
                    "eval/kl_stderr": 0.5,
                    "eval/win_rate": 0.8571,
                    "eval/win_rate_stderr": 0.0123,
                    "eval/num_samples": 64,
                },
            ),
            (25, {"train/loss": 0.5}),
        ],
    )
    _write(tmp_path / "sft", [(0, {"train/loss": 3.0}), (5, {"eval/nll": 0.0004567})])
    pipeline = tmp_path / "pipe"
    _write(pipeline / "sft", [(0, {"train/loss": 2.0}), (4, {"eval/nll_gap": 0.5})])
    _write(pipeline / "dpo", [(3, {"train/loss": 0.25}), (3, {"eval/gold_accuracy": 0.75})])
    _write(pipeline / "later", [(1, {"train/loss": 9.0})])  # not in summary.json yet
    summary = {
        "sft": {"nll_gap": 0.024, "nll": 0.4},
        "dpo": {"eval/gold_accuracy": 0.909, "eval/reward/gold_mean": 1.896},
    }
    (pipeline / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def _parse_markdown(text):
    lines = text.splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rule, *rows = cells
    assert all(set(c) <= {"-", ":"} for c in rule)
    return header, {row[0]: dict(zip(header, row)) for row in rows}


def test_markdown_table_of_final_metrics(runs, capsys):
    assert report.main(["rlhf", "sft/", "pipe"]) == 0
    header, rows = _parse_markdown(capsys.readouterr().out)
    assert header == [
        "run",
        "step",
        # pipeline.HEADLINES first, in their order; then the other eval metrics, sorted.
        "eval/nll_gap",
        "eval/gold_accuracy",
        "eval/reward/gold_mean",
        "eval/kl_mean",
        "eval/win_rate",
        "eval/nll",
        "eval/num_samples",
        "train/loss",
    ]
    assert list(rows) == ["rlhf", "sft", "pipe/sft", "pipe/dpo", "pipe/later"]
    rlhf = rows["rlhf"]
    assert rlhf["step"] == "25"
    assert rlhf["eval/reward/gold_mean"] == "1.234 ± 0.045"  # the last evaluation's
    assert rlhf["eval/kl_mean"] == "3.250 ± 0.500"
    assert rlhf["eval/win_rate"] == "0.857 ± 0.012"
    assert rlhf["eval/num_samples"] == "64"
    assert rlhf["train/loss"] == "0.500"  # logged after the last evaluation
    assert rlhf["eval/nll"] == "-"
    assert rows["sft"]["eval/nll"] == "4.567e-04"
    # Pipeline stages: metrics.jsonl finals, updated with summary.json ("nll_gap" = eval/nll_gap).
    assert rows["pipe/sft"]["eval/nll_gap"] == "0.024"
    assert rows["pipe/sft"]["train/loss"] == "2.000"  # the column is not all whole numbers
    assert rows["pipe/dpo"]["eval/gold_accuracy"] == "0.909"
    assert rows["pipe/dpo"]["eval/reward/gold_mean"] == "1.896"  # no stderr logged
    assert rows["pipe/later"]["train/loss"] == "9.000"
    assert rows["pipe/later"]["step"] == "1"


def test_selected_metrics_patterns_and_csv(runs, capsys):
    assert report.main(["rlhf", "pipe", "--metrics=eval/reward/*,train/loss", "--format=csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(table[0]) == [
        "run",
        "step",
        "eval/reward/gold_mean",
        "eval/reward/gold_stderr",
        "train/loss",
    ]
    assert [row["run"] for row in table] == ["rlhf", "pipe/sft", "pipe/dpo", "pipe/later"]
    assert float(table[0]["eval/reward/gold_mean"]) == 1.2344
    assert float(table[0]["eval/reward/gold_stderr"]) == 0.0451
    assert table[1]["eval/reward/gold_mean"] == "" and table[1]["step"] == "4"
    assert float(table[2]["eval/reward/gold_mean"]) == 1.896


def test_not_a_run_directory(runs, capsys):
    os.makedirs("empty")
    assert report.main(["rlhf", "empty"]) == 1
    assert "neither metrics.jsonl nor summary.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, text",
    [
        (1.23449, "1.234"),
        (-0.5, "-0.500"),
        (64.0, "64.000"),
        (0.0, "0.000"),
        (2.5e-5, "2.500e-05"),
        (123456.7, "1.235e+05"),
        (float("nan"), "nan"),
        (None, "-"),
    ],
)
def test_format_number(value, text):
    assert report.format_number(value) == text
    assert report.format_number(64.0, integer=True) == "64"
    assert report.format_number(64.5, integer=True) == "64.500"


def test_metric_series_merges_steps_and_reads_stderr(runs):
    history = report.load_runs(["rlhf"])[0].history
    x, y, yerr = metric_series(history, "eval/reward/gold_mean")
    np.testing.assert_array_equal(x, [10, 20])
    np.testing.assert_array_equal(y, [1.0, 1.2344])
    np.testing.assert_array_equal(yerr, [0.1, 0.0451])
    # Against another metric logged at the same steps (an over-optimization curve).
    x, y, yerr = metric_series(history, "eval/reward/gold_mean", x="eval/kl_mean")
    np.testing.assert_array_equal(x, [0.5, 3.25])
    x, y, yerr = metric_series(history, "train/loss")
    np.testing.assert_array_equal(x, [0, 10, 20, 25])
    np.testing.assert_array_equal(y, [2.5, 1.5, 0.75, 0.5])
    assert yerr is None


def test_plot_writes_an_image_of_the_expected_size(runs, capsys):
    metrics = "--metrics=eval/reward/gold_mean,eval/kl_mean,train/loss"
    assert plot_main(["rlhf", "sft", "pipe", metrics, "--out=plots/curves.png"]) == 0
    assert capsys.readouterr().out.strip() == "plots/curves.png"
    image = matplotlib.image.imread("plots/curves.png")
    assert image.shape[:2] == (432, 3 * 576)  # 3 panels of 4.8 × 3.6 in at 120 dpi
    assert image[..., :3].std() > 0.05  # something was drawn
    args = ["rlhf", "--metrics=eval/reward/gold_mean", "--x=eval/kl_mean", "--logx"]
    assert plot_main([*args, "--out=kl.png"]) == 0
    assert matplotlib.image.imread("kl.png").shape[:2] == (432, 576)


def test_cli_forwards_to_the_subcommands(runs, capsys):
    from irl_jax import cli

    assert cli.main(["report", "rlhf", "--metrics=eval/kl_mean"]) == 0
    via_cli = capsys.readouterr().out
    assert report.main(["rlhf", "--metrics=eval/kl_mean"]) == 0
    assert via_cli == capsys.readouterr().out
    assert via_cli.splitlines()[-1] == "| rlhf |   25 | 3.250 ± 0.500 |"
    assert cli.main(["plot", "rlhf", "--metrics=train/loss", "--out=loss.png"]) == 0
    assert capsys.readouterr().out == "loss.png\n"
    assert matplotlib.image.imread("loss.png").shape[:2] == (432, 576)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: irl-jax report")
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["run", "--help"]) == 0  # experiments.run's docstring and flags
    assert "--config: Experiment config file" in capsys.readouterr().out
