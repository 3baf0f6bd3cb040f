"""Metrics: ``WORKDIR/metrics.jsonl``, TensorBoard event files, sample texts, progress bar.

Only process 0 writes. Metric names are ``split/name`` (``train/loss``, ``eval/gold_reward``).
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
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.samples_path = os.path.join(workdir, "samples.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All rows of ``WORKDIR/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
