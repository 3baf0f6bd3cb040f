"""The RL iteration race: irl_jax's GRPO (and PPO) iteration against TRL's ``GRPOTrainer`` on
the identical model, tokenizer, prompts and settings, on this machine, in one run.

    python -m benchmarks.rl_iteration              # full: d256 (8 × 4) and d512 L6 (16 × 8)
    python -m benchmarks.rl_iteration --fast       # CI smoke mode: a tiny shape, 1 repeat

Both sides start from one random Llama-shape policy (tied embeddings; the preference task's
tokenizer), written once as a Hugging Face directory that TRL loads. An iteration is: sample G
responses to each of N preference-task prompts (T = 1, top-k 0, top-p 1, stop at EOS, at most
``new_tokens``), score them with the task's gold reward, reference log-probs, group-scaled
advantages and one AdamW update of the clipped surrogate with a k3 KL term (β = 0.04,
per-sequence mean: TRL's ``loss_type="grpo"``). TRL runs eager fp32 PyTorch without gradient
checkpointing; its time per iteration is between ``on_step_begin`` and ``on_step_end``.

Timing: every repeat runs ``--iterations`` timed iterations of each side after one warm-up
iteration (compilation excluded), our side first, then TRL's, so that the two interleave;
each side's figure is the median over its iterations, and the table shows the median over
repeats with min–max. Our side also times each phase as its own jitted function on the same
shapes (sample, score, reference log-probs, update), with FLOPs from XLA's cost analysis, and
states a lower bound per iteration: compute phases at the matmul peak measured in the same
run, decoding at the larger of its FLOPs at that peak and its weight + cache streaming at the
measured memory bandwidth (the peak: the larger median rate of 1024² and 2048² fp32 matmuls
through XLA; PyTorch's is recorded beside it). PPO's iteration (same settings, one update of a
critic of the policy's shape) is timed beside the critic's forward + backward on the same rows.
Results go to ``--output``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

from absl import app, flags

from benchmarks.timing import machine, write_results

_FAST = flags.DEFINE_bool("fast", False, "A tiny shape and one repeat (CI smoke mode).")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/rl_iteration.json", "JSON output.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved repeats (full mode).")
_ITERATIONS = flags.DEFINE_integer("iterations", 3, "Timed iterations per side per repeat.")
_TRL = flags.DEFINE_bool("trl", True, "Race TRL's GRPOTrainer when it is installed.")
_SHAPES = flags.DEFINE_list("shapes", None, "Subset of shapes to run (default: all of the mode).")
_PROMPT_BUDGET = flags.DEFINE_integer(
    "prompt_budget", 0, "data.max_prompt_length on our side (0: the config default)."
)


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    prompts: int  # N prompts per iteration
    group: int  # G responses per prompt
    new_tokens: int = 24

    @property
    def overrides(self) -> dict[str, int]:
        return {
            "hidden_size": self.hidden,
            "num_layers": self.layers,
            "num_heads": self.heads,
            "num_kv_heads": self.heads,
            "intermediate_size": 4 * self.hidden,
        }


FULL = [Shape("d256", 256, 4, 4, prompts=8, group=4), Shape("d512", 512, 6, 8, prompts=16, group=8)]
FAST = [Shape("tiny", 64, 1, 2, prompts=2, group=2, new_tokens=4)]
KL_COEF = 0.04
LEARNING_RATE = 1e-5


def grpo_config(shape: Shape, estimator: str = "policy_gradient", prompt_budget: int = 0):
    """``experiments/configs`` defaults with the race's settings (random llama-shape policy)."""
    from irl_jax.algorithms import experiment_config

    config = experiment_config(estimator)
    config.model = "llama-tiny"
    config.model_overrides.update(shape.overrides)
    config.batch_size = shape.prompts
    config.num_steps = 10_000
    config.data.num_train = 4096
    config.data.max_prompt_length = prompt_budget
    config.sampling.update(group_size=shape.group, max_new_tokens=shape.new_tokens)
    config.sampling.update(temperature=1.0, top_k=0, top_p=1.0)
    config.optimizer.learning_rate = LEARNING_RATE
    section = config.policy_gradient if estimator == "policy_gradient" else config.ppo
    section.kl_coef = KL_COEF
    if estimator == "policy_gradient":
        section.update(estimator="grpo", advantage_scale="group", aggregation="sequence_mean")
        section.kl_estimator = "k3"
    else:  # equal samples and updates: one update on the iteration's rows, as GRPO's
        section.update(num_epochs=1, num_minibatches=1)
    return config


