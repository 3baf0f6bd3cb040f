"""Best-of-N as a policy (SURVEY §4, §6): no training, only sampling, scoring and selection.

``best_of_n`` draws M responses per prompt in chunks of ``samples_per_chunk`` (one jitted call
each, so peak memory does not grow with M), scores each one with every reward source, and
keeps each prompt's running pick: the highest proxy reward (Best-of-N), or the highest
r/β + Gumbel noise, which picks index i with probability softmax(r/β)_i (soft Best-of-N,
Verdun et al. 2025). Response j of a prompt batch is drawn with its own key
``fold_in(rng, j)``, vmapped over the chunk's keys, so the draws do not depend on the chunking.

``train`` (the ``best_of_n`` algorithm) draws ``max_n`` responses once for each held-out prompt
and reports every N ≤ ``max_n`` from them (``irl_jax.evaluation.best_of_n``): the unbiased
order-statistics estimate of the proxy and gold reward of the best of N (± stderr over
prompts), the win rate against a plain sample, KL(π_BoN ‖ π) exactly through the reward
distribution (where M ≥ 4N) and its bound log N − (N−1)/N, and soft Best-of-N at
``soft_beta`` (N ≤ M/4). It writes ``WORKDIR/best_of_n.json`` and ``WORKDIR/best_of_n.png``
(gold and proxy reward against KL).

``draw_prompts`` runs ``best_of_n`` over many prompts in chunks (the algorithm and the drivers
use it); ``score_proxies`` scores one such draw by several proxies at once, so that experiments
comparing reward models (over-optimization curves, ensembles) compare them on the same samples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from irl_jax import rewards as rewards_lib
from irl_jax import rollout, user_rewards
from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import check_fields, check_reward, check_reward_paths, require
from irl_jax.evaluation import best_of_n as estimators
from irl_jax.metrics import MetricsWriter
from irl_jax.models import ModelConfig

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
    """``config.best_of_n``: how many responses, in which chunks, and soft Best-of-N's β (the
    responses follow ``config.sampling``, the proxy is ``config.reward``)."""
    return ml_collections.ConfigDict(
        {
            "max_n": 1024,  # N_max responses drawn per prompt; every N ≤ N_max is reported
            "num_prompts": 64,  # held-out prompts (the task's eval split)
            "samples_per_chunk": 64,  # responses per prompt in one jitted call (peak memory)
            "prompts_per_chunk": 64,  # prompts in one jitted call
            "soft_beta": 0.0,  # soft Best-of-N temperature β (0 = not reported)
            "soft_draws": 256,  # Monte-Carlo draws of the other N − 1 rewards per prompt
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.best_of_n`` and the reward it selects by; raises ``ConfigError`` naming
    the field."""
    s = config.best_of_n
    positive = ("max_n", "num_prompts", "samples_per_chunk", "prompts_per_chunk", "soft_draws")
    check_fields(s, "best_of_n", at_least={**dict.fromkeys(positive, 1), "soft_beta": 0})
    require(
        s.max_n % s.samples_per_chunk == 0,
        "best_of_n.samples_per_chunk",
        f"{s.samples_per_chunk} must divide max_n={s.max_n}",
    )
    require(
        s.num_prompts % s.prompts_per_chunk == 0,
        "best_of_n.prompts_per_chunk",
        f"{s.prompts_per_chunk} must divide num_prompts={s.num_prompts}",
    )
    mesh = sharding_lib.make_mesh(dict(config.mesh_shape))
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    require(
        s.prompts_per_chunk % data_parallel == 0,
        "best_of_n.prompts_per_chunk",
        f"{s.prompts_per_chunk} must be divisible by the data-parallel size {data_parallel}",
    )
    require(
        config.sampling.group_size == 1,
        "sampling.group_size",
        f"Best-of-N draws best_of_n.max_n responses per prompt; set group_size=1, got "
        f"{config.sampling.group_size}",
    )
    check_reward(config)


validate_paths = check_reward_paths  # a learned proxy must be a reward-model export


# ----------------------------------------------------------------------------- the policy


class Selection(NamedTuple):
    """Each prompt's pick: its response ``[B, T]``, selection score ``[B]`` (the proxy reward,
    or r/β + Gumbel noise) and sample index ``[B]``."""

    response_ids: np.ndarray
    response_mask: np.ndarray
    score: np.ndarray
    index: np.ndarray

    def merge(self, other: Selection) -> Selection:
        """Per prompt, ``other``'s pick where its score is strictly higher (so among equal
        scores the earlier sample stays, as ``argmax`` over all samples would keep it)."""
        better = other.score > self.score
        keep = lambda new, old: np.where(better.reshape(-1, *[1] * (old.ndim - 1)), new, old)
        return Selection(*(keep(new, old) for new, old in zip(other, self)))


