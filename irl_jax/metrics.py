"""Metrics: ``WORKDIR/metrics.jsonl``, TensorBoard event files, sample texts, progress bar.

Only process 0 writes. Metric names are ``split/name`` (``train/loss``, ``eval/gold_reward``).
A resumed run first drops the rows that an earlier attempt wrote past the step it resumes from
(they are written again), so every row appears once; a torn last line (a process killed while
writing it) is dropped too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging


def _scalar(value: Any) -> float:
    return float(np.asarray(value))


class MetricsWriter:
    """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl`` and TensorBoard.

    Args:
      workdir: the run directory (created if needed).
      tensorboard: also write event files under ``WORKDIR/tensorboard`` (``tensorboardX``).
      enabled: write anything at all (default: only on process 0).
      resume_step: the step the run starts from: rows (and samples) of later steps, written by
        an earlier attempt after its newest checkpoint, are dropped, and TensorBoard hides its
        events past this step. ``None`` keeps everything.
      reevaluate: the evaluation at ``resume_step`` runs again (a finished run run again):
        drop its rows too.
    """

    def __init__(
        self,
        workdir: str,
        *,
        tensorboard: bool = True,
        enabled: bool | None = None,
        resume_step: int | None = None,
        reevaluate: bool = False,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.samples_path = os.path.join(workdir, "samples.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                _keep_rows(self.path, resume_step, reevaluate)
                _keep_rows(self.samples_path, resume_step, reevaluate)
            if tensorboard:
                from tensorboardX import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes scalar metrics (device arrays are fetched here, once)."""
        if not self.enabled or not metrics:
            return
        values = {name: _scalar(v) for name, v in jax.device_get(dict(metrics)).items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, int(step))

    def write_samples(self, step: int, name: str, samples: Sequence[Mapping[str, Any]]) -> None:
        """Logs sample texts (dicts such as ``{"prompt", "response", "reward"}``)."""
        if not self.enabled or not samples:
            return
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": int(step), "name": name, **sample}, default=str) + "\n")
        if self._tb is not None:
            text = "\n\n".join(
                "  \n".join(f"**{k}**: {v}" for k, v in sample.items()) for sample in samples
            )
            self._tb.add_text(name, text, int(step))
        logging.info("step %d %s: %s", step, name, samples[0])

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _read_rows(path: str) -> tuple[list[dict[str, Any]], bool]:
    """``(rows, torn)`` of a ``.jsonl`` file: a last line cut short by a killed writer (not
    JSON, or no final newline) is dropped with a warning; a bad line elsewhere raises
    ``ValueError`` naming it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    torn = not text.endswith("\n") and bool(text)
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number < len(lines) - (not torn):
                raise ValueError(f"{path} line {number}: not JSON ({e})") from None
            logging.warning("%s: dropped a torn last line (%d characters)", path, len(line))
    return rows, torn


def _keep_rows(path: str, resume_step: int, reevaluate: bool) -> None:
    """Rewrites ``path`` (atomically) without the rows past ``resume_step`` — and, when
    ``reevaluate``, without the evaluation rows (``eval/*`` metrics, samples) at it — and
    without a torn last line."""
    if not os.path.exists(path):
        return
    rows, torn = _read_rows(path)

    def dropped(row: Mapping[str, Any]) -> bool:
        step = row.get("step", 0)
        if step == resume_step and reevaluate:
            return "name" in row or all(k.startswith("eval/") for k in row if k != "step")
        return step > resume_step

    kept = [row for row in rows if not dropped(row)]
    if len(kept) == len(rows) and not torn:
        return
    logging.info("%s: dropped %d rows past step %d", path, len(rows) - len(kept), resume_step)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, default=str) + "\n" for row in kept)
    os.replace(temporary, path)


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All rows of ``WORKDIR/metrics.jsonl`` (a torn last line is dropped with a warning)."""
    return _read_rows(os.path.join(workdir, "metrics.jsonl"))[0]


def policy_evaluations(workdir: str, **columns: str) -> dict[str, list[float]]:
    """The policy evaluations logged in ``WORKDIR/metrics.jsonl`` (the rows with
    ``eval/kl_mean``) as columns: ``step``, and ``name`` → that metric for each ``name=metric``
    given, e.g. ``policy_evaluations(run, gold="eval/reward/gold_mean")``."""
    rows = [r for r in read_metrics(workdir) if "eval/kl_mean" in r]
    named = {name: [r[key] for r in rows] for name, key in columns.items()}
    return {"step": [r["step"] for r in rows], **named}


def progress_bar(total: int, initial: int, description: str) -> tqdm.tqdm:
    """A tqdm bar with rate and ETA (silent on processes other than 0)."""
    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
        mininterval=1.0,
    )
