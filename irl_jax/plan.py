"""Ahead-of-time memory planner: does a config fit a device mesh, before any chip is rented?

    python -m irl_jax.plan --config=experiments/configs/sft.py --config.model=llama-3.2-1b \\
        --config.batch_size=16 --config.data.max_length=1024 --target=v5e-8 --mesh=fsdp=8

For the config's algorithm (``sft``, ``reward_model``, ``direct``, ``policy_gradient``) the planner
builds the train state *abstractly* — ``jax.eval_shape`` shapes carrying the shardings a run
would give them; no weight is ever allocated — lowers the algorithm's own jitted train step (the
``.jitted`` of ``train.jit_step``) and the sampler for the named architecture on the target's
devices, compiles both ahead of time and prints, per device: params, optimizer state, the other
arguments (batch, PRNG key, running statistics), temporaries (activations, gradients, workspace:
``memory_analysis()``'s temp size), outputs not aliased to the donated state, their total and
whether it fits in the device memory; XLA's FLOPs per step (``cost_analysis()``) and the model
FLOPs (6ND plus attention, which do count every layer and decoding step).

Targets: ``cpu`` (``--devices`` fake CPU devices, ``--device_memory`` each), Cloud TPU slices
(``v5e-8``, ``v4-32``, …: compiled by libtpu for the slice's topology without a TPU, as
MaxText's AOT compile does; needs ``pip install libtpu``, else fake CPU devices, said so) and
``gpu-80gb`` (one 80 GiB GPU: XLA:GPU cannot compile without a GPU, so a fake CPU device). XLA:CPU
is not TPU or GPU memory — its fusion and buffer assignment differ — so CPU rows are estimates
and carry that caveat. XLA counts the body of every loop once (layers under ``scan_layers``,
microbatches, decoding steps): its FLOPs are exact only for loop-free steps (marked otherwise).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from irl_jax import sharding as sharding_lib
from irl_jax.models import ModelConfig, Transformer, lora, preset
from irl_jax.train import ModelState, TrainState, optimizer_from_config
from irl_jax.train.state import SharedBase

GiB = 1 << 30
CPU_CAVEAT = "XLA:CPU memory, not the accelerator's: an estimate (fusion and buffers differ)"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a plan is compiled for: ``devices`` chips of ``memory`` bytes; ``topology`` holds
    ``jax.experimental.topologies.get_topology_desc`` arguments of a TPU slice (``None``:
    compiled on fake CPU devices)."""

    name: str
    devices: int
    memory: int
    topology: dict[str, Any] | None = None


def _tpu(name: str, topology: str, devices: int, memory_gib: int, megacore: bool) -> Target:
    shape = dict(topology_name=topology, chip_config_name="megacore" if megacore else "default")
    shape.update(chips_per_host_bounds=(2, 2, 1), wrap=(False, False, False))
    return Target(name, devices, memory_gib * GiB, shape)


# Slice shapes as in MaxText's accelerator_to_spec_map; HBM per chip (v5e 16 GiB, v4 32 GiB,
# v5p 95 GiB, v6e 32 GiB).
TARGETS = {
    "v5e-8": _tpu("v5e-8", "v5e:2x4", 8, 16, megacore=False),
    "v5e-16": _tpu("v5e-16", "v5e:4x4", 16, 16, megacore=False),
    "v4-8": _tpu("v4-8", "v4:2x2x1", 4, 32, megacore=True),
    "v4-32": _tpu("v4-32", "v4:2x2x4", 16, 32, megacore=True),
    "v5p-8": _tpu("v5p-8", "v5:2x2x1", 4, 95, megacore=True),
    "v6e-8": _tpu("v6e-8", "v6e:2x4", 8, 32, megacore=False),
    "gpu-80gb": Target("gpu-80gb", 1, 80 * GiB),
}