def sample_keys(rng: Array, start: int, count: int) -> Array:
    """The keys of samples ``start … start + count − 1``: ``fold_in(rng, j)``."""
    return jax.vmap(lambda j: jax.random.fold_in(rng, j))(start + jnp.arange(count))


@functools.partial(jax.jit, static_argnames=("model_config", "settings", "select"))
def _draw_chunk(
    params: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    sources: dict[str, Any],
    keys: Array,
    first: Array,
    beta: Array,
    *,
    model_config: ModelConfig,
    settings: rollout.SamplingSettings,
    select: str | None,
) -> tuple[dict[str, Array], Array, Selection | None]:
    """One chunk of C samples per prompt: response j ∼ π with ``split(keys[j])[0]`` for every
    prompt (vmapped over j), all C·B responses scored at once by every source, and the chunk's
    pick per prompt (its highest proxy, or proxy/β + Gumbel noise from ``split(keys[j])[1]``)."""

    def one(key):
        sample_key, noise_key = jax.random.split(key)
        samples = rollout.sample(
            model_config, params, prompt_ids, prompt_mask, rng=sample_key, settings=settings
        )
        return samples, jax.random.gumbel(noise_key, prompt_ids.shape[:1])

    samples, noise = jax.vmap(one)(keys)  # [C, B, ...]
    rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), samples)  # [C·B, ...]
    chunk = keys.shape[0]
    scores = {
        name: rollout.score(source, rows).reshape(chunk, -1) for name, source in sources.items()
    }
    pick = None
    if select is not None:
        soft = scores[select] / jnp.where(beta > 0, beta, 1.0) + noise
        keyed = jnp.where(beta > 0, soft, scores[select])
        best = jnp.argmax(keyed, axis=0)  # [B]: the first of equal maxima
        take = lambda x: jnp.take_along_axis(x, best.reshape(1, -1, *[1] * (x.ndim - 2)), 0)[0]
        pick = Selection(
            take(samples.response_ids), take(samples.response_mask), take(keyed), first + best
        )
    return {name: s.T for name, s in scores.items()}, samples.response_mask.sum(-1).T, pick


def best_of_n(
    model_config: ModelConfig,
    params: Any,
    prompt_ids: Array,
    prompt_mask: Array,
    *,
    sources: dict[str, Any],
    rng: Array,
    settings: rollout.SamplingSettings,
    num_samples: int,
    samples_per_chunk: int,
    select: str | None = None,
    beta: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray, Selection | None]:
    """Draws ``num_samples`` responses to each prompt, ``samples_per_chunk`` at a time.

    Chunks are dispatched ahead and fetched one behind (the device holds at most two chunks);
    the picks are merged on the host, so the jitted chunk carries no state and compiles once.

    Args:
      model_config, params: the policy π (call under ``jax.set_mesh`` with sharded params).
      prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
      sources: name → reward source (``rewards.as_pytree``-able).
      rng: sample j of every prompt is drawn with ``fold_in(rng, j)``.
      settings: the sampling settings (``group_size`` is ignored).
      num_samples: M; samples_per_chunk: responses per prompt per jitted call (divides M).
      select: the source to pick by (``None``: no pick, scores only).
      beta: 0 picks the highest reward (Best-of-M); β > 0 picks i ∼ softmax(r/β) (soft).

    Returns:
      ``(scores, lengths, selection)``: name → ``[B, M]`` host rewards, ``[B, M]`` response
      lengths, and the picks (``None`` without ``select``).
    """
    if num_samples % samples_per_chunk:
        raise ValueError(f"samples_per_chunk={samples_per_chunk} must divide {num_samples}")
    sources = {name: rewards_lib.as_pytree(source) for name, source in sources.items()}
    settings = dataclasses.replace(settings, group_size=1)
    static = dict(model_config=model_config, settings=settings, select=select)
    scores, lengths, selection, pending = {name: [] for name in sources}, [], None, []

    def fetch():
        nonlocal selection
        chunk_scores, chunk_lengths, pick = jax.device_get(pending.pop(0))
        for name in sources:
            scores[name].append(chunk_scores[name])
        lengths.append(chunk_lengths)
        if pick is not None:
            pick = Selection(*pick)
            selection = pick if selection is None else selection.merge(pick)

    for first in range(0, num_samples, samples_per_chunk):
        keys = sample_keys(rng, first, samples_per_chunk)
        pending.append(
            _draw_chunk(
                params,
                prompt_ids,
                prompt_mask,
                sources,
                keys,
                jnp.int32(first),
                jnp.float32(beta),
                **static,
            )
        )
        if len(pending) > 1:
            fetch()
    while pending:
        fetch()
    scores = {name: np.concatenate(parts, axis=1) for name, parts in scores.items()}
    return scores, np.concatenate(lengths, axis=1), selection