# ----------------------------------------------------------------------------- our side


class Ours:
    """A built algorithm and a loop that times its iterations."""

    def __init__(self, config, module):
        import jax

        from irl_jax import sharding

        built = module.build(config)  # PPO's build returns a plain tuple in Built's order
        self.config = config
        self.setup, self.state, self.shardings, self.step, self.batches = built[:5]
        self.source = getattr(built, "source", None)
        self.data = sharding.batch_sharding(self.setup.mesh)
        self.device_put = lambda batch: jax.device_put(batch, self.data)

    def iterate(self) -> float:
        batch = self.device_put(next(self.batches))
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, batch)
        metrics["loss"].block_until_ready()
        return time.perf_counter() - start

    def seconds_per_iteration(self, iterations: int) -> float:
        self.iterate()  # warm-up (first call compiles)
        return statistics.median(self.iterate() for _ in range(iterations))


def _flops(jitted, *args) -> float:
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def jitted_sampler(model_config, sampling):
    """``sample(params, prompt batch, rng) -> rollout.Samples``, jitted (the rollout's first
    phase on its own)."""
    import jax

    from irl_jax import rollout

    return jax.jit(
        lambda p, b, k: rollout.sample(
            model_config, p, b["prompt_ids"], b["prompt_mask"], rng=k, settings=sampling
        )
    )


def phases(ours: Ours, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds and XLA FLOPs of each GRPO phase as its own jitted function."""
    import jax
    import jax.numpy as jnp

    from benchmarks.timing import median_seconds
    from irl_jax import rollout
    from irl_jax.algorithms import policy_gradient as pg_algo
    from irl_jax.train import make_update, optimizer_from_config

    config = ours.config
    model_config, mesh = ours.setup.model_config, ours.setup.mesh
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    policy = ours.state.models["policy"]
    reference = ours.state.frozen["reference"]
    batch = ours.device_put(next(ours.batches))
    optimizer, _ = optimizer_from_config(config.optimizer, config.num_steps)
    update = make_update(
        pg_algo.make_loss_fn(model_config, config.policy_gradient, sampling),
        optimizer,
        ours.shardings.models["policy"],
    )
    rng = jax.random.key(0)
    jitted = {
        "sample": jitted_sampler(model_config, sampling),
        "score": jax.jit(rollout.score),
        "reference": jax.jit(
            lambda p, s: rollout.reference_logprobs(model_config, p, s, sampling.temperature)
        ),
        "update": jax.jit(update),
    }
    with jax.set_mesh(mesh):
        samples = jitted["sample"](policy.params, batch, rng)
        ref = jitted["reference"](reference, samples)
        advantages = jnp.ones(samples.lengths.shape, jnp.float32)
        data = pg_algo.Rollout(samples, ref, advantages)
        args = {
            "sample": (policy.params, batch, rng),
            "score": (ours.source, samples),
            "reference": (reference, samples),
            "update": (policy, data, rng),
        }
        out = {}
        for name, fn in jitted.items():
            block = lambda fn=fn, a=args[name]: jax.block_until_ready(fn(*a))
            out[name] = {
                "seconds": median_seconds(block, repeats, warmup=1),
                "xla_flops": _flops(fn, *args[name]),
            }
        out["sample"]["response_tokens"] = float(samples.lengths.sum())
    out["prompt_width"] = batch["prompt_ids"].shape[1]
    return out


def param_count(params) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(params))


def bounds(shape: Shape, measured: dict, params: int, peak: float, bandwidth: float):
    """Lower bounds on each phase's seconds (and their sum): score, reference and update at the
    matmul peak (their XLA FLOPs); sampling as a prefill at the peak plus ``new_tokens`` decode
    steps, each the larger of its FLOPs at the peak and streaming the fp32 weights and the KV
    cache once at the measured bandwidth (XLA counts a while loop's body once, so the decode
    FLOPs are counted here: 2 per weight per row, plus attention over the filled slots)."""
    rows, width = shape.prompts * shape.group, measured["prompt_width"]
    per_token = 2 * params  # the tied embedding is used once per token, as the head
    prefill = per_token * rows * width / peak
    decode = 0.0
    for i in range(shape.new_tokens):
        slots = width + i
        attention = 4 * shape.layers * shape.hidden * slots * rows
        cache_bytes = 2 * 4 * shape.layers * shape.hidden * slots * rows
        decode += max((per_token * rows + attention) / peak, (4 * params + cache_bytes) / bandwidth)
    out = {"sample": prefill + decode}
    out.update({k: measured[k]["xla_flops"] / peak for k in ("score", "reference", "update")})
    out["total"] = sum(out.values())
    return out


def memory_bandwidth(repeats: int) -> float:
    """Measured bytes/s of a jitted reduction over a 256 MiB fp32 array."""
    import jax
    import jax.numpy as jnp

    from benchmarks.timing import median_seconds

    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    total = jax.jit(jnp.sum)
    seconds = median_seconds(lambda: total(x).block_until_ready(), max(repeats, 3))
    return x.size * 4 / seconds


def torch_matmul_peak(repeats: int) -> float:
    """PyTorch's fp32 matmul FLOP/s on this machine (the larger of 1024² and 2048²), for
    comparison with XLA's: the kernels TRL's step runs on."""
    import torch

    from benchmarks.timing import median_seconds

    torch.set_num_threads(os.cpu_count() or 1)
    rates = []
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates.append(2 * n**3 / median_seconds(lambda a=a, b=b: a @ b, repeats))
    return max(rates)


def critic_seconds(ours: Ours, repeats: int) -> float:
    """Seconds of the PPO critic's forward + backward (its value loss gradient) on one
    iteration's rows (sampled by the policy; values, advantages and returns zero: the cost does
    not depend on them)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.timing import median_seconds
    from irl_jax import rollout
    from irl_jax.algorithms import ppo
    from irl_jax.models.heads import ValueModel

    setup, state, config = ours.setup, ours.state, ours.config
    sampling = rollout.SamplingSettings.from_config(config.sampling)
    batch = ours.device_put(next(ours.batches))
    with jax.set_mesh(setup.mesh):
        sample = jitted_sampler(setup.model_config, sampling)
        samples = sample(state.models["policy"].params, batch, jax.random.key(0))
        zeros = jnp.zeros(samples.response_ids.shape, jnp.float32)
        data = ppo.Rollout(samples, zeros, zeros, zeros)
        value_loss = ppo.make_value_loss(ValueModel(setup.model_config), config)
        grad = jax.jit(jax.grad(lambda p, d: value_loss(p, d, None)[0].total))
        params = state.models["critic"].params
        return median_seconds(lambda: jax.block_until_ready(grad(params, data)), repeats)