def parse_bytes(text: str) -> int:
    """``"16GiB"`` / ``"80GB"`` / ``"512MiB"`` / ``"1e9"`` → bytes."""
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([KMGT]i?B)?\s*", text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 16GiB, 80GB)")
    units = {"": 1, None: 1}
    for i, prefix in enumerate("KMGT", 1):
        units[f"{prefix}iB"], units[f"{prefix}B"] = 1024**i, 1000**i
    return int(float(match.group(1)) * units[match.group(2)])


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=4"`` → ``{"data": 2, "fsdp": 4}`` (missing axes are 1; one may be -1)."""
    try:
        return {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(",") if p)}
    except ValueError:
        raise ValueError(f"--mesh={text!r}: expected AXIS=SIZE,... e.g. fsdp=8") from None


def target_devices(target: Target) -> tuple[list, str | None]:
    """The target's devices and the caveat of what they are not: TPU topology devices compiled
    for by libtpu (no caveat), else the first ``target.devices`` CPU devices."""
    reason = "XLA:GPU needs a GPU to compile"
    if target.topology is not None:
        from jax.experimental import topologies

        try:
            return list(
                topologies.get_topology_desc(platform="tpu", **target.topology).devices
            ), None
        except (RuntimeError, jax.errors.JaxRuntimeError) as e:
            first_line = str(e).splitlines()[0].split(";")[0]
            reason = f'no TPU compiler ({first_line}: pip install "jax[tpu]=={jax.__version__}")'
    cpus = jax.devices("cpu")
    if len(cpus) < target.devices:
        raise ValueError(
            f"{target.name} needs {target.devices} fake CPU devices, have {len(cpus)}: run "
            f"with --devices={target.devices}"
        )
    caveat = None if target.name == "cpu" else f"{reason}: compiled on fake CPU devices"
    return cpus[: target.devices], caveat


# ----------------------------------------------------------------------------- abstract state


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def abstract_model(
    init_params: Callable[[], Any], optimizer, mesh
) -> tuple[ModelState, ModelState]:
    """What ``train.create_model`` builds — shapes, dtypes and shardings — without building it."""

    def build():
        params = init_params()
        trainable, _ = lora.split(params)  # with LoRA adapters: their optimizer state only
        return ModelState(jnp.zeros((), jnp.int32), params, optimizer.init(trainable))

    boxed = jax.eval_shape(build)
    shardings = sharding_lib.tree_shardings(boxed, mesh)
    return _with_shardings(sharding_lib.unbox(boxed), shardings), shardings


def abstract_state(
    mesh, *, models: dict[str, tuple[Any, Any]], frozen=(), extras=None
) -> tuple[TrainState, TrainState]:
    """What ``train.create_state`` builds, abstractly: ``models`` name → ``abstract_model``;
    each name in ``frozen`` is a copy of the ``policy``'s params (the reference; a LoRA
    policy's holds only its adapters)."""
    replicated = sharding_lib.replicated(mesh)
    policy, policy_shardings = models.get("policy", (None, None))
    if policy is not None and lora.has_adapters(policy.params):
        # A LoRA policy's reference shares its base weights (``train.state.SharedBase``).
        policy = policy.replace(params=SharedBase(lora.adapters_only(policy.params)))
        policy_shardings = policy_shardings.replace(
            params=SharedBase(lora.adapters_only(policy_shardings.params))
        )
    made = jax.eval_shape(extras) if extras is not None else {}
    shardings = TrainState(
        step=replicated,
        rng=replicated,
        models={name: s for name, (_, s) in models.items()},
        frozen={name: policy_shardings.params for name in frozen},
        extras=jax.tree.map(lambda _: replicated, made),
    )
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        rng=jax.eval_shape(lambda: jax.random.key(0)),
        models={name: m for name, (m, _) in models.items()},
        frozen={name: policy.params for name in frozen},
        extras=made,
    )
    return _with_shardings(state, shardings), shardings


def _tokens(mesh, rows: int, length: int, *names: str, floats=()) -> dict[str, Any]:
    """An abstract batch: int32 ``[rows, length]`` arrays and float32 ``[rows]`` ones, sharded
    over the batch axes like the loop's batches."""
    data = sharding_lib.batch_sharding(mesh)
    batch = {n: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=data) for n in names}
    batch.update({n: jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=data) for n in floats})
    return batch


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass
class Workload:
    """A jitted function with abstract arguments, and what the analytic counts need."""

    name: str
    jitted: Any
    args: tuple
    state: TrainState | None  # the train state among ``args`` (params / optimizer bytes)
    model_flops: float
    loops: bool  # runs a loop body more than once (XLA's FLOPs count it once)


