"""Runs an experiment: ``python -m experiments.run --config=experiments/configs/NAME.py``.

Flags: ``--workdir=DIR`` (default ``runs/NAME``) and config overrides such as
``--config.num_steps=20``. A run in an existing workdir resumes from its newest checkpoint.
A multi-process run starts ``jax.distributed`` by itself on a Cloud TPU pod (every worker runs
the same command), under Slurm or Open MPI, or from ``--coordinator_address --num_processes
--process_id`` (or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``).
An unknown field (``--config.num_step``: "did you mean 'num_steps'?"), a value of the wrong
type or a missing config file is a one-line error naming it, before anything compiles.
Exit status: 0 when finished; 75 (``Preempted.exit_status``) after a SIGTERM, once the state is
saved (run the same command to resume); 1 for any error (a workdir in use by another process
is one line naming it).
"""

from __future__ import annotations

import difflib
import logging as pylogging
import os
import re
import sys
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config() -> ConfigDict).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 in a multi-process run (else $JAX_COORDINATOR_ADDRESS; not needed "
    "on Cloud TPU pods, Slurm or Open MPI, which supply all three).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-process run (else $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (else $JAX_PROCESS_ID)."
)
flags.mark_flag_as_required("config")


def _quiet_orbax(record) -> bool:
    """Keeps orbax's per-save INFO chatter out of the log (its warnings still show)."""
    return "orbax" not in record.pathname or record.levelno >= pylogging.WARNING


# An override on the command line (``--config.a.b=1``, ``--noconfig.flag``), and absl's message
# for a value that the field's parser rejected (``flag --config.a.b=abc: <parser's reason>``).
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")
_BAD_VALUE = re.compile(r"^flag --config\.([^=]+)=")
_TYPE_NAMES = {ml_collections.ConfigDict: "a dict literal", bool: "true/false"}


def _unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
    """A one-line message if ``path`` names no field of ``config`` (with the closest field of
    the same section as a suggestion, or the section's fields), else None."""
    names = path.split(".")
    node = config
    for i, name in enumerate(names):
        name = name.split("[", 1)[0]  # ``--config.list[0]`` indexes into the field ``list``
        parent = ".".join(names[:i])
        if not isinstance(node, ml_collections.ConfigDict):
            return f"unknown config field '{path}': config.{parent} is {node!r}, not a section"
        if name not in node:
            break
        node = node[name]
    else:
        return None
    message = f"unknown config field '{path}'"
    match = difflib.get_close_matches(name, list(node.keys()), n=1)
    if match:
        suggestion = ".".join([*names[:i], match[0], *names[i + 1 :]])
        return f"{message}; did you mean '{suggestion}'?"
    where = f"config.{parent}" if parent else "the config"
    return f"{message}; {where} has: {', '.join(node.keys())}"


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value given to ``--name`` in ``argv`` (``--name=VALUE`` or ``--name VALUE``; the last
    one counts, as in absl), or None."""
    value = None
    for i, arg in enumerate(argv):
        flag, eq, given = arg.partition("=")
        if flag in (f"-{name}", f"--{name}"):
            value = given if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _override_error(argv: list[str], error: Exception) -> str | None:
    """Explains in one line why a ``--config.FIELD`` override failed, or None when ``error`` is
    about something else.

    An unknown field fails inside ml_collections' config flag (a KeyError/AttributeError, before
    any override is applied), so the overrides are checked against a fresh load of the config
    file; a value of the wrong type fails in the field's own flag, with absl's message.
    """
    config_flag = flags.FLAGS["config"]
    bad_value = _BAD_VALUE.match(str(error)) if isinstance(error, flags.Error) else None
    if bad_value and isinstance(config_flag.value, ml_collections.ConfigDict):
        path = bad_value.group(1)
        # The value as given: absl's message does not delimit a value that holds ": ".
        value = _flag_value(argv, f"config.{path}")
        try:
            field_type = config_path.get_type(path, config_flag.value)
        except (KeyError, AttributeError, IndexError, TypeError):
            return None
        expected = _TYPE_NAMES.get(field_type, getattr(field_type, "__name__", str(field_type)))
        return f"--config.{path}={value}: config field '{path}' expects {expected}, got {value!r}"
    paths = [m.group(1) for m in map(_OVERRIDE.match, argv[1:]) if m]
    config_file = _flag_value(argv, "config")
    if not paths or config_file is None:
        return None
    try:
        config = config_flag.parser.parse(config_file)
    except Exception:  # The config file itself is broken: absl's own report says how.
        return None
    return next(filter(None, (_unknown_field(config, path) for path in paths)), None)


def _usage_error(message: str) -> NoReturn:
    """Exits like absl does on a flag error, in one line."""
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that a missing config file or a bad ``--config.FIELD``
    override is a one-line error naming the file or the field instead of a traceback."""
    config_file = _flag_value(argv, "config")
    if config_file is not None and not os.path.isfile(config_file.split(":", 1)[0]):
        _usage_error(f"--config={config_file}: no such config file")
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        message = _override_error(argv, e)
        if message is None and not isinstance(e, flags.Error):
            raise
        _usage_error(message or f"{e}\nPass --helpshort or --helpfull to see help on flags.")


def _log_meshes(config: ml_collections.ConfigDict) -> None:
    """Logs the global mesh of the run (of each stage of a pipeline) and this process's place in
    it; a mesh shape that does not fit the devices is left to the config check to report."""
    from irl_jax import sharding

    stages = config.stages.items() if config.algorithm == "pipeline" else [("", config)]
    for stage, stage_config in stages:
        try:
            mesh = sharding.make_mesh(dict(stage_config.mesh_shape))
        except (ValueError, AttributeError, KeyError):
            continue
        logging.info("%s%s", f"{stage}: " if stage else "", sharding.describe_mesh(mesh))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    from irl_jax import algorithms, sharding
    from irl_jax.config import ConfigError
    from irl_jax.train.loop import Preempted
    from irl_jax.workdir import WorkdirLocked

    try:
        plan = sharding.initialize_distributed(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    started = f" (jax.distributed from {plan.source})" if plan else ""
    logging.info("%s%s", sharding.describe_processes(), started)
    config = _CONFIG.value
    _log_meshes(config)
    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("runs", name)
    logging.info("running %s (%s) in %s", name, config.algorithm, workdir)
    try:
        # Validates the config once, before anything compiles, then trains.
        metrics = algorithms.run(config, workdir)
    except ConfigError as e:
        raise app.UsageError(str(e)) from None
    except Preempted as e:  # SIGTERM: the state is saved; the same command resumes
        logging.warning("%s", e)
        sys.exit(Preempted.exit_status)
    except WorkdirLocked as e:
        sys.exit(f"FATAL {e}")
    logging.info("final metrics: %s", metrics)
    if config.algorithm == "pipeline":
        from irl_jax.algorithms import pipeline

        print(pipeline.summary_table(pipeline.by_stage(metrics)))
    else:
        print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
