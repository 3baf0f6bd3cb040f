"""Algorithms: each wires models to objectives and runs through the shared loop.

``run(config, workdir)`` dispatches on ``config.algorithm``.
"""

from __future__ import annotations

import ml_collections

from irl_jax.algorithms import sft

ALGORITHMS = {"sft": sft.train}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs ``config.algorithm`` in ``workdir``; returns its final evaluation metrics."""
    if config.algorithm not in ALGORITHMS:
        raise ValueError(
            f"config.algorithm={config.algorithm!r}; expected one of {sorted(ALGORITHMS)}"
        )
    return ALGORITHMS[config.algorithm](config, workdir)
