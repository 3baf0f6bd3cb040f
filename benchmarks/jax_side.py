"""irl_jax side of the throughput benchmark."""

from __future__ import annotations

import jax
import numpy as np

from irl_jax import sharding
from irl_jax.algorithms import direct, reward_model, sft
from irl_jax.models import ModelConfig, Transformer, preset
from irl_jax.models import source as model_source
from irl_jax.models.heads import RewardModel
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step


def model_config(size) -> ModelConfig:
    return preset(
        "gpt2-tiny",
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        num_layers=size.layers,
        num_heads=size.heads,
        num_kv_heads=size.heads,
        head_dim=size.hidden // size.heads,
        intermediate_size=4 * size.hidden,
        max_position_embeddings=size.positions,
        eos_token_ids=(),
        pad_token_id=0,
    )


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis["flops"])


def time_train_step(model, loss_fn, batch, repeats: int) -> dict[str, float]:
    """Tokens/s and FLOP/s of one jitted AdamW step of ``loss_fn`` on ``batch`` (tokens: every
    ``*input_ids`` array, so a preference pair counts both sequences)."""
    from benchmarks.timing import median_seconds

    mesh = sharding.make_mesh({"data": -1})
    optimizer, _ = make_optimizer(num_steps=1000, learning_rate=1e-4, max_grad_norm=1.0)
    trained = create_model(model_source.init_fn(model, 0), optimizer, mesh)
    state, shardings = create_state(mesh, seed=0, models={"policy": trained})
    step = supervised_step(loss_fn, optimizer, shardings, mesh)
    data = sharding.batch_sharding(mesh)
    batch = {k: jax.device_put(v, data) for k, v in batch.items()}
    with jax.set_mesh(mesh):
        flops = _flops(step.jitted.lower(state, batch).compile())
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        metrics["loss"].block_until_ready()

    seconds = median_seconds(one_step, repeats, warmup=2)
    tokens = sum(v.size for k, v in batch.items() if k.endswith("input_ids"))
    return {"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds}


def sft_batch(size, workload, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (workload.batch, workload.train_length)
    ids = rng.integers(1, size.vocab, shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}


def pair_batch(size, workload, seed: int = 0) -> dict[str, np.ndarray]:
    """Preference pairs: ``batch`` × (chosen, rejected) of ``train_length`` tokens sharing a
    ``prompt``-token prompt; precomputed reference log-probs for DPO."""
    rng = np.random.default_rng(seed)
    shape = (workload.batch, workload.train_length)
    prompt = rng.integers(1, size.vocab, (workload.batch, workload.prompt))
    loss_mask = np.ones(shape, np.int32)
    loss_mask[:, : workload.prompt] = 0
    batch = {"margin": np.zeros(workload.batch, np.float32)}
    for side in ("chosen", "rejected"):
        ids = rng.integers(1, size.vocab, shape).astype(np.int32)
        ids[:, : workload.prompt] = prompt
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_attention_mask"] = np.ones(shape, np.int32)
        batch[f"{side}_loss_mask"] = loss_mask
        batch[f"ref_{side}_logps"] = rng.normal(-2000, 10, workload.batch).astype(np.float32)
    return batch


def time_sampler(cfg, workload, repeats: int) -> float:
    """New tokens/s of ``irl_jax.sampling.sample`` at T = 1 with no early stop."""
    from benchmarks.timing import median_seconds
    from irl_jax.sampling import sample

    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(1, cfg.vocab_size, (workload.batch, workload.prompt)).astype(np.int32)
    prompt_mask = np.ones_like(prompt_ids)
    params = model.init(jax.random.key(0), prompt_ids[:, :2], prompt_mask[:, :2])["params"]
    params = sharding.unbox(params)
    keys = iter(jax.random.split(jax.random.key(1), repeats + 4))

    def generate():
        out = sample(
            cfg,
            params,
            prompt_ids,
            prompt_mask,
            rng=next(keys),
            max_new_tokens=workload.new_tokens,
            temperature=1.0,
            eos_ids=(),
        )
        out.response_ids.block_until_ready()

    seconds = median_seconds(generate, repeats, warmup=2)
    return workload.batch * workload.new_tokens / seconds


def measure(size, workload, repeats: int) -> dict[str, float]:
    cfg = model_config(size)
    results = {"sampler_new_tokens_per_s": time_sampler(cfg, workload, repeats)}
    rm_model = RewardModel(cfg)
    steps = {
        "sft": (Transformer(cfg), sft.make_loss_fn(cfg), sft_batch(size, workload)),
        "rm": (
            rm_model,
            reward_model.make_loss_fn(rm_model, reward_model.default_config()),
            pair_batch(size, workload),
        ),
        # DPO with reference log-probs precomputed once (the default; TRL's precompute mode).
        "dpo": (
            Transformer(cfg),
            direct.make_loss_fn(cfg, direct.default_config(), on_the_fly=False),
            pair_batch(size, workload),
        ),
    }
    for name, (model, loss_fn, batch) in steps.items():
        timed = time_train_step(model, loss_fn, batch, repeats)
        results[f"{name}_step_tokens_per_s"] = timed["tokens_per_s"]
        results[f"{name}_step_flops_per_s"] = timed["flops_per_s"]
    return results
