"""A pipeline: experiment configs run in order, later stages reading earlier stages' exports.

``config.stages.<name>`` is a full experiment config (any algorithm but ``pipeline``);
``config.run`` the order. A string field of a stage that reads ``@<stage>`` is resolved to that
earlier stage's Hugging Face export, ``WORKDIR/<stage>/export`` — e.g. ``init_from = "@sft"``,
``reward.model = "@reward_model"``. Each stage runs in ``WORKDIR/<stage>``
through the shared loop (its own checkpoints, metrics and export), and leaves its final metrics
in ``WORKDIR/<stage>/result.json``: a re-run skips finished stages and resumes an interrupted
one from its checkpoint. ``WORKDIR/summary.json`` collects every stage's metrics.

A re-run compares each stage's config with the one its checkpoints were saved with (``plan``):
a stage whose config changed (beyond ``config.RESUMABLE_FIELDS``), or that reads a stage that
trains again, is run again from scratch — its old directory is moved to
``WORKDIR/replaced/<stage>-<n>``, never deleted; a finished stage whose ``num_steps`` grew
resumes to the new total. The pipeline holds the lock of ``WORKDIR`` while it runs.

Validation happens once, before anything runs: field names and values of every stage, and the
references (each names an earlier stage that exports). Stages that read an earlier stage's
output get their directory checks when they start.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError, config_differences, describe_differences, require
from irl_jax.workdir import WorkdirLock

REFERENCE = "@"
# The metrics ``summary_table`` shows per stage (those a stage reports).
HEADLINES = (
    "eval/nll_gap",
    "eval/gold_accuracy",
    "eval/reward/gold_mean",
    "eval/ref_reward/gold_mean",
    "eval/reward/model_mean",
    "eval/ref_reward/model_mean",
    "eval/kl_mean",
    "eval/win_rate",
)


def pipeline_config(stages: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
    """A pipeline running ``stages`` (name → experiment config) in the dict's order."""
    config = ml_collections.ConfigDict()
    config.algorithm = "pipeline"
    config.run = tuple(stages)
    config.stages = ml_collections.ConfigDict(stages)
    return config


def _references(config: ml_collections.ConfigDict, where: str = "") -> dict[str, str]:
    """``{field path: stage name}`` of the ``@<stage>`` string fields of a stage config."""
    found = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            found.update(_references(value, f"{where}{key}."))
        elif isinstance(value, str) and value.startswith(REFERENCE):
            found[f"{where}{key}"] = value[len(REFERENCE) :]
    return found


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the stage list, every stage config and the references between stages."""
    from irl_jax import algorithms

    if set(config.keys()) != {"algorithm", "run", "stages"}:
        raise ConfigError(
            "config: a pipeline config has exactly the fields algorithm, run and stages; got "
            f"{sorted(config.keys())}"
        )
    require(len(config.run) > 0, "run", "names no stage")
    require(len(set(config.run)) == len(config.run), "run", f"repeats a stage: {config.run}")
    earlier: list[str] = []
    for name in config.run:
        require(name in config.stages, "run", f"{name!r} is not a stage ({sorted(config.stages)})")
        stage = config.stages[name]
        field = f"stages.{name}"
        require(
            stage.get("algorithm") in set(algorithms.MODULES) - {"pipeline"},
            f"{field}.algorithm",
            f"{stage.get('algorithm')!r} is not a single algorithm "
            f"({sorted(set(algorithms.MODULES) - {'pipeline'})})",
        )
        references = _references(stage)
        for path, target in references.items():
            require(
                target in earlier,
                f"{field}.{path}",
                f"@{target} is not an earlier stage (earlier: {earlier})",
            )
            require(
                config.stages[target].export,
                f"{field}.{path}",
                f"stage {target!r} does not export (its export is False)",
            )
        try:
            algorithms.validate_config(stage, check_paths=not references)
        except ConfigError as e:
            raise ConfigError(f"stage {name!r}: {e}") from None
        earlier.append(name)


def resolve(stage: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A copy of ``stage`` with each ``@<stage>`` field replaced by ``WORKDIR/<stage>/export``."""
    resolved = ml_collections.ConfigDict(stage.to_dict())
    for path, target in _references(stage).items():
        *parents, leaf = path.split(".")
        section = resolved
        for parent in parents:
            section = section[parent]
        section[leaf] = os.path.join(workdir, target, "export")
    return resolved


def by_stage(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"<stage>/<metric>": v}`` (what ``train`` returns) → ``{stage: {metric: v}}``."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        stage, name = key.split("/", 1)
        nested.setdefault(stage, {})[name] = value
    return nested


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    """One line per stage with its ``HEADLINES`` metrics (gold reward ± stderr)."""
    lines = []
    for name, metrics in summary.items():
        cells = []
        for key in HEADLINES:
            if key in metrics:
                stderr = key.endswith("_mean") and metrics.get(key[: -len("mean")] + "stderr")
                value = f"{metrics[key]:.3f}" + (f" ± {stderr:.3f}" if stderr else "")
                cells.append(f"{key.removeprefix('eval/')}={value}")
        lines.append(f"{name:>14}: " + ", ".join(cells))
    return "\n".join(lines)