def draw_prompts(
    setup: setup_lib.Setup,
    params: Any,
    prompts: dict[str, np.ndarray],
    *,
    sources: dict[str, Any],
    rng: Array,
    num_samples: int,
    samples_per_chunk: int,
    prompts_per_chunk: int,
    select: str | None = None,
    beta: float = 0.0,
) -> tuple[dict[str, np.ndarray], list[Selection | None]]:
    """``best_of_n`` over all of ``prompts`` (``prompt_arrays``' host arrays),
    ``prompts_per_chunk`` at a time; prompt chunk i draws with ``fold_in(rng, i)``. Samples
    follow ``setup.config.sampling``; a failing host reward function raises after its chunk.
    Returns name → ``[prompts, num_samples]`` scores and each prompt chunk's picks."""
    data = sharding_lib.batch_sharding(setup.mesh)
    settings = rollout.SamplingSettings.from_config(setup.config.sampling)
    parts, picks = {name: [] for name in sources}, []
    for index, first in enumerate(range(0, len(prompts["prompt_ids"]), prompts_per_chunk)):
        rows = slice(first, first + prompts_per_chunk)
        with jax.set_mesh(setup.mesh):
            chunk, _, selection = user_rewards.checked(best_of_n)(
                setup.model_config,
                params,
                jax.device_put(prompts["prompt_ids"][rows], data),
                jax.device_put(prompts["prompt_mask"][rows], data),
                sources=sources,
                rng=jax.random.fold_in(rng, index),
                settings=settings,
                num_samples=num_samples,
                samples_per_chunk=samples_per_chunk,
                select=select,
                beta=beta,
            )
        for name in sources:
            parts[name].append(chunk[name])
        picks.append(selection)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, picks


def score_proxies(
    config: ml_collections.ConfigDict,
    proxies: dict[str, dict[str, Any]],
    cache: str | None = None,
) -> dict[str, np.ndarray]:
    """One draw of ``best_of_n.max_n`` responses to each of ``best_of_n.num_prompts`` held-out
    prompts from the policy, scored by the gold reward and by every proxy: name → the fields of
    ``config.reward`` it sets (``{"model": export}``, or several exports and an
    ``aggregation``). Returns name → ``[prompts, max_n]`` host rewards ("gold" on a synthetic
    task), so that proxies are compared on the same samples. ``cache``: an ``.npz`` file
    reused when it holds these names at this shape, written otherwise."""
    s = config.best_of_n
    wanted = (*proxies, "gold")
    if cache and os.path.exists(cache):
        with np.load(cache) as cached:
            if set(wanted) <= set(cached.files) and cached["gold"].shape == (
                s.num_prompts,
                s.max_n,
            ):
                return {name: cached[name] for name in wanted}
    setup = setup_lib.setup(config)
    params = setup_lib.create_policy(setup, optax.identity())[0].params
    sources = dict(setup_lib.gold_sources(setup))
    for name, fields in proxies.items():
        config_of = config.copy_and_resolve_references()
        config_of.reward.update(fields)
        sources[name] = setup_lib.reward_source(dataclasses.replace(setup, config=config_of))[1]
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, s.num_prompts, config.data.seed + 7, split="eval"
    )
    scores, _ = draw_prompts(
        setup,
        params,
        prompts,
        sources=sources,
        rng=jax.random.key(config.seed),
        num_samples=s.max_n,
        samples_per_chunk=s.samples_per_chunk,
        prompts_per_chunk=s.prompts_per_chunk,
    )
    if cache and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.savez(cache, **scores)
    return scores


# ----------------------------------------------------------------------------- the report


def plot(report: dict[str, Any], out: str) -> str:
    """Gold and proxy reward against KL(π_N ‖ π) (exact and bound) at N = 1, 2, 4, …."""
    from irl_jax import plots

    shown = set(estimators.powers(2, report["max_n"]))
    rows = [r for r in report["best_of_n"] if r["n"] in shown]
    panels = [name for name in ("gold", "proxy") if f"{name}_mean" in rows[0]]
    nan = lambda x: math.nan if x is None else x

    def series(rows, kl_key):
        rows = [r for r in rows if r[kl_key] is not None]
        return {
            f"{name} reward": (
                [r[kl_key] for r in rows],
                [nan(r[f"{name}_mean"]) for r in rows],
                [nan(r[f"{name}_stderr"]) for r in rows],
            )
            for name in panels
        }

    runs = {
        "Best-of-N (exact KL)": series(rows, "kl_exact"),
        "Best-of-N (KL bound)": series(rows, "kl_bound"),
    }
    if report.get("soft_best_of_n"):
        beta = report["soft_best_of_n"][0]["beta"]
        runs[f"soft Best-of-N (β = {beta:g})"] = series(report["soft_best_of_n"], "kl")
    return plots.metric_grid(
        runs,
        [f"{name} reward" for name in panels],
        out,
        xlabel="KL(π_N ‖ π) [nats]",
        title=f"Best-of-N, N = 1 … {report['max_n']} ({report['num_prompts']} prompts)",
    )


