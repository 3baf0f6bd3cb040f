"""Embedding reward models: the on-disk embedding cache, vmapped seeds that train independently,
mean ± std reporting."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax import sharding
from irl_jax.algorithms import embedding_rm, experiment_config, run
from irl_jax.config import ConfigError
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step


def embedding_config(cache_dir, **changes):
    config = experiment_config("embedding_rm")
    config.model = "gpt2-tiny"  # a random frozen backbone: the test needs no SFT stage
    config.num_steps = 150
    config.batch_size = 64
    config.eval_every = 0
    config.log_every = 50
    config.data.num_train = 1024
    config.data.num_eval = 256
    config.data.max_length = 32
    config.optimizer.learning_rate = 3e-3
    config.embedding_rm.num_seeds = 4
    config.embedding_rm.num_eval_prompts = 64
    config.embedding_rm.cache_dir = str(cache_dir)
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (config[section] if section else config)[field] = value
    return config


def cache_files(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".npz"))


def test_embeddings_are_computed_once_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    embed = embedding_rm.embed_sequences
    monkeypatch.setattr(
        embedding_rm, "embed_sequences", lambda *a, **k: calls.append(len(a[2])) or embed(*a, **k)
    )
    first = embedding_rm.train(embedding_config(cache), str(tmp_path / "a"))
    assert len(calls) == 1 and len(cache_files(cache)) == 1
    # Distinct sequences only: 1024 + 256 pairs and 64 × 4 candidates hold repeats.
    assert calls[0] <= 2 * 1024 + 2 * 256 + 64 * 4
    print({name: round(value, 3) for name, value in first.items()})
    # Mean ± std over the seeds, and the seeds' ensemble.
    assert first["eval/gold_accuracy"] > 0.6, first
    assert 0 < first["eval/gold_accuracy_std"] < 0.05
    assert first["eval/ensemble_gold_accuracy"] > 0.6
    assert first["eval/spearman"] > 0.2 and first["eval/bon_gain"] > 0

    # A second run loads the cache: nothing is embedded and no backbone is loaded.
    def fail(*args, **kwargs):
        raise AssertionError("the cached embeddings were recomputed")

    monkeypatch.setattr(embedding_rm, "embed_sequences", fail)
    monkeypatch.setattr(embedding_rm, "_backbone_params", fail)
    second = embedding_rm.train(embedding_config(cache), str(tmp_path / "b"))
    assert second == pytest.approx(first, abs=1e-7)
    # Other labels on the same sequences (another β_ann, another loss) hit the same file.
    noisier = embedding_config(cache, embedding_rm__beta_ann=1.0)
    noisier.embedding_rm.loss = "classification"
    third = embedding_rm.train(noisier, str(tmp_path / "c"))
    assert third["eval/train_flip_rate"] > first["eval/train_flip_rate"] + 0.1
    assert len(cache_files(cache)) == 1

    # Other sequences miss the cache.
    monkeypatch.undo()
    embedding_rm.train(
        embedding_config(cache, num_steps=5, **{"data__seed": 9}), str(tmp_path / "d")
    )
    assert len(cache_files(cache)) == 2


def build(num_seeds, head, dim, mesh):
    optimizer, schedule = make_optimizer(num_steps=20, learning_rate=1e-2, max_grad_norm=0.5)
    optimizer = embedding_rm.per_seed(optimizer, num_seeds)
    init_fn = embedding_rm.init_heads(head, dim, num_seeds, seed=7)
    heads = create_model(init_fn, optimizer, mesh)
    state, shardings = create_state(mesh, seed=0, models={"heads": heads})
    settings = embedding_rm.default_config()
    loss_fn = embedding_rm.make_loss_fn(head, settings)
    return state, supervised_step(loss_fn, optimizer, shardings, mesh, model="heads")


def test_vmapped_seeds_train_as_if_alone():
    rng = np.random.default_rng(0)
    dim, rows = 16, 32
    batches = [
        {
            "chosen_embedding": rng.normal(size=(rows, dim)).astype(np.float32) + 0.3,
            "rejected_embedding": rng.normal(size=(rows, dim)).astype(np.float32),
            "margin": np.zeros(rows, np.float32),
        }
        for _ in range(6)
    ]
    head = embedding_rm.EmbeddingHead(hidden=8)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    params = {}
    for num_seeds in (1, 3):
        state, step = build(num_seeds, head, dim, mesh)
        for batch in batches:
            state, _ = step(state, jax.tree.map(jnp.asarray, batch))
        params[num_seeds] = jax.device_get(state.models["heads"].params)
    # Seed 0 of three equals seed 0 trained alone (own init, own clipping, own Adam state) ...
    jax.tree.map(
        lambda alone, stacked: np.testing.assert_allclose(stacked[0], alone[0], atol=1e-6),
        params[1],
        params[3],
    )
    # ... and the seeds differ.
    kernels = params[3]["Dense_1"]["kernel"]
    assert np.abs(kernels[0] - kernels[1]).max() > 1e-2


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"embedding_rm__loss": "ranking"}, "config.embedding_rm.loss: 'ranking'"),
        ({"embedding_rm__num_seeds": 0}, "config.embedding_rm.num_seeds: must be >= 1"),
        ({"embedding_rm__head_hidden": -1}, "config.embedding_rm.head_hidden: must be >= 0"),
        ({"embedding_rm__k": 1}, "config.embedding_rm.k: must be >= 2"),
    ],
)
def test_config_errors_name_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        run(embedding_config(tmp_path / "cache", **changes), str(tmp_path))
    assert not (tmp_path / "cache").exists()
