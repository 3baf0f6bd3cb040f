"""Algorithms: each wires models to objectives and runs through the shared loop.

Every algorithm is a module with ``train(config, workdir) -> final metrics`` and, if it has
options, ``default_config() -> ConfigDict`` (its section of the experiment config, named after
the algorithm), ``validate(config)`` (checks of that section) and ``validate_paths(config)``
(the directories it reads). ``run(config, workdir)`` validates the config once, then
dispatches on ``config.algorithm``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

from irl_jax.config import ConfigError, base_config, check_keys, validate_base

# algorithm name -> module (imported on first use).
MODULES = {
    "sft": "irl_jax.algorithms.sft",
    "iq_learn": "irl_jax.algorithms.iq_learn",
    "afd": "irl_jax.algorithms.afd",
    "reward_model": "irl_jax.algorithms.reward_model",
    "embedding_rm": "irl_jax.algorithms.embedding_rm",
    "direct": "irl_jax.algorithms.direct",
    "spin": "irl_jax.algorithms.spin",
    "policy_gradient": "irl_jax.algorithms.policy_gradient",
    "ppo": "irl_jax.algorithms.ppo",
    "best_of_n": "irl_jax.algorithms.best_of_n",
    "raft": "irl_jax.algorithms.raft",
    "online_dpo": "irl_jax.algorithms.online_dpo",
    "adversarial": "irl_jax.algorithms.adversarial",  # GAIL / AIRL / FAIRL (adversarial.divergence)
    "pipeline": "irl_jax.algorithms.pipeline",  # stages of the above, in order
}


def module(name: str) -> ModuleType:
    """The module implementing algorithm ``name``."""
    if name not in MODULES:
        raise ConfigError(f"config.algorithm={name!r}; expected one of {sorted(MODULES)}")
    return importlib.import_module(MODULES[name])


def experiment_config(name: str) -> ml_collections.ConfigDict:
    """The base config (``irl_jax.config.base_config``) with algorithm ``name``'s section."""
    config = base_config(name)
    default = getattr(module(name), "default_config", None)
    if default is not None:
        config[name] = default()
    return config


def validate_config(
    config: ml_collections.ConfigDict,
    device_count: int | None = None,
    *,
    check_paths: bool = True,
) -> None:
    """Checks field names and values; raises ``ConfigError`` naming the field.

    Args:
      config: the experiment config (or a pipeline of them).
      device_count: devices to build the mesh on (default: all JAX devices).
      check_paths: also check that the directories the run reads from exist (``tokenizer``,
        ``init_from`` and the algorithm's ``validate_paths``); a pipeline turns this off for a
        stage that reads an earlier stage's output, which does not exist yet.
    """
    import jax

    algorithm = module(config.get("algorithm"))
    if config.algorithm == "pipeline":
        algorithm.validate(config)
        return
    check_keys(config, experiment_config(config.algorithm))
    devices = jax.devices()[: device_count or jax.device_count()]
    validate_base(config, devices)
    if hasattr(algorithm, "validate"):
        algorithm.validate(config)
    if check_paths:
        validate_paths(config)


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """The directories that ``config`` reads (``tokenizer``, ``init_from`` — a complete Hugging
    Face directory, see ``models.source.hf_dir_problem`` — and the algorithm's), and the
    sequence lengths against the weights' position table (``config.check_positions``)."""
    import os

    from irl_jax.config import check_positions, require
    from irl_jax.models.source import hf_dir_problem

    path = config.tokenizer
    require(not path or os.path.isdir(path), "tokenizer", f"directory {path!r} does not exist")
    problem = config.init_from and hf_dir_problem(config.init_from)
    require(not problem, "init_from", f"{config.init_from!r} {problem}")
    check_positions(config)
    algorithm = module(config.algorithm)
    if hasattr(algorithm, "validate_paths"):
        algorithm.validate_paths(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Validates ``config`` (once, before anything compiles), then runs ``config.algorithm`` in
    ``workdir``; returns its final evaluation metrics."""
    validate_config(config)
    return module(config.algorithm).train(config, workdir)