# ----------------------------------------------------------------------------- TRL's side


class Trl:
    """TRL's ``GRPOTrainer`` on the exported policy, timed per optimizer step."""

    def __init__(self, shape: Shape, model_dir: str, prompts: list[str], task, work: str):
        import datasets
        import torch
        import transformers
        from trl import GRPOConfig, GRPOTrainer

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

        def gold(prompts, completions, **kwargs):
            return [float(r) for r in task.gold_reward_text(prompts, completions)]

        self.times: list[float] = []
        times = self.times

        class Clock(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.start)

        rows = shape.prompts * shape.group
        args = GRPOConfig(
            output_dir=work,
            per_device_train_batch_size=rows,
            num_generations=shape.group,
            max_completion_length=shape.new_tokens,
            beta=KL_COEF,
            loss_type="grpo",
            scale_rewards="group",
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            learning_rate=LEARNING_RATE,
            max_grad_norm=1.0,
            gradient_checkpointing=False,
            use_cpu=True,
            bf16=False,
            disable_dropout=True,
            max_steps=10_000,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            seed=0,
            dataloader_num_workers=0,
        )
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=gold,
            args=args,
            train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )

    def seconds_per_iteration(self, iterations: int) -> float:
        self.trainer.args.max_steps = iterations + 1
        self.times.clear()
        self.trainer.train()
        return statistics.median(self.times[1:])


# ----------------------------------------------------------------------------- the race