def forward_flops(
    cfg: ModelConfig, rows: int, length: int, keys: int | None = None, *, lm_head: bool = True
) -> float:
    """2 · (matmul params) · tokens + attention (QKᵀ and AV over ``keys`` keys per query, the
    full masked square by default, as the model computes it); ``lm_head=False``: no logits
    (a prefill, a reward model's scalar head)."""
    d, layers = cfg.hidden_size, cfg.num_layers
    projections = d * cfg.head_dim * 2 * (cfg.num_heads + cfg.num_kv_heads)
    mlp = d * cfg.intermediate_size * (2 if cfg.is_gpt2 else 3)
    tokens = rows * length
    attention = 4 * cfg.num_heads * cfg.head_dim * (keys or length) * tokens
    return (
        2.0 * tokens * (layers * (projections + mlp) + lm_head * cfg.vocab_size * d)
        + layers * attention
    )


def train_workload(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh) -> Workload:
    """The train step of ``config.algorithm`` over abstract state and batch."""
    from irl_jax.algorithms import direct, policy_gradient, reward_model, sft
    from irl_jax.algorithms.implicit_reward import uses_reference
    from irl_jax.models.source import init_fn
    from irl_jax.train import supervised_step

    algorithm, rows, length = config.algorithm, config.batch_size, config.data.max_length
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    backward = 3 + (cfg.remat != "none")  # forward, backward (2×), and a second forward under remat
    step_options = dict(grad_accum_steps=config.grad_accum_steps, schedule=schedule)
    policy = lambda: {"policy": abstract_model(init_fn(Transformer(cfg), 0), optimizer, mesh)}
    extra_args: tuple = ()
    if algorithm == "sft":
        state, shardings = abstract_state(mesh, models=policy())
        loss = sft.make_loss_fn(cfg)
        step = supervised_step(loss, optimizer, shardings, mesh, **step_options)
        batch = _tokens(mesh, rows, length, "input_ids", "attention_mask", "loss_mask")
        flops = backward * forward_flops(cfg, rows, length)
    elif algorithm == "reward_model":
        settings = config.reward_model
        if settings.loss not in reward_model.PAIR_LOSSES:
            raise ValueError(f"plan: reward_model.loss={settings.loss!r} (pairs only)")
        module = reward_model.build_model(cfg, settings)
        models = {"reward_model": abstract_model(init_fn(module, 0), optimizer, mesh)}
        state, shardings = abstract_state(mesh, models=models)
        loss = reward_model.make_loss_fn(module, settings)
        step = supervised_step(
            loss, optimizer, shardings, mesh, model="reward_model", **step_options
        )
        names = [
            f"{p}_{n}" for p in ("chosen", "rejected") for n in ("input_ids", "attention_mask")
        ]
        batch = _tokens(mesh, rows, length, *names, floats=("margin",))
        flops = backward * forward_flops(cfg, 2 * rows, length, lm_head=False)
    elif algorithm == "direct":
        section = config.direct
        if section.loss == "kto":
            raise ValueError("plan: direct.loss='kto' is not planned (pairwise losses only)")
        reference = uses_reference(section.loss)
        on_the_fly = reference and not section.precompute_reference
        state, shardings = abstract_state(mesh, models=policy(), frozen=("reference",))
        loss = direct.make_loss_fn(cfg, section, on_the_fly=on_the_fly)
        step = supervised_step(loss, optimizer, shardings, mesh, **step_options)
        names = [
            f"{p}_{n}"
            for p in ("chosen", "rejected")
            for n in ("input_ids", "attention_mask", "loss_mask")
        ]
        floats = ("ref_chosen_logps", "ref_rejected_logps") if reference and not on_the_fly else ()
        batch = _tokens(mesh, rows, length, *names, floats=floats)
        flops = (backward + on_the_fly) * forward_flops(cfg, 2 * rows, length)
    elif algorithm == "policy_gradient":
        from irl_jax.rewards import as_pytree
        from irl_jax.tasks import get_task

        s, sampling = config.policy_gradient, config.sampling
        state, shardings = abstract_state(
            mesh, models=policy(), frozen=("reference",), extras=policy_gradient.init_extras
        )
        step = policy_gradient.make_iteration(
            cfg, config, optimizer, shardings, mesh, schedule=schedule
        )
        prompts = policy_gradient.prompts_per_iteration(config)
        prompt_length = config.data.max_prompt_length or length
        batch = _tokens(mesh, prompts, prompt_length, "prompt_ids", "prompt_mask")
        # The task's gold reward: a learned reward model would add its params and a forward.
        extra_args = (as_pytree(get_task(config.data.task).gold_reward),)
        samples, new = prompts * sampling.group_size, sampling.max_new_tokens
        sequence = prompt_length + new
        flops = forward_flops(cfg, samples, prompt_length - 1, lm_head=False)
        flops += new * forward_flops(cfg, samples, 1, keys=sequence - 1)
        flops += (s.num_epochs * backward + bool(s.kl_coef)) * forward_flops(cfg, samples, sequence)
    else:
        raise ValueError(f"plan: algorithm {algorithm!r} is not planned")
    loops = cfg.scan_layers or config.grad_accum_steps > 1 or algorithm == "policy_gradient"
    return Workload("train step", step.jitted, (state, batch, *extra_args), state, flops, loops)


