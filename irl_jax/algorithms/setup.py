"""What every algorithm builds from its config, once: ``setup`` (mesh, tokenizer, model config,
weights, data) and ``run`` (the shared loop with the config's loop settings, then export).

An algorithm's ``train`` reads as: ``setup`` → its models and ``TrainState`` → its step →
``run``. Also here: the config-facing wiring the algorithms share — tokenizing the config's data,
prompt arrays, the configured reward source and the policy evaluator.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from irl_jax import rewards as rewards_lib
from irl_jax import sharding as sharding_lib
from irl_jax import user_rewards
from irl_jax.config import ConfigError, lora_settings, reward_model_paths
from irl_jax.data.iterator import BatchIterator, trim_prompts
from irl_jax.models import ModelConfig, Transformer, hf, lora
from irl_jax.models import source as model_source
from irl_jax.train import ModelState, TrainState, create_model, create_state, train_loop
from irl_jax.train.loop import Evaluate
from irl_jax.train.state import SharedBase, attach
from irl_jax.workdir import publish_directory


@dataclasses.dataclass(frozen=True)
class Setup:
    """Built once per run from the config (see ``setup``).

    Attributes:
      config: the experiment config.
      mesh: the device mesh of ``config.mesh_shape``.
      tokenizer: ``config.tokenizer``, else the weights' directory's, else the task tokenizer.
      model_config: the policy / backbone ``ModelConfig``.
      weights: the Hugging Face directory the weights come from ("" for a random init).
      task: the synthetic task, or ``None`` for file data (no known reward).
      data: what the algorithm's ``load_data(config, tokenizer)`` returned.
    """

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    tokenizer: Any
    model_config: ModelConfig
    weights: str
    task: Any
    data: Any = None

    @property
    def overrides(self) -> dict[str, Any]:
        """``config.model_overrides`` without the unset (``None``) fields."""
        return {k: v for k, v in self.config.model_overrides.items() if v is not None}

    def load_weights(self) -> Any:
        """The weights of ``self.weights`` placed into their shardings, or ``None``."""
        if not self.weights:
            return None
        return model_source.load_params(self.weights, self.mesh, self.overrides)


def load_tokenizer(config: ml_collections.ConfigDict) -> Any:
    """``config.tokenizer``, else the weights' directory, else the synthetic task tokenizer."""
    weights = model_source.weights_dir(config.model, config.init_from)
    for path in (config.tokenizer, weights, config.model):
        if path and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
            return hf.load_tokenizer(path)
    if config.tokenizer:
        return hf.load_tokenizer(config.tokenizer)  # raises a clear error
    from irl_jax.tasks import build_tokenizer

    return build_tokenizer()


def task_of(config: ml_collections.ConfigDict) -> Any:
    """The synthetic task (``data.task``), or ``None`` when the data is a file."""
    if config.data.path:
        return None
    from irl_jax.tasks import get_task

    return get_task(config.data.task)


def setup(
    config: ml_collections.ConfigDict,
    load_data: Callable[[ml_collections.ConfigDict, Any], Any] | None = None,
    *,
    devices: list | None = None,
) -> Setup:
    """Mesh (over ``devices``, default all), tokenizer, model config and data of a (validated)
    config."""
    mesh = sharding_lib.make_mesh(dict(config.mesh_shape), devices)
    tokenizer = load_tokenizer(config)
    overrides = dict(config.model_overrides)
    model_config = model_source.resolve_config(
        config.model, config.init_from, tokenizer=tokenizer, overrides=overrides
    )
    if (settings := lora_settings(config)) is not None:
        model_config = model_config.replace(lora=lora.LoraConfig(**settings))
    weights = model_source.weights_dir(config.model, config.init_from)
    data = load_data(config, tokenizer) if load_data is not None else None
    return Setup(config, mesh, tokenizer, model_config, weights, task_of(config), data)


def create_policy(
    setup: Setup, optimizer: optax.GradientTransformation, module: Any = None
) -> tuple[ModelState, ModelState]:
    """The trained policy (``module``, default the decoder) from the weights or a random init,
    directly into its shardings (with ``config.lora``: frozen base weights, trained adapters).
    """
    module = module if module is not None else Transformer(setup.model_config)
    init = model_source.init_fn(module, setup.config.seed)
    policy = create_model(init, optimizer, setup.mesh, params=setup.load_weights())
    if setup.model_config.lora is not None and not lora.has_adapters(policy[0].params):
        targets = setup.model_config.lora.targets
        raise ConfigError(f"config.lora.targets={targets!r} matches no layer")
    return policy


