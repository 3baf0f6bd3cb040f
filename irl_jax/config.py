"""The base experiment config, and the checks of its shared fields (run before anything compiles).

Experiment files (``experiments/configs/*.py``) start from
``irl_jax.algorithms.experiment_config(algorithm)`` — this base plus the algorithm's own section,
named after it (``config.direct.beta``) — and change a few fields. This module knows no
algorithm: the algorithms import it, never the other way round.

Canonical fields: ``seed``, ``num_steps``, ``batch_size``, ``mesh_shape``, ``eval_every``,
``checkpoint_every``, ``model`` (a preset name or a Hugging Face directory), ``data``,
``optimizer`` (the trained model's; a second trained model has its own, e.g.
``critic.optimizer``), ``sampling`` and ``reward`` (shared by every algorithm that samples or
scores responses) and ``policy_eval``. ``resume_policy`` and ``on_nonfinite`` say what a run
does with a checkpoint saved under another config and with a non-finite loss or gradient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from irl_jax.models.config import PRESETS, REMAT_POLICIES
from irl_jax.models.lora import DEFAULT_TARGETS, QUANTIZATIONS

REWARD_SOURCES = ("gold", "verifier", "model", "functions")
RESUME_POLICIES = ("check", "ignore_config")
ON_NONFINITE = ("stop", "skip_step")
# Fields that may change when a run resumes (how long it runs, how often it logs, evaluates and
# saves, and these policies); any other difference from the checkpoint's config is refused.
RESUMABLE_FIELDS = frozenset(
    {
        "num_steps",
        "eval_every",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "resume_policy",
        "on_nonfinite",
    }
)
ENSEMBLE_AGGREGATIONS = ("mean", "wco", "uwo")
STEP_AGGREGATIONS = ("mean", "min", "last")


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field."""