def sampler_workload(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh, params) -> Workload:
    """The sampler on the batch the config samples: an RL iteration's ``batch_size ×
    group_size`` prompts with ``sampling``'s budget, else the policy evaluation's batch."""
    from irl_jax import sampling as sampling_lib

    prompt_length = config.data.max_prompt_length or config.data.max_length
    if config.algorithm == "policy_gradient":
        rows = config.batch_size * config.sampling.group_size
        new, settings = config.sampling.max_new_tokens, config.sampling
    else:
        rows, new, settings = config.policy_eval.batch_size, config.policy_eval.max_new_tokens, None
    options = dict(temperature=settings.temperature if settings else 1.0)
    if settings:
        options.update(top_k=settings.top_k, top_p=settings.top_p)

    def sample(params, prompt_ids, prompt_mask, rng):
        return sampling_lib.sample(
            cfg, params, prompt_ids, prompt_mask, rng=rng, max_new_tokens=new, **options
        )

    batch = _tokens(mesh, rows, prompt_length, "prompt_ids", "prompt_mask")
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding_lib.replicated(mesh))
    flops = forward_flops(cfg, rows, prompt_length - 1, lm_head=False)
    flops += new * forward_flops(cfg, rows, 1, keys=prompt_length + new - 1)
    name = f"sampler ({rows} × {prompt_length}+{new})"
    args = (params, batch["prompt_ids"], batch["prompt_mask"], key)
    return Workload(name, jax.jit(sample), args, None, flops, loops=True)


# ----------------------------------------------------------------------------- compiling


@dataclasses.dataclass(frozen=True)
class Row:
    """One compiled function's per-device bytes and FLOPs."""

    name: str
    params: int
    optimizer: int
    other: int  # the other arguments (batch, PRNG key, statistics) and layout padding
    temporaries: int
    outputs: int  # outputs not aliased to donated arguments
    argument_bytes: int  # XLA's argument size (unused arguments are pruned from it)
    xla_flops: float
    has_loops: bool
    model_flops: float
    compile_seconds: float
    note: str = ""  # e.g. the compiler refused it for lack of memory

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.other + self.temporaries + self.outputs


