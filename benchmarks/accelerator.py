"""Accelerator benchmark: tokens/s, MFU and peak memory of the SFT, reward-model, DPO and GRPO
steps and of the sampler, for a ~1B Llama shape (``llama-3.2-1b`` of the preset table) with
bf16 compute, full fine-tuning and LoRA; writes JSON.

    python -m benchmarks.accelerator --output=benchmarks/results/accelerator.json
    python -m benchmarks.accelerator --fast  # CPU smoke test: llama-tiny, small batches

It runs unchanged on whatever JAX finds (GPU, TPU or CPU), over all local devices (data
parallel). Each workload is the project's own jitted step, built abstractly by the memory
planner (``irl_jax.plan.train_workload`` / ``sampler_workload``), then given random weights
and batches, compiled, warmed up and timed (median of ``--repeats``).

* tokens/s: the step's tokens (a DPO / RM pair counts both sequences; GRPO its sampled
  prompt + response tokens; the sampler its generated tokens) over its median time.
* MFU: the planner's analytic model FLOPs (2 · matmul params · tokens + attention; 3× forward
  for a full fine-tuning step; LoRA skips the base weights' gradients, so its train steps count
  2× forward) over time and the chips' bf16 dense peak (``PEAK_FLOPS``; on a CPU, a measured
  fp32 matmul peak). XLA's own FLOP count (``xla_flops``; loop bodies counted once) is written
  beside it.
* peak memory: per device, the compiled program's arguments + temporaries + outputs not
  aliased (``memory_analysis``), and the allocator's ``peak_bytes_in_use`` where the backend
  reports it (GPU, TPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax import plan as plan_lib
from irl_jax import sharding
from irl_jax.algorithms import experiment_config
from irl_jax.models import lora

# bf16 dense peak FLOP/s per chip, by the start of ``device_kind``.
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v4": 275e12,
}
ALGORITHMS = {"sft": "sft", "rm": "reward_model", "dpo": "direct", "grpo": "policy_gradient"}
FULL = dict(model="llama-3.2-1b", batch_size=8, max_length=1024, prompt_length=256, new=256)
FAST = dict(model="llama-tiny", batch_size=8, max_length=32, prompt_length=16, new=8)


def peak_flops(repeats: int) -> tuple[float, str]:
    """The chips' summed bf16 peak and where it comes from."""
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops * jax.device_count(), f"{kind} datasheet bf16 dense"
    from benchmarks.timing import matmul_peak

    return matmul_peak(repeats, 1024), f"{kind}: measured fp32 matmul"


