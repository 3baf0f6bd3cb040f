"""Runs an experiment: ``python -m experiments.run --config=experiments/configs/NAME.py``.

Flags: ``--workdir=DIR`` (default ``runs/NAME``) and config overrides such as
``--config.num_steps=20``. A run in an existing workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import logging as pylogging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config() -> ConfigDict).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flag_as_required("config")


def _quiet_orbax(record) -> bool:
    """Keeps orbax's per-save INFO chatter out of the log (its warnings still show)."""
    return "orbax" not in record.pathname or record.levelno >= pylogging.WARNING


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    from irl_jax import algorithms, sharding
    from irl_jax.config import ConfigError, validate_config

    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    try:
        validate_config(config)
    except ConfigError as e:
        raise app.UsageError(str(e)) from None
    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("runs", name)
    logging.info("running %s (%s) in %s", name, config.algorithm, workdir)
    metrics = algorithms.run(config, workdir)
    logging.info("final metrics: %s", metrics)
    if config.algorithm == "pipeline":
        from irl_jax.algorithms import pipeline

        print(pipeline.summary_table(pipeline.by_stage(metrics)))
    else:
        print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    app.run(main)