def headline_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``eval/best_of_<N>/...`` at N = 1, 4, 16, … and N_max (the returned final metrics)."""
    wanted = {*estimators.powers(4, report["max_n"]), report["max_n"]}
    names = {
        "proxy_mean": "reward/proxy_mean",
        "gold_mean": "reward/gold_mean",
        "gold_stderr": "reward/gold_stderr",
        "win_rate": "win_rate",
        "kl_exact": "kl_mean",
        "kl_bound": "kl_bound",
    }
    metrics = {}
    for row in report["best_of_n"]:
        if row["n"] in wanted:
            for key, name in names.items():
                if row.get(key) is not None:
                    metrics[f"eval/best_of_{row['n']}/{name}"] = row[key]
    return metrics


# ----------------------------------------------------------------------------- running


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Draws ``best_of_n.max_n`` responses per held-out prompt from the policy
    (``init_from``/``model``), scores them with ``config.reward`` (the proxy) and the gold
    reward, writes ``best_of_n.json``, ``best_of_n.png`` and the picks' texts; returns the
    headline metrics."""
    started = time.perf_counter()
    s = config.best_of_n
    setup = setup_lib.setup(config)
    params = setup_lib.create_policy(setup, optax.identity())[0].params
    proxy_name, proxy_source = setup_lib.reward_source(setup)
    sources = {**setup_lib.gold_sources(setup), proxy_name: proxy_source}
    prompts = setup_lib.prompt_arrays(
        config, setup.tokenizer, s.num_prompts, config.data.seed + 7, split="eval"
    )
    sampling_started = time.perf_counter()
    scores, picks = draw_prompts(
        setup,
        params,
        prompts,
        sources=sources,
        rng=jax.random.key(config.seed),
        num_samples=s.max_n,
        samples_per_chunk=s.samples_per_chunk,
        prompts_per_chunk=s.prompts_per_chunk,
        select=proxy_name,
    )
    sampling_seconds = time.perf_counter() - sampling_started
    gold = scores.get("gold")
    report: dict[str, Any] = {
        "num_prompts": s.num_prompts,
        "max_n": s.max_n,
        "proxy": proxy_name,
        "sampling": config.sampling.to_dict(),
        "sampling_seconds": sampling_seconds,
        "best_of_n": estimators.report_rows(scores[proxy_name], gold, s.max_n),
    }
    if s.soft_beta > 0:  # plug-in estimates: where M ≥ 4N samples define the distribution
        ns = estimators.powers(2, s.max_n // estimators.KL_SAMPLES_PER_N)
        report["soft_best_of_n"] = estimators.soft_rows(
            scores[proxy_name], gold, ns, s.soft_beta, s.soft_draws, config.seed
        )
    report["wall_seconds"] = time.perf_counter() - started
    metrics = headline_metrics(report)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "best_of_n.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        plot(report, os.path.join(workdir, "best_of_n.png"))
    writer = MetricsWriter(workdir, tensorboard=False)
    writer.write(s.max_n, metrics)
    writer.write_samples(s.max_n, "best_of_n", _texts(setup, prompts, picks, scores, proxy_name))
    writer.close()
    return metrics


def _texts(setup, prompts, picks: list[Selection], scores, proxy_name: str) -> list[dict]:
    """The first ``policy_eval.num_samples_to_log`` prompts' Best-of-N_max picks, decoded."""
    ids = np.concatenate([p.response_ids for p in picks])
    mask = np.concatenate([p.response_mask for p in picks])
    index = np.concatenate([p.index for p in picks])
    out = []
    for row in range(min(setup.config.policy_eval.num_samples_to_log, len(ids))):
        prompt = prompts["prompt_ids"][row][prompts["prompt_mask"][row] > 0]
        entry = {
            "prompt": setup.tokenizer.decode([int(t) for t in prompt]),
            "response": setup.tokenizer.decode([int(t) for t in ids[row][mask[row] > 0]]),
        }
        entry.update({f"reward/{n}": float(v[row, index[row]]) for n, v in scores.items()})
        out.append(entry)
    return out