def require(condition: bool, field: str, message: str) -> None:
    """Raises ``ConfigError("config.<field>: <message>")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def check_fields(
    section: ml_collections.ConfigDict,
    where: str,
    *,
    choices: dict[str, tuple] | None = None,
    at_least: dict[str, float] | None = None,
) -> None:
    """``section.<field>`` (``config.<where>.<field>``) is one of ``choices[field]`` and at least
    ``at_least[field]``; raises ``ConfigError`` naming the first field that is not."""
    for field, options in (choices or {}).items():
        value = section[field]
        require(value in options, f"{where}.{field}", f"{value!r} not in {options}")
    for field, low in (at_least or {}).items():
        value = section[field]
        require(value >= low, f"{where}.{field}", f"must be >= {low}, got {value}")


def optimizer_config(learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
    """An ``optimizer`` section (``irl_jax.train.optimizer_from_config``); every trained model
    has one."""
    return ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": learning_rate,
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


def lora_config() -> ml_collections.ConfigDict:
    """``config.lora``: LoRA / QLoRA of the trained decoders (``irl_jax.models.lora``);
    ``rank`` 0 trains every weight (full fine-tuning)."""
    return ml_collections.ConfigDict(
        {
            "rank": 0,
            "alpha": 16.0,
            "dropout": 0.0,
            "targets": DEFAULT_TARGETS,  # regex over Dense module paths (layer_0/attn/q, …)
            "quantize": "none",  # QLoRA: "int8" or "int4" frozen base kernels
            "group_size": 64,  # int4 absmax group along the contracted axis
            "embeddings": False,  # also train the token embedding table (a full-size delta)
        }
    )


def lora_settings(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """``config.lora`` as ``LoraConfig`` fields, or None when LoRA is off (rank 0)."""
    section = config.get("lora")
    if section is None or section.rank == 0:
        return None
    return dict(section)


def check_lora(section: ml_collections.ConfigDict) -> None:
    """Checks ``config.lora``; raises ``ConfigError`` naming the field."""
    import re

    require(section.rank >= 0, "lora.rank", f"must be >= 0, got {section.rank}")
    require(section.alpha > 0, "lora.alpha", f"must be positive, got {section.alpha}")
    require(0 <= section.dropout < 1, "lora.dropout", f"must be in [0, 1), got {section.dropout}")
    require(
        section.group_size > 0, "lora.group_size", f"must be positive, got {section.group_size}"
    )
    require(
        section.quantize in QUANTIZATIONS,
        "lora.quantize",
        f"{section.quantize!r} not in {QUANTIZATIONS}",
    )
    require(
        section.quantize == "none" or section.rank > 0,
        "lora.quantize",
        "a quantized (frozen) base needs adapters to train: set lora.rank > 0",
    )
    require(
        not section.get("embeddings", False) or section.rank > 0,
        "lora.embeddings",
        "trains the embedding table beside the adapters: set lora.rank > 0 (rank 0 is full "
        "fine-tuning, which trains it anyway)",
    )
    try:
        re.compile(section.targets)
    except re.error as e:
        raise ConfigError(f"config.lora.targets: {section.targets!r}: not a regex ({e})") from None


def sampling_config() -> ml_collections.ConfigDict:
    """``config.sampling``: how an algorithm that trains on its own samples draws them."""
    return ml_collections.ConfigDict(
        {
            "max_new_tokens": 24,  # L_max, the generation budget
            "temperature": 1.0,
            "top_k": 0,  # 0 = off
            "top_p": 1.0,  # 1 = off
            "group_size": 1,  # responses per prompt (GRPO / RLOO groups)
        }
    )


def reward_config() -> ml_collections.ConfigDict:
    """``config.reward``: the reward source of algorithms that score samples."""
    return ml_collections.ConfigDict(
        {
            # gold | verifier (synthetic tasks) | model (a reward-model export) | functions
            "source": "gold",
            # source="model": a reward-model export directory (e.g. runs/rm/export), or several
            # separated by commas: an ensemble of independently trained models
            "model": "",
            "aggregation": "mean",  # an ensemble reward model's mean | wco | uwo
            "uwo_penalty": 0.0,  # uwo's λ on the members' variance
            # A process reward model's response score from its step-boundary scores.
            "step_aggregation": "min",  # mean | min | last
            # source="functions": user reward functions (irl_jax.user_rewards), e.g.
            # "my_rewards:exact_match,checks.py:format_ok", summed with `weights` ("1.0,0.2";
            # "" = all 1); host functions get `timeout` seconds per call (0: none) and run in
            # `num_workers` processes (0: in this one).
            "functions": "",
            "weights": "",
            "timeout": 300.0,
            "num_workers": 0,
        }
    )


def base_config(algorithm: str = "sft") -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (a tiny model on a synthetic task, CPU-sized), without
    the algorithm's own section (see ``irl_jax.algorithms.experiment_config``)."""
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
    # Resuming from a checkpoint saved with another config: "check" refuses (naming the fields
    # that differ, except RESUMABLE_FIELDS); "ignore_config" resumes anyway.
    c.resume_policy = "check"
    # A non-finite loss or gradient norm: "stop" (with the newest good checkpoint kept), or
    # "skip_step" (that update is discarded on device and training goes on).
    c.on_nonfinite = "stop"

    c.model = "gpt2-tiny"  # a preset name (irl_jax.models.PRESETS) or a local HF directory
    c.tokenizer = ""  # HF tokenizer directory; "" = the model directory or the task tokenizer
    c.init_from = ""  # HF directory (e.g. a previous stage's WORKDIR/export) to start from
    # Fields of ModelConfig to change; None keeps the preset's / checkpoint's value.
    c.model_overrides = ml_collections.ConfigDict(
        {
            "dtype": "float32",
            "param_dtype": "float32",
            "scan_layers": False,
            # A policy of irl_jax.models.config.REMAT_POLICIES ("True" / "False": full / none).
            "remat": "none",
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
            # RL prompt batches: trimmed to the smallest of these widths that holds the batch's
            # longest prompt (one compile per width used); (): always the full prompt budget.
            "prompt_buckets": (),
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
    c.optimizer = optimizer_config()
    c.lora = lora_config()
    c.sampling = sampling_config()
    c.reward = reward_config()
    return c


def check_keys(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where: str = ""
) -> None:
    """Every field of ``config`` exists in ``reference`` (recursively); raises ``ConfigError``
    naming the unknown field and the known ones."""
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
            check_keys(value, expected, f"{where}{key}.")


def check_optimizer(section: ml_collections.ConfigDict, where: str) -> None:
    """An ``optimizer`` section's values."""
    require(section.learning_rate > 0, f"{where}.learning_rate", "must be positive")
    require(section.warmup_steps >= 0, f"{where}.warmup_steps", "must be >= 0")


def check_sampling(section: ml_collections.ConfigDict, where: str = "sampling") -> None:
    """``config.sampling``'s values."""
    s = section
    require(
        s.max_new_tokens >= 1, f"{where}.max_new_tokens", f"must be >= 1, got {s.max_new_tokens}"
    )
    require(s.temperature > 0, f"{where}.temperature", f"must be > 0, got {s.temperature}")
    require(s.top_k >= 0, f"{where}.top_k", f"must be >= 0, got {s.top_k}")
    require(0 < s.top_p <= 1, f"{where}.top_p", f"must be in (0, 1], got {s.top_p}")
    require(s.group_size >= 1, f"{where}.group_size", f"must be >= 1, got {s.group_size}")


def check_reward(config: ml_collections.ConfigDict) -> None:
    """``config.reward`` of an algorithm that scores samples: its values, and a source that
    exists for this data (a gold reward needs a synthetic task)."""
    r = config.reward
    require(r.source in REWARD_SOURCES, "reward.source", f"{r.source!r} not in {REWARD_SOURCES}")
    require(
        r.aggregation in ENSEMBLE_AGGREGATIONS,
        "reward.aggregation",
        f"{r.aggregation!r} not in {ENSEMBLE_AGGREGATIONS}",
    )
    require(r.uwo_penalty >= 0, "reward.uwo_penalty", f"must be >= 0, got {r.uwo_penalty}")
    require(
        r.step_aggregation in STEP_AGGREGATIONS,
        "reward.step_aggregation",
        f"{r.step_aggregation!r} not in {STEP_AGGREGATIONS}",
    )
    require(
        r.source in ("model", "functions") or not config.data.path,
        "reward.source",
        f"{r.source!r} needs a synthetic task (data.task) with a known reward, not a data file "
        "(data.path); score file data with your own reward functions (reward.source="
        "'functions', reward.functions='my_rewards:exact_match') or a trained reward model "
        "(reward.source='model')",
    )
    check_reward_functions(r)


def check_reward_functions(r: ml_collections.ConfigDict) -> None:
    """``reward.functions`` (set exactly when ``reward.source="functions"``) load, and their
    weights, timeout and workers are valid."""
    if r.source != "functions":
        require(
            not r.functions,
            "reward.functions",
            f"is set but reward.source={r.source!r}: set reward.source='functions' to use them",
        )
        return
    from irl_jax import user_rewards

    specs = user_rewards.parse_list(r.functions)
    require(bool(specs), "reward.functions", "reward.source='functions' needs 'module:function'")
    try:
        for spec in specs:
            user_rewards.load_function(spec)
    except user_rewards.UserRewardError as e:
        raise ConfigError(f"config.reward.functions: {e}") from None
    try:
        user_rewards.parse_weights(r.weights, len(specs))
    except user_rewards.UserRewardError as e:
        raise ConfigError(f"config.reward.weights: {e}") from None
    require(r.timeout >= 0, "reward.timeout", f"must be >= 0 (0: none), got {r.timeout}")
    require(r.num_workers >= 0, "reward.num_workers", f"must be >= 0, got {r.num_workers}")


def check_minibatches(config: ml_collections.ConfigDict, num_minibatches: int, field: str) -> None:
    """The ``batch_size · sampling.group_size`` responses of an RL iteration split into
    ``num_minibatches × grad_accum_steps`` parts, each divisible by the data-parallel size."""
    from irl_jax import sharding as sharding_lib

    rows = config.batch_size * config.sampling.group_size
    mesh = sharding_lib.make_mesh(dict(config.mesh_shape))
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    parts = num_minibatches * config.grad_accum_steps
    require(
        rows % parts == 0 and (rows // parts) % data_parallel == 0,
        field,
        f"batch_size · group_size = {rows} responses must split into num_minibatches="
        f"{num_minibatches} × grad_accum_steps={config.grad_accum_steps} parts each divisible "
        f"by the data-parallel size {data_parallel}",
    )


def check_reward_paths(config: ml_collections.ConfigDict) -> None:
    """A learned reward (``reward.source="model"``) must be a complete Hugging Face directory."""
    from irl_jax.models.source import hf_dir_problem

    r = config.reward
    if r.source != "model":
        return
    for path in reward_model_paths(r.model) or [r.model]:
        problem = hf_dir_problem(path)
        require(
            problem is None,
            "reward.model",
            f"{path!r} {problem}; reward.source="
            "'model' scores with a trained reward model: run `python -m experiments.run "
            "--config=experiments/configs/rm_bt.py --workdir=runs/rm` and set "
            "--config.reward.model=runs/rm/export",
        )


def reward_model_paths(model: str) -> list[str]:
    """``reward.model`` as a list of export directories: one, or several separated by commas
    (an ensemble of independently trained reward models, combined by ``reward.aggregation``)."""
    return [path.strip() for path in model.split(",") if path.strip()]


def validate_base(config: ml_collections.ConfigDict, devices: list | None = None) -> dict[str, int]:
    """Checks the shared fields' values; raises ``ConfigError`` naming the field.

    Args:
      config: the experiment config (field names already checked).
      devices: the devices the mesh is built on (default: all JAX devices).

    Returns:
      The mesh shape ``{axis: size}`` the config resolves to.
    """
    import jax

    from irl_jax import sharding as sharding_lib

    require(config.num_steps > 0, "num_steps", f"must be positive, got {config.num_steps}")
    require(config.batch_size > 0, "batch_size", f"must be positive, got {config.batch_size}")
    require(0 <= config.seed < 2**31, "seed", f"must be in [0, 2**31), got {config.seed}")
    require(
        config.grad_accum_steps > 0 and config.batch_size % config.grad_accum_steps == 0,
        "grad_accum_steps",
        f"{config.grad_accum_steps} must divide batch_size={config.batch_size}",
    )
    for field in ("eval_every", "checkpoint_every"):
        require(config[field] >= 0, field, f"must be >= 0, got {config[field]}")
    require(config.log_every > 0, "log_every", f"must be positive, got {config.log_every}")
    for field, options in (("resume_policy", RESUME_POLICIES), ("on_nonfinite", ON_NONFINITE)):
        require(config[field] in options, field, f"{config[field]!r} not in {options}")
    require(
        config.keep_checkpoints >= 1,
        "keep_checkpoints",
        f"must be >= 1 (the newest checkpoint is how a run resumes), got {config.keep_checkpoints}",
    )
    try:
        mesh = sharding_lib.make_mesh(dict(config.mesh_shape), devices or jax.devices())
    except ValueError as e:
        raise ConfigError(f"config.mesh_shape: {e}") from None
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.batch_size // config.grad_accum_steps
    require(
        micro % data_parallel == 0,
        "batch_size",
        f"{config.batch_size} (per microbatch {micro}) must be divisible by the data-parallel "
        f"size data*fsdp={data_parallel}",
    )
    require(
        config.eval_batch_size > 0 and config.eval_batch_size % data_parallel == 0,
        "eval_batch_size",
        f"{config.eval_batch_size} must be positive and divisible by the data-parallel size "
        f"data*fsdp={data_parallel}",
    )
    from irl_jax.models.source import hf_dir_problem

    problem = None if config.model in PRESETS else hf_dir_problem(config.model)
    require(
        problem is None,
        "model",
        f"{config.model!r} is neither a preset ({sorted(PRESETS)}) nor a complete Hugging Face "
        f"directory (it {problem})",
    )
    overrides, base = config.model_overrides, PRESETS.get(config.model)
    hidden = overrides.hidden_size or (base.hidden_size if base else None)
    heads = overrides.num_heads or (base.num_heads if base else None)
    require(
        hidden is None or heads is None or hidden % heads == 0,
        "model_overrides.hidden_size",
        f"{hidden} is not divisible by num_heads={heads} (transformers refuses such a checkpoint)",
    )
    check_optimizer(config.optimizer, "optimizer")
    check_lora(config.lora)
    remat = str(overrides.remat)
    require(
        remat in REMAT_POLICIES + ("True", "False", "true", "false"),
        "model_overrides.remat",
        f"{remat!r} not in {REMAT_POLICIES}",
    )
    check_sampling(config.sampling)
    require(config.data.max_length > 1, "data.max_length", "must be > 1")
    budget = config.data.max_prompt_length or config.data.max_length
    buckets = tuple(config.data.get("prompt_buckets", ()))
    require(
        all(isinstance(b, int) and 0 < b <= budget for b in buckets),
        "data.prompt_buckets",
        f"{buckets}: expected prompt widths in [1, {budget}] (the prompt budget)",
    )
    if config.data.path:
        require(os.path.exists(config.data.path), "data.path", f"{config.data.path!r} not found")
    else:
        from irl_jax.tasks import TASKS

        require(
            config.data.task in TASKS,
            "data.task",
            f"{config.data.task!r} is not a synthetic task ({sorted(TASKS)}) and data.path is "
            "empty",
        )
    p = config.policy_eval
    for field in ("num_prompts", "max_new_tokens", "batch_size"):
        require(p[field] >= 1, f"policy_eval.{field}", f"must be >= 1, got {p[field]}")
    require(p.temperature > 0, "policy_eval.temperature", f"must be > 0, got {p.temperature}")
    eval_rows = min(p.batch_size, p.num_prompts)
    require(
        eval_rows % data_parallel == 0,
        "policy_eval.batch_size",
        f"a policy evaluation batch of min(batch_size={p.batch_size}, num_prompts="
        f"{p.num_prompts}) = {eval_rows} prompts must be divisible by the data-parallel size "
        f"data*fsdp={data_parallel}",
    )
    check_positions(config)
    return dict(mesh.shape)


def check_positions(config: ml_collections.ConfigDict) -> None:
    """Sequences fit a learned position table (GPT-2): ``data.max_length`` tokens, and a prompt
    (``data.max_prompt_length``, else ``data.max_length``) plus the generation budget of
    ``policy_eval`` and of ``sampling`` (past the table, positions would read no embedding).
    Skipped while the weights' directory does not exist yet (a pipeline's ``@stage``)."""
    from irl_jax.models import hf_config
    from irl_jax.models.source import is_hf_dir, weights_dir

    source = weights_dir(config.model, config.init_from)
    if source and not is_hf_dir(source):
        return
    model = hf_config.config_from_hf(hf_config.read_config(source))[0] if source else None
    model = model or PRESETS.get(config.model)
    if model is None or not model.is_gpt2:
        return
    positions, name = model.max_position_embeddings, source or config.model
    data = config.data
    require(
        data.max_length <= positions,
        "data.max_length",
        f"{data.max_length} exceeds the {positions} positions of {name!r}",
    )
    prompt = data.max_prompt_length or data.max_length
    for section in ("policy_eval", "sampling"):
        new_tokens = config[section].max_new_tokens
        require(
            prompt + new_tokens <= positions,
            f"{section}.max_new_tokens",
            f"a prompt of up to {prompt} tokens (data.max_prompt_length, else data.max_length) "
            f"+ {new_tokens} new tokens exceeds the {positions} positions of {name!r}; lower "
            f"{section}.max_new_tokens or data.max_prompt_length",
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of nested dicts, leaves as JSON reads them back (tuples as lists)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
    return flat


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` of the fields whose values differ, except
    ``RESUMABLE_FIELDS`` and ``ignore``. A field that the saved config lacks (one added to the
    code since) does not count."""
    saved, current = _flatten(saved), _flatten(current)
    skipped = RESUMABLE_FIELDS | set(ignore)
    return {
        field: (saved[field], current.get(field))
        for field in saved
        if field not in skipped and saved[field] != current.get(field)
    }


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``"batch_size: 32 → 64, data.path: 'a' → 'b'"``."""
    return ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in sorted(differences.items()))


def schedules_depending_on_num_steps(config: Mapping[str, Any]) -> list[str]:
    """The optimizer schedules of ``config`` that decay over ``num_steps`` (not ``constant``),
    as ``"optimizer.schedule='cosine'"``."""
    return [
        f"{field}={value!r}"
        for field, value in _flatten(config).items()
        if field.split(".")[-1] == "schedule" and isinstance(value, str) and value != "constant"
    ]
