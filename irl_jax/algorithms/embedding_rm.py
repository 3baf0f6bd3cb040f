"""Embedding-based reward models: small heads on a frozen backbone's cached embeddings.

Sun et al. (2025) make reward modeling cheap enough for thousands of runs by separating the two
costs: the embedding φ(x, y) of every prompt + response (the frozen backbone's last-token hidden
state, e.g. an SFT export's) is computed **once**, in jitted batches, and cached on disk keyed by
a hash of (backbone files, tokenized sequences, max_length); then small MLP (or linear) heads
r(x, y) = h_θ(φ(x, y)) are trained on it with the Bradley–Terry or classification loss of
``irl_jax.algorithms.reward_model``. ``num_seeds = S`` heads train at once: their params are
stacked on a leading axis, the loss is vmapped over it and the optimizer too (``per_seed``),
so one jitted step of the shared loop trains S independent reward models; evaluation reports
each metric's mean and std over seeds, and the seeds' ensemble (``ensemble_aggregation``).

Embeddings are standardized with the training set's per-feature mean and std.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from irl_jax import sharding as sharding_lib
from irl_jax.algorithms import reward_model
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import require
from irl_jax.evaluation import reward as reward_eval
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import ModelConfig, Transformer
from irl_jax.models import source as model_source
from irl_jax.models.heads import gather_last
from irl_jax.objectives import reward as objectives
from irl_jax.train import Loss, create_model, create_state, optimizer_from_config, supervised_step


def default_config() -> ml_collections.ConfigDict:
    """``config.embedding_rm``: the shared preference options plus head, seeds and cache."""
    settings = reward_model.preference_options()
    settings.head_hidden = 64  # width of the MLP head's hidden layer; 0 = a linear head
    settings.num_seeds = 8  # S heads trained at once (vmapped), each from its own init
    settings.cache_dir = ""  # "" = WORKDIR/embedding_cache
    settings.embed_batch_size = 256
    return settings


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.embedding_rm`` (before anything compiles)."""
    reward_model.validate_preference_options(config, "embedding_rm", reward_model.PAIR_LOSSES)
    s = config.embedding_rm
    for field in ("num_seeds", "embed_batch_size"):
        require(s[field] >= 1, f"embedding_rm.{field}", f"must be >= 1, got {s[field]}")
    require(s.head_hidden >= 0, "embedding_rm.head_hidden", f"must be >= 0, got {s.head_hidden}")


# ----------------------------------------------------------------------------- embeddings


def embed_sequences(
    cfg: ModelConfig,
    params: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> np.ndarray:
    """φ ``[N, D]`` float32: the backbone's final hidden state at each row's last real token."""
    model = Transformer(cfg)

    def embed(params, batch):
        hidden = model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], compute_logits=False
        ).hidden_states
        return gather_last(hidden, batch["attention_mask"]).astype(jnp.float32)

    embed = jax.jit(embed, out_shardings=sharding_lib.replicated(mesh))
    arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
    return map_rows(embed, params, arrays, batch_size, mesh)


