"""Algorithms: each wires models to objectives and runs through the shared loop.

Every algorithm is a module with ``train(config, workdir) -> final metrics`` and, if it has
options, ``default_config() -> ConfigDict`` (its section of the experiment config, named after
the algorithm). ``run(config, workdir)`` dispatches on ``config.algorithm``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

# algorithm name -> module (imported on first use).
MODULES = {
    "sft": "irl_jax.algorithms.sft",
    "reward_model": "irl_jax.algorithms.reward_model",
    "embedding_rm": "irl_jax.algorithms.embedding_rm",
    "direct": "irl_jax.algorithms.direct",
    "spin": "irl_jax.algorithms.spin",
    "policy_gradient": "irl_jax.algorithms.policy_gradient",
    "pipeline": "irl_jax.algorithms.pipeline",  # stages of the above, in order
}


def module(name: str) -> ModuleType:
    """The module implementing algorithm ``name``."""
    if name not in MODULES:
        raise ValueError(f"config.algorithm={name!r}; expected one of {sorted(MODULES)}")
    return importlib.import_module(MODULES[name])


def default_section(name: str) -> ml_collections.ConfigDict | None:
    """The algorithm's option section (``None`` when it has no options)."""
    default = getattr(module(name), "default_config", None)
    return default() if default is not None else None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs ``config.algorithm`` in ``workdir``; returns its final evaluation metrics."""
    return module(config.algorithm).train(config, workdir)
