"""The one base experiment config, and its validation (run before anything compiles).

Experiment files (``experiments/configs/*.py``) start from ``base_config(algorithm)`` and change a
few fields. Canonical fields: ``seed``, ``num_steps``, ``batch_size``, ``mesh_shape``,
``eval_every``, ``checkpoint_every``, ``model`` (a preset name or a Hugging Face directory) and
``data``; the algorithm's own options live in a section named after it (``config.dpo.beta``).
"""

from __future__ import annotations

import os

import ml_collections

from irl_jax.models.config import PRESETS


def base_config(algorithm: str = "sft") -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (a tiny model on a synthetic task, CPU-sized)."""
    c = ml_collections.ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    c.num_steps = 200
    c.batch_size = 32
    c.grad_accum_steps = 1
    c.mesh_shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.log_every = 10
    c.eval_every = 100
    c.eval_batch_size = 64
    c.checkpoint_every = 0
    c.keep_checkpoints = 2
    c.export = True  # write the final model as a Hugging Face directory in WORKDIR/export

    c.model = "gpt2-tiny"  # a preset name (irl_jax.models.PRESETS) or a local HF directory
    c.tokenizer = ""  # HF tokenizer directory; "" = the model directory or the task tokenizer
    c.init_from = ""  # HF directory (e.g. a previous stage's WORKDIR/export) to start from
    # Fields of ModelConfig to change; None keeps the preset's / checkpoint's value.
    c.model_overrides = ml_collections.ConfigDict(
        {
            "dtype": "float32",
            "param_dtype": "float32",
            "scan_layers": False,
            "remat": False,
            "hidden_size": ml_collections.FieldReference(None, field_type=int),
            "num_layers": ml_collections.FieldReference(None, field_type=int),
            "num_heads": ml_collections.FieldReference(None, field_type=int),
            "num_kv_heads": ml_collections.FieldReference(None, field_type=int),
            "intermediate_size": ml_collections.FieldReference(None, field_type=int),
        }
    )

    c.data = ml_collections.ConfigDict(
        {
            "task": "preference",  # synthetic task (irl_jax.tasks), used when `path` is ""
            "path": "",  # local JSON/JSONL/Parquet/CSV file or saved `datasets` directory
            "eval_path": "",
            "column_map": ml_collections.ConfigDict(),  # e.g. {"question": "prompt"}
            "num_train": 4096,  # rows generated from a synthetic task
            "num_eval": 512,
            "max_length": 48,
            "max_prompt_length": 0,  # 0: no separate prompt budget
            "seed": 0,
        }
    )
    # Policy evaluation (algorithms that produce a policy): samples on held-out prompts scored
    # by the gold reward (synthetic tasks) and learned rewards, KL to the reference, win rate.
    c.policy_eval = ml_collections.ConfigDict(
        {
            "num_prompts": 256,
            "max_new_tokens": 24,
            "temperature": 1.0,
            "batch_size": 128,
            "num_samples_to_log": 4,
        }
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": 1e-3,
            "warmup_steps": 10,
            "schedule": "cosine",
            "end_lr_fraction": 0.1,
            "weight_decay": 0.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "max_grad_norm": 1.0,
            "frozen": (),
        }
    )
    from irl_jax import algorithms

    section = algorithms.default_section(algorithm)
    if section is not None:
        c[algorithm] = section
    return c


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field."""


def _check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where):
    for key in config:
        if key not in reference:
            known = ", ".join(sorted(reference.keys()))
            raise ConfigError(f"unknown config field {where}{key!r}; known fields: {known}")
        value, expected = config[key], reference[key]
        if (
            isinstance(expected, ml_collections.ConfigDict)
            and len(expected)
            and isinstance(value, ml_collections.ConfigDict)
        ):
            _check_keys(value, expected, f"{where}{key}.")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def validate_config(
    config: ml_collections.ConfigDict,
    device_count: int | None = None,
    *,
    check_paths: bool = True,
) -> None:
    """Checks field names and values; raises ``ConfigError`` naming the field.

    Args:
      config: the experiment config.
      device_count: devices to build the mesh on (default: all JAX devices).
      check_paths: also check that the directories the run reads from exist (``tokenizer``,
        ``init_from`` and the algorithm's ``validate_paths``); a pipeline turns this off for a
        stage that reads an earlier stage's output, which does not exist yet.
    """
    import jax

    from irl_jax import algorithms
    from irl_jax import sharding as sharding_lib

    if config.get("algorithm") == "pipeline":
        algorithms.module("pipeline").validate(config)
        return
    if config.get("algorithm") not in algorithms.MODULES:
        raise ConfigError(
            f"config.algorithm={config.get('algorithm')!r}; expected one of "
            f"{sorted(algorithms.MODULES)}"
        )
    _check_keys(config, base_config(config.algorithm), "")
    _require(config.num_steps > 0, "num_steps", f"must be positive, got {config.num_steps}")
    _require(config.batch_size > 0, "batch_size", f"must be positive, got {config.batch_size}")
    _require(
        config.grad_accum_steps > 0 and config.batch_size % config.grad_accum_steps == 0,
        "grad_accum_steps",
        f"{config.grad_accum_steps} must divide batch_size={config.batch_size}",
    )
    for field in ("eval_every", "checkpoint_every", "log_every"):
        _require(config[field] >= 0, field, f"must be >= 0, got {config[field]}")
    _require(config.log_every > 0, "log_every", "must be positive")
    devices = jax.devices()[: device_count or jax.device_count()]
    try:
        mesh = sharding_lib.make_mesh(dict(config.mesh_shape), devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh_shape: {e}") from None
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    _require(
        (config.batch_size // config.grad_accum_steps) % batch_axes == 0,
        "batch_size",
        f"{config.batch_size} (per microbatch {config.batch_size // config.grad_accum_steps}) "
        f"must be divisible by the data-parallel size data*fsdp={batch_axes}",
    )
    _require(
        config.model in PRESETS or os.path.isfile(os.path.join(config.model, "config.json")),
        "model",
        f"{config.model!r} is neither a preset ({sorted(PRESETS)}) nor a directory with a "
        "config.json",
    )
    for field in ("tokenizer", "init_from") if check_paths else ():
        path = config[field]
        _require(not path or os.path.isdir(path), field, f"directory {path!r} does not exist")
    _require(config.optimizer.learning_rate > 0, "optimizer.learning_rate", "must be positive")
    _require(config.data.max_length > 1, "data.max_length", "must be > 1")
    if config.data.path:
        _require(os.path.exists(config.data.path), "data.path", f"{config.data.path!r} not found")
    else:
        from irl_jax.tasks import TASKS

        _require(
            config.data.task in TASKS,
            "data.task",
            f"{config.data.task!r} is not a synthetic task ({sorted(TASKS)}) and data.path is "
            "empty",
        )
    # The algorithm's own section (each module's ``validate(config)``) and the directories it
    # reads (``validate_paths(config)``).
    module = algorithms.module(config.algorithm)
    if hasattr(module, "validate"):
        module.validate(config)
    if check_paths and hasattr(module, "validate_paths"):
        module.validate_paths(config)