def backbone_fingerprint(config: ml_collections.ConfigDict, cfg: ModelConfig) -> str:
    """sha256 of the backbone: its directory's ``config.json`` and safetensors bytes, or (a
    random preset) the model config and seed; the model config (dtypes) in both cases."""
    digest = hashlib.sha256(repr(cfg).encode())
    source = model_source.weights_dir(config.model, config.init_from)
    if not source:
        digest.update(f"random init, seed {config.seed}".encode())
        return digest.hexdigest()
    for name in sorted(os.listdir(source)):
        if name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json")):
            digest.update(name.encode())
            with open(os.path.join(source, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _backbone_params(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh) -> Any:
    """The frozen backbone's ``Transformer`` params (a sequence classifier's ``transformer``)."""
    source = model_source.weights_dir(config.model, config.init_from)
    if not source:
        init_fn = model_source.init_fn(Transformer(cfg), config.seed)
        return sharding_lib.init_sharded(init_fn, mesh)[0]
    return model_source.backbone(
        model_source.load_params(source, mesh, dict(config.model_overrides))
    )


def cached_embeddings(
    config: ml_collections.ConfigDict,
    cfg: ModelConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    cache_dir: str,
    mesh: jax.sharding.Mesh,
) -> np.ndarray:
    """φ of every row ``[M, D]``, each distinct row embedded once and cached on disk.

    The cache file ``cache_dir/embeddings-<hash>.npz`` is keyed by the backbone fingerprint,
    max_length and the distinct (ids, mask) rows — sorted, so the same sequences labelled
    differently (another β_ann, loss or label order) hit the same file. A miss loads the
    backbone and runs ``embed_sequences``; a hit loads nothing else.
    """
    rows = np.concatenate([input_ids, attention_mask], axis=1).astype(np.int32)
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    length = input_ids.shape[1]
    digest = hashlib.sha256(backbone_fingerprint(config, cfg).encode())
    digest.update(f"max_length={length};rows={distinct.shape}".encode())
    digest.update(distinct.tobytes())
    path = os.path.join(cache_dir, f"embeddings-{digest.hexdigest()[:24]}.npz")
    if os.path.isfile(path):
        logging.info("embedding cache hit: %s", path)
        with np.load(path) as cached:
            embeddings = cached["embeddings"]
    else:
        logging.info("embedding %d distinct sequences into %s", len(distinct), path)
        params = _backbone_params(config, cfg, mesh)
        embeddings = embed_sequences(
            cfg,
            params,
            distinct[:, :length],
            distinct[:, length:],
            config.embedding_rm.embed_batch_size,
            mesh,
        )
        if jax.process_index() == 0:
            os.makedirs(cache_dir, exist_ok=True)
            temporary = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(temporary, embeddings=embeddings)
            os.replace(temporary, path)
    return embeddings[inverse.reshape(-1)]


# ----------------------------------------------------------------------------- heads


class EmbeddingHead(nn.Module):
    """r = w₂ᵀ gelu(W₁ φ + b₁) + b₂ (``hidden > 0``) or wᵀφ + b (``hidden = 0``); ``[B]``."""

    hidden: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.hidden:
            features = nn.gelu(nn.Dense(self.hidden)(features))
        return nn.Dense(1)(features)[..., 0]


def per_seed(optimizer: optax.GradientTransformation, num_seeds: int):
    """``optimizer`` applied to each seed's slice of stacked params independently (vmapped).

    The loss is the mean over S seeds, so seed s's gradient is (1/S) ∂L_s/∂θ_s; it is scaled
    back by S, so every seed trains exactly as it would alone (clipping included).
    """

    def update(grads, state, params=None):
        grads = jax.tree.map(lambda g: g * num_seeds, grads)
        return jax.vmap(optimizer.update)(grads, state, params)

    return optax.GradientTransformation(jax.vmap(optimizer.init), update)


def make_loss_fn(head: EmbeddingHead, settings: ml_collections.ConfigDict):
    """``loss_fn(stacked params, batch, rng, frozen) -> (Loss, metrics)``: the mean over seeds
    of each seed's mean pair loss on ``chosen_embedding``/``rejected_embedding`` ``[B, D]`` and
    ``margin`` ``[B]``."""

    def one_seed(params, batch):
        features = jnp.concatenate([batch["chosen_embedding"], batch["rejected_embedding"]])
        chosen, rejected = jnp.split(head.apply({"params": params}, features), 2)
        losses = reward_model.pair_losses(chosen, rejected, settings, batch["margin"])
        return losses.mean(), objectives.pairwise_accuracy(chosen, rejected).mean()

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen
        losses, accuracy = jax.vmap(one_seed, in_axes=(0, None))(params, batch)
        return Loss.mean(losses), {"accuracy": accuracy.mean()}

    return loss_fn


def init_heads(head: EmbeddingHead, dim: int, num_seeds: int, seed: int) -> Callable[[], Any]:
    """``() -> stacked params``; seed s is initialized from ``fold_in(key(seed), s)``, so a
    seed's init does not depend on how many seeds run beside it."""
    features = jnp.zeros((1, dim), jnp.float32)

    def init():
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(
            jnp.arange(num_seeds)
        )
        return jax.vmap(lambda key: head.init(key, features)["params"])(keys)

    return init


# ----------------------------------------------------------------------------- data


class EmbeddingData(NamedTuple):
    """Standardized embeddings, margins and (synthetic task) gold rewards.

    ``train``/``eval``: ``{chosen,rejected}_embedding [N, D]``, ``margin [N]`` and, for eval,
    ``{chosen,rejected}_gold [N]``; ``candidates``: ``embedding [N, K, D]``, ``gold [N, K]`` (or
    ``None``); ``stats``: the data's flip rates.
    """

    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    candidates: dict[str, np.ndarray] | None
    stats: dict[str, float]


def embedding_data(
    config: ml_collections.ConfigDict,
    cfg: ModelConfig,
    tokenizer: Any,
    cache_dir: str,
    mesh: jax.sharding.Mesh,
) -> EmbeddingData:
    """Tokenizes the comparisons (``reward_model.load_data``) and embeds every sequence through
    the cache; embeddings are standardized with the training set's statistics."""
    data = reward_model.load_data(config, tokenizer, section="embedding_rm")
    parts = {
        f"{split}_{side}": reward_eval.side_arrays(arrays, side)
        for split, arrays in (("train", data.train), ("eval", data.eval))
        for side in ("chosen", "rejected")
    }
    if data.candidates is not None:
        parts["candidates"] = data.candidates
    flat = {name: a["input_ids"].reshape(-1, a["input_ids"].shape[-1]) for name, a in parts.items()}
    masks = [a["attention_mask"].reshape(flat[n].shape) for n, a in parts.items()]
    embeddings = cached_embeddings(
        config, cfg, np.concatenate(list(flat.values())), np.concatenate(masks), cache_dir, mesh
    )
    sizes = np.cumsum([len(ids) for ids in flat.values()])[:-1]
    by_part = dict(zip(flat, np.split(embeddings, sizes)))
    train = np.concatenate([by_part["train_chosen"], by_part["train_rejected"]])
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    standardize = lambda x: ((x - mean) / std).astype(np.float32)
    task = setup_lib.task_of(config)
    gold = lambda a: reward_eval.sequence_gold(
        task.gold_reward, a["input_ids"], a["attention_mask"], a["loss_mask"]
    )
    splits = {}
    for split, arrays in (("train", data.train), ("eval", data.eval)):
        splits[split] = {"margin": arrays["margin"]}
        for side in ("chosen", "rejected"):
            splits[split][f"{side}_embedding"] = standardize(by_part[f"{split}_{side}"])
            if split == "eval" and task is not None:
                splits[split][f"{side}_gold"] = gold(parts[f"eval_{side}"])
    candidates = None
    if data.candidates is not None:
        n, k, _ = data.candidates["input_ids"].shape
        candidates = {
            "embedding": standardize(by_part["candidates"]).reshape(n, k, -1),
            "gold": gold(data.candidates),
        }
    return EmbeddingData(splits["train"], splits["eval"], candidates, data.stats)


# ----------------------------------------------------------------------------- evaluation


def _mean_and_std(per_seed: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for name in per_seed[0]:
        values = np.array([m[name] for m in per_seed])
        out[name], out[f"{name}_std"] = float(values.mean()), float(values.std())
    return out


def make_evaluator(
    head: EmbeddingHead, data: EmbeddingData, settings: ml_collections.ConfigDict
) -> Callable[[Any], dict[str, float]]:
    """``stacked params -> metrics``: every ``pair_metrics`` / ``candidate_metrics`` entry as
    its mean over seeds plus ``<name>_std``, and ``ensemble_<name>`` for the seeds' ensemble."""
    scores = jax.jit(
        lambda params, x: jax.vmap(lambda p: head.apply({"params": p}, x))(params)
    )  # [S, N]
    gold = [data.eval.get("chosen_gold"), data.eval.get("rejected_gold")]
    combine = lambda x: np.asarray(
        objectives.aggregate_ensemble(
            jnp.asarray(x).T, settings.ensemble_aggregation, settings.uwo_penalty
        )
    )

    def metrics_of(chosen, rejected, candidate_scores):
        m = reward_eval.pair_metrics(chosen, rejected, *gold, num_bins=settings.calibration_bins)
        if candidate_scores is not None:
            m.update(reward_eval.candidate_metrics(candidate_scores, data.candidates["gold"]))
        return m

    def evaluate(params) -> dict[str, float]:
        chosen = np.asarray(scores(params, data.eval["chosen_embedding"]))
        rejected = np.asarray(scores(params, data.eval["rejected_embedding"]))
        candidate_scores = [None] * len(chosen)
        if data.candidates is not None:
            n, k, dim = data.candidates["embedding"].shape
            flat = data.candidates["embedding"].reshape(n * k, dim)
            candidate_scores = np.asarray(scores(params, flat)).reshape(-1, n, k)
        per_seed = [metrics_of(*args) for args in zip(chosen, rejected, candidate_scores)]
        ensemble_candidates = None
        if data.candidates is not None:
            ensemble_candidates = combine(candidate_scores.reshape(len(chosen), -1)).reshape(n, k)
        ensemble = metrics_of(combine(chosen), combine(rejected), ensemble_candidates)
        return {
            **data.stats,
            **_mean_and_std(per_seed),
            **{f"ensemble_{name}": value for name, value in ensemble.items()},
        }

    return evaluate


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Embeds (or loads the cached embeddings), trains ``num_seeds`` heads at once through the
    shared loop; returns the final evaluation metrics. Nothing is exported (the heads read
    cached embeddings, not text)."""
    settings = config.embedding_rm
    setup = setup_lib.setup(config)
    cache_dir = settings.cache_dir or os.path.join(workdir, "embedding_cache")
    data = embedding_data(config, setup.model_config, setup.tokenizer, cache_dir, setup.mesh)
    head = EmbeddingHead(settings.head_hidden)
    dim = data.train["chosen_embedding"].shape[1]
    optimizer, schedule = optimizer_from_config(config.optimizer, config.num_steps)
    optimizer = per_seed(optimizer, settings.num_seeds)
    init_fn = init_heads(head, dim, settings.num_seeds, config.seed)
    heads = create_model(init_fn, optimizer, setup.mesh)
    state, shardings = create_state(setup.mesh, seed=config.seed, models={"heads": heads})
    step = supervised_step(
        make_loss_fn(head, settings),
        optimizer,
        shardings,
        setup.mesh,
        model="heads",
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    evaluate = make_evaluator(head, data, settings)
    return setup_lib.run(
        setup,
        workdir,
        state=state,
        shardings=shardings,
        step=step,
        data=data.train,
        evaluate=lambda state: (evaluate(state.models["heads"].params), []),
        description="embedding_rm",
    )