def race(shape: Shape, repeats: int, iterations: int, with_trl: bool, prompt_budget: int):
    from benchmarks.timing import matmul_peak
    from irl_jax.algorithms import policy_gradient, ppo
    from irl_jax.algorithms import setup as setup_lib

    grpo = Ours(grpo_config(shape, prompt_budget=prompt_budget), policy_gradient)
    ppo_side = Ours(grpo_config(shape, "ppo", prompt_budget), ppo)
    setup = grpo.setup
    entry = {"shape": dataclasses.asdict(shape), "prompt_width": None}
    trl = None
    if with_trl:
        task = setup_lib.task_of(grpo.config)
        work = tempfile.mkdtemp(prefix="rl_iteration_")
        model_dir = setup_lib.export_model(
            os.path.join(work, "policy"),
            setup.model_config,
            grpo.state.models["policy"].params,
            setup.tokenizer,
        )
        prompts = task.prompts(grpo.config.data.num_train, grpo.config.data.seed)
        trl = Trl(shape, model_dir, list(prompts), task, os.path.join(work, "trl"))
    runs = {"grpo": [], "ppo": [], "trl_grpo": []}
    for _ in range(repeats):
        runs["grpo"].append(grpo.seconds_per_iteration(iterations))
        runs["ppo"].append(ppo_side.seconds_per_iteration(iterations))
        if trl is not None:
            runs["trl_grpo"].append(trl.seconds_per_iteration(iterations))
    summary = lambda xs: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
    entry["seconds_per_iteration"] = {k: summary(v) for k, v in runs.items() if v}
    if trl is not None:
        ratios = [t / o for t, o in zip(runs["trl_grpo"], runs["grpo"], strict=True)]
        entry["speedup_vs_trl"] = summary(ratios)
    measured = phases(grpo, max(repeats, 3))
    entry["prompt_width"] = measured["prompt_width"]
    entry["phases"] = {k: v for k, v in measured.items() if isinstance(v, dict)}
    peak = max(matmul_peak(max(repeats, 3), n) for n in (1024, 2048))
    bandwidth = memory_bandwidth(repeats)
    params = param_count(grpo.state.models["policy"].params)
    entry["machine_peaks"] = {"matmul_flops_per_s": peak, "memory_bytes_per_s": bandwidth}
    if trl is not None:
        entry["machine_peaks"]["torch_matmul_flops_per_s"] = torch_matmul_peak(max(repeats, 3))
    entry["params"] = params
    entry["bound_seconds"] = bounds(shape, measured, params, peak, bandwidth)
    for name, phase in entry["phases"].items():
        phase["fraction_of_bound"] = entry["bound_seconds"][name] / phase["seconds"]
    entry["fraction_of_bound"] = (
        entry["bound_seconds"]["total"] / entry["seconds_per_iteration"]["grpo"]["median"]
    )
    critic = critic_seconds(ppo_side, max(repeats, 3))
    entry["ppo_check"] = {
        "critic_forward_backward_seconds": critic,
        "ppo_budget_seconds": entry["seconds_per_iteration"]["grpo"]["median"] + 1.1 * critic,
    }
    return entry


def table(results: dict) -> str:
    lines = []
    for name, e in results["shapes"].items():
        s = e["seconds_per_iteration"]
        fmt = lambda d: f"{d['median']:.3f} ({d['min']:.3f}–{d['max']:.3f})"
        lines.append(f"{name}: prompt width {e['prompt_width']}, {e['params']:,} params")
        for side, d in s.items():
            lines.append(f"  {side:<9} s/iteration {fmt(d)}")
        if "speedup_vs_trl" in e:
            lines.append(f"  speed-up vs TRL GRPO {fmt(e['speedup_vs_trl'])}x")
        phase = ", ".join(
            f"{k} {v['seconds']:.3f}s ({v['fraction_of_bound']:.0%} of bound)"
            for k, v in e["phases"].items()
        )
        lines.append(f"  phases: {phase}")
        lines.append(
            f"  iteration bound {e['bound_seconds']['total']:.3f}s; "
            f"we run at {e['fraction_of_bound']:.0%} of it"
        )
        c = e["ppo_check"]
        critic = c["critic_forward_backward_seconds"]
        lines.append(
            f"  PPO {s['ppo']['median']:.3f}s vs budget GRPO + 1.1 x critic "
            f"{c['ppo_budget_seconds']:.3f}s (critic forward + backward {critic:.3f}s)"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    shapes = FAST if _FAST.value else FULL
    if _SHAPES.value:
        shapes = [s for s in shapes if s.name in _SHAPES.value]
    repeats = 1 if _FAST.value else _REPEATS.value
    iterations = 1 if _FAST.value else _ITERATIONS.value
    try:
        import trl  # noqa: F401

        with_trl = _TRL.value
    except ImportError:
        with_trl = False
    results = {
        "machine": machine(),
        "repeats": repeats,
        "iterations": iterations,
        "shapes": {
            s.name: race(s, repeats, iterations, with_trl, _PROMPT_BUDGET.value) for s in shapes
        },
    }
    print(table(results))
    write_results(results, _OUTPUT.value)


if __name__ == "__main__":
    app.run(main)