def _write_json(path: str, value) -> None:
    """Writes ``path`` whole (a temporary file renamed into place; process 0)."""
    if jax.process_index() == 0:
        with open(f"{path}.tmp", "w") as f:
            json.dump(value, f, indent=1)
        os.replace(f"{path}.tmp", path)


def _saved_config(stage_dir: str) -> dict | None:
    """The config of the newest readable checkpoint of a stage, or None if it has none."""
    if not os.path.isdir(os.path.join(stage_dir, "checkpoints")):
        return None
    manager = CheckpointManager(stage_dir)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.read_config(step)
            except Exception:  # noqa: BLE001 (an unreadable checkpoint: the loop sets it aside)
                continue
        return None
    finally:
        manager.close()


def plan(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple[str, str]]:
    """What running ``config`` in ``workdir`` does with each stage: ``{stage: (action,
    reason)}``, the action being ``"skip"`` (finished with this config), ``"run"`` (start, or
    resume from its checkpoint) or ``"rerun"`` (its config or a stage it reads changed since
    it ran: start over in a fresh directory). ``@<stage>`` fields are compared through their
    stage, not as paths."""
    actions: dict[str, tuple[str, str]] = {}
    for name in config.run:
        stage, stage_dir = config.stages[name], os.path.join(workdir, name)
        references = _references(stage)
        saved = _saved_config(stage_dir)
        finished = os.path.exists(os.path.join(stage_dir, "result.json"))
        differences = {}
        if saved is not None and stage.resume_policy != "ignore_config":
            current = resolve(stage, workdir).to_dict()
            differences = config_differences(saved, current, ignore=references)
        upstream = sorted({t for t in references.values() if actions[t][0] != "skip"})
        if (finished or saved is not None) and (differences or upstream):
            reason = (
                f"config changed since it ran: {describe_differences(differences)}"
                if differences
                else f"it reads {', '.join(upstream)}, which train again"
            )
            actions[name] = ("rerun", reason)
        elif finished and (saved is None or saved.get("num_steps") == stage.num_steps):
            actions[name] = ("skip", "finished earlier")
        else:
            actions[name] = ("run", "resumes from its checkpoint" if saved else "starts")
    return actions


def _set_aside(stage_dir: str, workdir: str) -> str:
    """Moves a stage's directory to ``WORKDIR/replaced/<stage>-<n>`` (process 0)."""
    name = os.path.basename(stage_dir)
    replaced = os.path.join(workdir, "replaced")
    number = 1
    while os.path.exists(os.path.join(replaced, f"{name}-{number}")):
        number += 1
    target = os.path.join(replaced, f"{name}-{number}")
    if jax.process_index() == 0:
        os.makedirs(replaced, exist_ok=True)
        os.rename(stage_dir, target)
    return target


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs the stages in order (the config validated already, by ``algorithms.run``); returns
    ``{"<stage>/<metric>": value}`` over all stages."""
    with WorkdirLock(workdir):
        summary = _run_stages(config, workdir)
        _write_json(os.path.join(workdir, "summary.json"), summary)
    logging.info("pipeline summary (%s):\n%s", workdir, summary_table(summary))
    return {f"{name}/{k}": v for name, metrics in summary.items() for k, v in metrics.items()}


def _run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, float]]:
    """Runs the stages as ``plan`` says; returns ``{stage: final metrics}``."""
    from irl_jax import algorithms

    actions = plan(config, workdir)
    for name, (action, reason) in actions.items():
        if action == "rerun":  # before anything runs: no stale stage survives an interruption
            moved = _set_aside(os.path.join(workdir, name), workdir)
            logging.warning(
                "stage %s runs again (%s); its previous run is in %s", name, reason, moved
            )
    summary: dict[str, dict[str, float]] = {}
    for name in config.run:
        stage_dir = os.path.join(workdir, name)
        result_path = os.path.join(stage_dir, "result.json")
        if actions[name][0] == "skip":
            with open(result_path) as f:
                summary[name] = json.load(f)
            logging.info("stage %s: finished earlier (%s), skipped", name, result_path)
            continue
        stage = resolve(config.stages[name], workdir)
        # ``plan`` compared the config already, with @<stage> fields through their stage
        # (as paths they change with the spelling of WORKDIR): the loop does not again.
        stage.resume_policy = "ignore_config"
        logging.info("stage %s (%s) in %s", name, stage.algorithm, stage_dir)
        try:
            algorithms.validate_paths(stage)  # the earlier stages' exports exist by now
        except ConfigError as e:
            raise ConfigError(f"stage {name!r}: {e}") from None
        trained = algorithms.module(stage.algorithm).train(stage, stage_dir)
        metrics = {k: float(v) for k, v in trained.items()}
        _write_json(result_path, metrics)
        summary[name] = metrics
        logging.info("stage %s: %s", name, {k: round(v, 4) for k, v in metrics.items()})
    return summary