def policy_state(
    setup: Setup,
    optimizer: optax.GradientTransformation,
    *,
    frozen: tuple[str, ...] = ("reference",),
    models: dict[str, tuple[ModelState, ModelState]] | None = None,
    extras: Callable[[], Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """The ``TrainState`` of an algorithm that trains a policy: the ``policy`` (``create_policy``)
    and any other trained ``models``, a frozen copy of the initial policy under each name of
    ``frozen`` (e.g. the reference π_ref), and ``extras``. With LoRA a frozen copy is a
    ``SharedBase``: the policy's base weights (not copied) with the initial adapters, i.e. the
    base model (``B = 0``)."""
    policy = create_policy(setup, optimizer)
    initial = (policy[0].params, policy[1].params)
    if lora.has_adapters(initial[0]):
        initial = tuple(SharedBase(lora.adapters_only(tree)) for tree in initial)
    return create_state(
        setup.mesh,
        seed=setup.config.seed,
        models={"policy": policy, **(models or {})},
        frozen={name: initial for name in frozen},
        extras=extras,
    )


# ----------------------------------------------------------------------------- data


def tokenize(
    config: ml_collections.ConfigDict, tokenizer: Any, source: Any, kind: str, **options
) -> dict[str, np.ndarray]:
    """``load_and_tokenize`` with ``config.data``'s lengths and column map."""
    from irl_jax.data import load_and_tokenize

    data = config.data
    arrays, _ = load_and_tokenize(
        source,
        tokenizer,
        kind,
        data.max_length,
        max_prompt_length=data.max_prompt_length or None,
        column_map=dict(data.column_map) or None,
        **options,
    )
    return arrays


def demonstrations(config: ml_collections.ConfigDict, tokenizer: Any):
    """Tokenized SFT ``(train, eval)`` arrays: ``data.path`` / ``data.eval_path``, or the
    synthetic task's demonstrations (evaluation on held-out prompts)."""
    data, task = config.data, task_of(config)
    if task is None:
        return (
            tokenize(config, tokenizer, data.path, "sft"),
            tokenize(config, tokenizer, data.eval_path or data.path, "sft"),
        )
    train = task.demonstrations(data.num_train, data.seed)
    held_out = task.demonstrations(data.num_eval, data.seed + 1, split="eval")
    return tokenize(config, tokenizer, train, "sft"), tokenize(config, tokenizer, held_out, "sft")


def prompt_arrays(
    config: ml_collections.ConfigDict, tokenizer: Any, num: int, seed: int, split: str = "train"
) -> dict[str, np.ndarray]:
    """Left-padded ``prompt_ids``/``prompt_mask`` ``[num, P]``: the synthetic task's prompts of
    ``split`` (evaluation prompts never occur in training), or the first ``num`` prompts of
    ``data.path`` (``split="train"``) / ``data.eval_path`` (``"eval"``, else ``data.path``).

    P is the longest of these prompts, not the prompt budget (``data.max_prompt_length``, else
    ``data.max_length``), which only truncates: every sampler, reference and update then runs
    on no more prompt columns than the data needs (one static width, compiled once; what
    ``data.prompt_buckets`` cuts further per batch)."""
    task = task_of(config)
    if task is None:
        source = config.data.eval_path if split == "eval" and config.data.eval_path else None
        source = source or config.data.path
    else:
        source = [{"prompt": p} for p in task.prompts(num, seed, split=split)]
    arrays = {k: v[:num] for k, v in tokenize(config, tokenizer, source, "prompt").items()}
    return trim_prompts(arrays, max(int(arrays["prompt_mask"].sum(-1).max(initial=0)), 1))


# ----------------------------------------------------------------------------- rewards


def reward_source(setup: Setup) -> tuple[str, Any]:
    """``(name, source)`` of ``config.reward``: the task's gold reward (``gold``), its text
    checker on decoded strings (``verifier``), a reward-model export or several exports
    combined as one ensemble (``model``; a process reward model is named
    ``prm_<step_aggregation>``) or the user's reward functions
    (``user``: ``irl_jax.user_rewards``, which also logs each function's mean)."""
    r = setup.config.reward
    if r.source == "functions":
        try:
            return "user", user_rewards.from_config(setup.config, setup.tokenizer)
        except user_rewards.UserRewardError as e:
            raise ConfigError(f"config.reward.functions: {e}") from None
    if r.source == "model" and len(paths := reward_model_paths(r.model)) > 1:
        try:
            return "model", rewards_lib.load_ensemble(
                paths,
                mesh=setup.mesh,
                vocab_size=setup.model_config.vocab_size,
                aggregation=r.aggregation,
                uwo_penalty=r.uwo_penalty,
                overrides=setup.overrides,
            )
        except ValueError as e:
            raise ConfigError(f"config.reward.model: {e}") from None
    if r.source == "model":
        try:
            source = rewards_lib.load_reward_model(
                r.model,
                mesh=setup.mesh,
                vocab_size=setup.model_config.vocab_size,
                aggregation=r.aggregation,
                uwo_penalty=r.uwo_penalty,
                step_aggregation=r.step_aggregation,
                overrides=setup.overrides,
            )
        except ValueError as e:
            raise ConfigError(f"config.reward.model: {e}") from None
        if isinstance(source, rewards_lib.ProcessReward):
            return f"prm_{r.step_aggregation}", source
        return "model", source
    if setup.task is None:
        raise ConfigError(f"config.reward.source={r.source!r} needs a synthetic task (data.task)")
    if r.source == "gold":
        return "gold", rewards_lib.as_pytree(setup.task.gold_reward)
    return "verifier", rewards_lib.verifier(setup.task.gold_reward_text, setup.tokenizer)


def gold_sources(setup: Setup) -> dict[str, Any]:
    """``{"gold": task.gold_reward}`` on a synthetic task, else ``{}`` (no known truth)."""
    return {} if setup.task is None else {"gold": setup.task.gold_reward}


def policy_evaluator(
    setup: Setup, reward_sources: Mapping[str, Any] | None = None
) -> Callable[[Any, Any], tuple[dict[str, float], list[dict[str, Any]]]]:
    """``(params, ref_params) -> (metrics, samples)``: the policy against the reference on
    ``config.policy_eval`` held-out prompts (gold reward, ``reward_sources``, KL, win rate) via
    ``irl_jax.evaluation.evaluate_policy``, and on a synthetic task the divergences to its
    demonstrator (``demonstrator_divergence``)."""
    from irl_jax.evaluation import evaluate_policy

    config = setup.config
    settings = config.policy_eval
    prompts = prompt_arrays(
        config, setup.tokenizer, settings.num_prompts, config.data.seed + 7, split="eval"
    )
    sources = {**gold_sources(setup), **(reward_sources or {})}
    batch_size = min(settings.batch_size, len(prompts["prompt_ids"]))
    data = sharding_lib.batch_sharding(setup.mesh)
    divergence = demonstrator_divergence(setup, len(prompts["prompt_ids"]), batch_size)

    def evaluate(params, ref_params):
        with jax.set_mesh(setup.mesh):
            metrics, samples = evaluate_policy(
                setup.model_config,
                params,
                ref_params,
                prompts["prompt_ids"],
                prompts["prompt_mask"],
                reward_fns=sources,
                rng=jax.random.key(config.seed + 11),
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                tokenizer=setup.tokenizer,
                num_samples_to_log=settings.num_samples_to_log,
                batch_size=batch_size,
                data_sharding=data,
                sample_metrics=divergence.samples if divergence else None,
            )
            if divergence:
                metrics.update(divergence.forward(params))
            return metrics, samples

    return evaluate


def demonstrator_divergence(setup: Setup, num_prompts: int, batch_size: int) -> Any:
    """``irl_jax.evaluation.divergence.DemonstratorDivergence`` for ``policy_evaluator``'s
    prompts (and as many held-out demonstrations), or ``None`` without a synthetic task whose
    demonstrator gives per-token log-probabilities."""
    from irl_jax.algorithms.sft import make_nll_fn
    from irl_jax.evaluation import divergence

    task, config = setup.task, setup.config
    if task is None or not divergence.has_token_logprobs(task):
        return None
    texts = task.prompts(num_prompts, config.data.seed + 7, split="eval")  # prompt_arrays' rows
    held_out = task.demonstrations(num_prompts, config.data.seed + 1, split="eval")
    return divergence.DemonstratorDivergence(
        task,
        texts,
        {"prompt": held_out["prompt"], "completion": held_out["completion"]},
        tokenize(config, setup.tokenizer, held_out, "sft"),
        make_nll_fn(setup.model_config, setup.mesh),
        vocab_size=setup.model_config.vocab_size,
        batch_size=batch_size,
        mesh=setup.mesh,
    )


# ----------------------------------------------------------------------------- running


def export_model(path: str, model_config: ModelConfig, params: Any, tokenizer: Any) -> str:
    """Writes a model as a Hugging Face directory (process 0; every process joins the gather,
    since params may span hosts)."""
    host_params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        hf.save_pretrained(path, model_config, host_params, tokenizer=tokenizer)
        logging.info("exported the final model to %s", path)
    return path


def run(
    setup: Setup,
    workdir: str,
    *,
    state: TrainState,
    shardings: TrainState,
    step: Callable[[TrainState, Any], tuple[TrainState, Any]],
    data: Any,
    evaluate: Evaluate | None,
    export: Callable[[TrainState, str], Any] | None = None,
    description: str,
) -> dict[str, float]:
    """``train_loop`` with the config's loop settings. ``data`` is a dict of tokenized arrays
    (batched by ``BatchIterator`` with ``config.batch_size``), or one or several named
    resumable iterators. ``export(state, directory)`` runs at the end when ``config.export``;
    by default the trained ``policy`` is exported as a causal-LM directory. It writes into a
    temporary directory that becomes ``WORKDIR/export`` only when complete (with
    ``models.source.COMPLETE_MARKER``), so an interrupted export never leaves a partial
    ``WORKDIR/export``. Returns the final evaluation's metrics."""
    config = setup.config
    if isinstance(data, Mapping) and all(isinstance(v, np.ndarray) for v in data.values()):
        data = BatchIterator(data, config.batch_size, seed=config.seed)
    if export is None and "policy" in state.models:
        export = export_policy(setup)
    path = os.path.join(workdir, "export")

    def write_export(state: TrainState) -> None:
        write = lambda directory: export(state, directory)
        publish_directory(write, path, model_source.COMPLETE_MARKER)

    # A user reward function's error is raised once the step (or evaluation) that met it has
    # run, before its state is saved (this waits for each step: only with such functions).
    uses_functions = "reward" in config and config.reward.source == "functions"
    checked = user_rewards.checked if uses_functions else (lambda fn: fn)
    _, final = train_loop(
        state=state,
        state_shardings=shardings,
        train_step=checked(step),
        batches=data,
        mesh=setup.mesh,
        workdir=workdir,
        num_steps=config.num_steps,
        # Evaluations see frozen params that share a LoRA model's base as full params.
        evaluate=checked(lambda state: evaluate(attach(state))) if evaluate is not None else None,
        export=write_export if export and config.export else None,
        config=config.to_dict(),
        eval_every=config.eval_every,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        on_nonfinite=config.on_nonfinite,
        description=description,
    )
    return final


class Built(NamedTuple):
    """An RL algorithm wired from its config (its ``build``): ``train_policy`` runs it, tests
    drive ``step`` directly.

    Attributes:
      data: one resumable ``BatchIterator``, or named ones (``{"prompts": ..., "demos": ...}``).
      reward_name, source: the training reward source (``reward_source``); a learned one is
        scored in the policy evaluation too (``"gold"`` / ``"verifier"`` are scored anyway).
    """

    setup: Setup
    state: TrainState
    shardings: TrainState
    step: Callable[[TrainState, Any], tuple[TrainState, Any]]
    data: Any
    reward_name: str = "gold"
    source: Any = None


def train_policy(
    built: Built,
    workdir: str,
    description: str,
    *,
    baseline: str = "reference",
    evaluate_policy: bool = True,
) -> dict[str, float]:
    """``run`` for an algorithm that trains a ``policy``: evaluated (``policy_evaluator``)
    against the frozen model ``baseline`` (``reference`` where the state has no such model;
    never with ``evaluate_policy=False``), exported at the end. Returns the final evaluation."""
    learned = {}
    if built.source is not None and built.reward_name not in ("gold", "verifier"):
        learned = {built.reward_name: built.source}
    evaluator = policy_evaluator(built.setup, learned) if evaluate_policy else None

    def evaluate(state: TrainState):
        frozen = state.frozen.get(baseline, state.frozen["reference"])
        return evaluator(state.models["policy"].params, frozen)

    return run(
        built.setup,
        workdir,
        state=built.state,
        shardings=built.shardings,
        step=built.step,
        data=built.data,
        evaluate=evaluate if evaluate_policy else None,
        description=description,
    )


def export_policy(setup: Setup) -> Callable[[TrainState, str], str]:
    """``export`` for ``run``: the trained ``policy`` as a causal-LM directory."""
    return lambda state, path: export_model(
        path, setup.model_config, state.models["policy"].params, setup.tokenizer
    )