def shard_bytes(tree: Any) -> int:
    """Bytes per device of a tree of sharded ``ShapeDtypeStruct`` (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _key_bytes(tree: Any) -> Any:
    """Typed PRNG keys count as their ``uint32`` data."""

    def data(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            raw = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(raw.shape, raw.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(data, tree)


# libtpu refuses to compile a program that cannot fit, naming what it needed.
_OUT_OF_MEMORY = re.compile(r"required for HLO temporaries \(([0-9.]+)([KMGT])\)")


def compile_workload(workload: Workload, mesh) -> Row:
    """Lowers and compiles ``workload`` under ``mesh``; its per-device bytes and FLOPs.

    A TPU compile that runs out of HBM is a plan that does not fit: its row carries the
    temporaries the compiler reported (XLA's FLOPs and outputs unknown: 0).
    """
    start = time.perf_counter()
    argument_bytes = outputs = 0
    flops, note = 0.0, ""
    with jax.set_mesh(mesh):
        lowered = workload.jitted.lower(*workload.args)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            needed = _OUT_OF_MEMORY.search(str(e))
            if needed is None:
                raise
            temporaries = parse_bytes(f"{needed.group(1)}{needed.group(2)}iB")
            note = "out of HBM at compile time"
        else:
            memory = compiled.memory_analysis()
            cost = compiled.cost_analysis()
            flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
            temporaries, argument_bytes = memory.temp_size_in_bytes, memory.argument_size_in_bytes
            outputs = max(memory.output_size_in_bytes - memory.alias_size_in_bytes, 0)
    state = workload.state
    if state is None:  # the sampler: its first argument is the policy's params
        params, optimizer = shard_bytes(workload.args[0]), 0
    else:
        params = shard_bytes([m.params for m in state.models.values()] + [state.frozen])
        optimizer = shard_bytes([m.opt_state for m in state.models.values()])
    # XLA's argument bytes exceed the logical ones by the device's layout padding (TPU tiles pad
    # e.g. a 64-wide head_dim to 128 lanes); they fall short when it prunes an unused argument
    # (a precomputed reference's params), which occupies memory all the same.
    arguments = max(shard_bytes(_key_bytes(workload.args)), argument_bytes)
    return Row(
        name=workload.name,
        params=params,
        optimizer=optimizer,
        other=arguments - params - optimizer,
        temporaries=temporaries,
        outputs=outputs,
        argument_bytes=argument_bytes,
        xla_flops=flops,
        has_loops=workload.loops,
        model_flops=workload.model_flops / mesh.size,
        compile_seconds=time.perf_counter() - start,
        note=note,
    )


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The preset ``config.model`` at its real shapes (vocabulary included), with
    ``config.model_overrides``."""
    overrides = {k: v for k, v in config.model_overrides.items() if v is not None}
    return preset(config.model, **overrides)


def plan(
    config: ml_collections.ConfigDict, mesh, *, sampler: bool = True
) -> tuple[ModelConfig, list[Row]]:
    """Compiles the train step (and the sampler, for a policy) of ``config`` on ``mesh``."""
    cfg = model_config(config)
    train = train_workload(config, cfg, mesh)
    rows = [compile_workload(train, mesh)]
    if sampler and "policy" in train.state.models:
        params = train.state.models["policy"].params
        rows.append(compile_workload(sampler_workload(config, cfg, mesh, params), mesh))
    return cfg, rows


# ----------------------------------------------------------------------------- report


def _batch_text(config: ml_collections.ConfigDict) -> str:
    """The step's batch in words."""
    length, prompt = config.data.max_length, config.data.max_prompt_length or config.data.max_length
    if config.algorithm == "policy_gradient":
        responses, new = config.sampling.group_size, config.sampling.max_new_tokens
        return f"{config.batch_size} prompts × {responses} responses, {prompt} + {new} tokens"
    unit = "sequences" if config.algorithm == "sft" else "pairs"
    return f"{config.batch_size} {unit} × {length} tokens"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def format_report(
    config: ml_collections.ConfigDict,
    cfg: ModelConfig,
    rows: Sequence[Row],
    *,
    target: str,
    mesh,
    memory: int,
    caveat: str | None,
) -> str:
    """The plan as text: a header, one line per compiled function, the verdict."""
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(_abstract_params(cfg)))
    mesh_text = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    lines = [
        f"{config.algorithm} · {config.model} ({num_params / 1e9:.2f} B params, params "
        f"{cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat}, "
        f"scan {'on' if cfg.scan_layers else 'off'}) · {_batch_text(config)}",
        f"target {target}: {mesh.size} × {mesh.devices.flat[0].device_kind} · mesh {mesh_text} · "
        f"{_gib(memory)} GiB per device",
    ]
    if caveat:
        lines.append(f"caveat: {caveat}; {CPU_CAVEAT}")
    header = ("", "params", "optimizer", "other", "temporaries", "outputs", "total", "fits")
    header += ("XLA GFLOP", "model GFLOP", "compile s", "")
    table = [header]
    for row in rows:
        fits = "yes" if row.total <= memory else "NO"
        table.append(
            (
                row.name,
                *(_gib(getattr(row, f)) for f in ("params", "optimizer", "other")),
                *(_gib(getattr(row, f)) for f in ("temporaries", "outputs", "total")),
                f"{fits} ({100 * row.total / memory:.0f}%)",
                f"{row.xla_flops / 1e9:.1f}{'*' if row.has_loops else ''}",
                f"{row.model_flops / 1e9:.1f}",
                f"{row.compile_seconds:.0f}",
                row.note,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in table
    ]
    lines.append(
        "GiB per device; * = XLA counted each loop body once (layers under scan, "
        "microbatches, decoding steps); model FLOPs count them all"
    )
    verdict = all(row.total <= memory for row in rows)
    lines.append(
        f"verdict: {'fits' if verdict else 'does NOT fit'} in {_gib(memory)} GiB per device"
    )
    return "\n".join(lines)


def _abstract_params(cfg: ModelConfig) -> Any:
    from irl_jax.models.source import init_fn

    return sharding_lib.unbox(jax.eval_shape(init_fn(Transformer(cfg), 0)))


# ----------------------------------------------------------------------------- command line


def _flags(argv: Sequence[str]):
    """Parses ``argv`` into its own ``FlagValues`` (no global flags: ``experiments.run`` owns
    ``--config`` there)."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config file (overrides: --config.FIELD=VALUE).",
        flag_values=values,
        lock_config=True,
        sys_argv=list(argv),  # the --config.FIELD overrides to define are read from here
    )
    flags.DEFINE_string("target", "cpu", f"cpu or one of {sorted(TARGETS)}.", flag_values=values)
    flags.DEFINE_string(
        "mesh", "", "Mesh axes, e.g. fsdp=8 (default: config.mesh_shape).", flag_values=values
    )
    flags.DEFINE_integer("devices", 8, "Fake CPU devices for --target=cpu.", flag_values=values)
    flags.DEFINE_string(
        "device_memory",
        "",
        "Memory per device, e.g. 16GiB (default: the target's; required for --target=cpu).",
        flag_values=values,
    )
    flags.DEFINE_boolean("sampler", True, "Also compile the sampler.", flag_values=values)
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(f"usage: {argv[0]} --config=FILE [--config.FIELD=VALUE ...] [flags]\n\n{__doc__}")
        print(values.get_help())
        raise SystemExit(0)
    flags.mark_flag_as_required("config", flag_values=values)
    values(list(argv))
    return values


def main(argv: Sequence[str] | None = None, prog: str = "python -m irl_jax.plan") -> int:
    """Plans one config on one target and prints the report; returns 0 if it fits, else 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values = _flags([prog, *argv])
    target = TARGETS.get(values.target)
    if values.target == "cpu":
        if not values.device_memory:
            raise SystemExit(f"{prog}: --target=cpu needs --device_memory (e.g. 16GiB)")
        target = Target("cpu", values.devices, parse_bytes(values.device_memory))
    elif target is None:
        raise SystemExit(f"{prog}: --target={values.target!r}; expected cpu or {sorted(TARGETS)}")
    memory = parse_bytes(values.device_memory) if values.device_memory else target.memory
    try:  # fake CPU devices, before any backend starts (a planner never needs an accelerator)
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", target.devices)
    except RuntimeError:
        pass  # backends already up (an embedding program): target_devices checks the count
    if target.topology is not None:
        # Compiling touches no chip: let planners run side by side (libtpu otherwise locks
        # /tmp/libtpu_lockfile for one process), and spare its warnings about a missing TPU.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.name.replace("v5e", "v5litepod"))
    config = values.config
    devices, caveat = target_devices(target)
    mesh_shape = parse_mesh(values.mesh) if values.mesh else dict(config.mesh_shape)
    mesh = sharding_lib.make_mesh(mesh_shape, devices)
    cfg, rows = plan(config, mesh, sampler=values.sampler)
    print(
        format_report(
            config, cfg, rows, target=target.name, mesh=mesh, memory=memory, caveat=caveat
        )
    )
    return 0 if all(row.total <= memory for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