def experiment(name: str, shape: dict[str, Any], rank: int, param_dtype: str):
    """The experiment config of workload ``name`` at ``shape`` (LoRA of ``rank``; 0 = full)."""
    config = experiment_config(ALGORITHMS[name])
    config.model = shape["model"]
    config.model_overrides.update(dtype="bfloat16", param_dtype=param_dtype)
    config.batch_size = shape["batch_size"]
    config.data.max_length = shape["max_length"]
    config.lora.rank = rank
    if name == "grpo":
        config.batch_size = max(1, shape["batch_size"] // 4)  # prompts; ×4 samples each
        config.sampling.update(group_size=4, max_new_tokens=shape["new"])
        config.data.max_prompt_length = shape["prompt_length"]
    if name == "dpo":
        config.direct.precompute_reference = False  # the reference forward is in the step
    config.policy_eval.update(batch_size=shape["batch_size"], max_new_tokens=shape["new"])
    config.data.max_prompt_length = shape["prompt_length"]
    return config


def concrete(abstract: Any, vocab_size: int, seed: int) -> Any:
    """Arrays for a tree of sharded ``ShapeDtypeStruct``: N(0, 0.02²) floats, token ids in
    ``[3, vocab)``, ones for masks, zeros for other integers, keys for PRNG keys — made by one
    jit straight into their shardings."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
    shardings = [leaf.sharding for _, leaf in leaves]

    def make():
        out = []
        for index, (path, leaf) in enumerate(leaves):
            name, key = lora.path_name(path), jax.random.key(seed + index)
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                out.append(key)
            elif jnp.issubdtype(leaf.dtype, jnp.floating):
                out.append(0.02 * jax.random.normal(key, leaf.shape, leaf.dtype))
            elif name.endswith("_ids"):
                out.append(jax.random.randint(key, leaf.shape, 3, vocab_size, leaf.dtype))
            elif "mask" in name:
                out.append(jnp.ones(leaf.shape, leaf.dtype))
            else:
                out.append(jnp.zeros(leaf.shape, leaf.dtype))
        return out

    return jax.tree.unflatten(tree, jax.jit(make, out_shardings=shardings)())


def tokens_of(name: str, config, batch: dict[str, Any]) -> int:
    """Tokens one call processes (see the module docstring)."""
    if name == "grpo":
        rows = config.batch_size * config.sampling.group_size
        return rows * (config.data.max_prompt_length + config.sampling.max_new_tokens)
    if name == "sampler":
        return config.policy_eval.batch_size * config.policy_eval.max_new_tokens
    return sum(int(np.prod(v.shape)) for k, v in batch.items() if k.endswith("input_ids"))


def measure(workload, mesh, vocab_size: int, repeats: int) -> dict[str, float]:
    """Compile, warm up and time one workload; its memory and FLOPs."""
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = workload.jitted.lower(*workload.args).compile()
    compile_seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    args = list(concrete(tuple(workload.args), vocab_size, seed=0))
    donates = workload.state is not None  # a train step donates (and returns) its state

    def call():
        with jax.set_mesh(mesh):
            out = compiled(*args)
        if donates:
            args[0] = out[0]
        jax.block_until_ready(out)

    from benchmarks.timing import median_seconds

    seconds = median_seconds(call, repeats, warmup=1)
    stats = jax.devices()[0].memory_stats() or {}
    program = (
        memory.argument_size_in_bytes
        + memory.temp_size_in_bytes
        + max(memory.output_size_in_bytes - memory.alias_size_in_bytes, 0)
    )
    return {
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "xla_flops": float(cost.get("flops", 0.0)),
        "program_bytes_per_device": int(program),
        "allocator_peak_bytes": int(stats.get("peak_bytes_in_use", 0)),
    }


def run(names: list[str], shape: dict[str, Any], rank: int, param_dtype: str, repeats: int):
    mesh = sharding.make_mesh({"data": -1})
    peak, peak_source = peak_flops(repeats)
    results = {
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "peak_flops": peak,
        "peak_source": peak_source,
        "shape": shape,
        "param_dtype": param_dtype,
        "compute_dtype": "bfloat16",
        "lora_rank": rank,
        "workloads": {},
    }
    for mode, lora_rank in (("full", 0), ("lora", rank)):
        for name in names:
            if name == "sampler" and mode == "lora":
                continue  # the same decoder: the adapters add r-wide matmuls only
            config = experiment(name if name != "sampler" else "sft", shape, lora_rank, param_dtype)
            cfg = plan_lib.model_config(config)
            if lora_rank:
                cfg = cfg.replace(lora=lora.LoraConfig(rank=lora_rank))
            train = plan_lib.train_workload(config, cfg, mesh)
            workload = train
            if name == "sampler":
                params = train.state.models["policy"].params
                workload = plan_lib.sampler_workload(config, cfg, mesh, params)
            measured = measure(workload, mesh, cfg.vocab_size, repeats)
            flops = workload.model_flops * (2 / 3 if lora_rank and name != "sampler" else 1.0)
            tokens = tokens_of(name, config, workload.args[1] if name != "sampler" else {})
            key = f"{name}/{mode}"
            results["workloads"][key] = {
                **measured,
                "tokens": tokens,
                "tokens_per_second": tokens / measured["seconds"],
                "model_flops": flops,
                "mfu": flops / measured["seconds"] / peak,
                "trainable_params": sum(
                    lora.count_trainable(m.params) for m in train.state.models.values()
                ),
            }
            print(f"{key:<14} {json.dumps(results['workloads'][key])}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accelerator", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="CPU smoke test: tiny model, 1 repeat")
    parser.add_argument("--workloads", default="sft,rm,dpo,grpo,sampler")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the LoRA rows")
    parser.add_argument("--param_dtype", default="float32", help="master weights' dtype")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/accelerator.json")
    args = parser.parse_args(argv)
    shape = FAST if args.fast else FULL
    repeats = 1 if args.fast else args.repeats
    results = run(args.workloads.split(","), shape, args.rank, args.param_dtype, repeats)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
