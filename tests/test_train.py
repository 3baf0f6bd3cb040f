"""Training core: optimizer, step, mesh equality, no recompiles, checkpoints, the loop."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import sharding
from irl_jax.algorithms import sft
from irl_jax.checkpoint import CheckpointManager
from irl_jax.data.iterator import BatchIterator, eval_batches
from irl_jax.metrics import read_metrics
from irl_jax.models import Transformer, preset
from irl_jax.models import source as model_source
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step, train_loop
from irl_jax.train.optim import learning_rate_schedule

CFG = preset("llama-tiny", vocab_size=64, num_layers=1)


def random_sft_arrays(rows=64, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CFG.vocab_size, (rows, length)).astype(np.int32)
    lengths = rng.integers(6, length + 1, rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = mask.copy()
    loss_mask[:, :3] = 0  # a 3-token "prompt"
    return {"input_ids": ids * mask, "attention_mask": mask, "loss_mask": loss_mask}


def mesh_of(mesh_shape):
    """A mesh on as many devices as the shape needs (all of them for a -1 axis)."""
    sizes = list(mesh_shape.values())
    count = jax.device_count() if -1 in sizes else int(np.prod(sizes))
    return sharding.make_mesh(mesh_shape, jax.devices()[:count])


def build(mesh_shape, *, frozen=(), grad_accum=1, lr=1e-2, weight_decay=0.0, clip=1.0):
    mesh = mesh_of(mesh_shape)
    return (mesh, *build_on(mesh, frozen, grad_accum, lr, weight_decay, clip))


def build_on(mesh, frozen=(), grad_accum=1, lr=3e-2, weight_decay=0.0, clip=1.0):
    optimizer, schedule = make_optimizer(
        num_steps=10,
        learning_rate=lr,
        warmup_steps=2,
        weight_decay=weight_decay,
        frozen=frozen,
        max_grad_norm=clip,
    )
    policy = create_model(model_source.init_fn(Transformer(CFG), 0), optimizer, mesh)
    state, shardings = create_state(mesh, seed=0, models={"policy": policy})
    step = supervised_step(
        sft.make_loss_fn(CFG),
        optimizer,
        shardings,
        mesh,
        grad_accum_steps=grad_accum,
        schedule=schedule,
    )
    return state, shardings, step


def run_steps(mesh, state, step, arrays, n, batch_size=8):
    batches = BatchIterator(arrays, batch_size, seed=0)
    losses = []
    data = sharding.batch_sharding(mesh)
    for _ in range(n):
        batch = {k: jax.device_put(v, data) for k, v in next(batches).items()}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


def params_of(state):
    return jax.device_get(state.models["policy"].params)


def test_learning_rate_schedule_values():
    schedule = learning_rate_schedule(
        1.0, num_steps=12, warmup_steps=2, schedule="cosine", end_lr_fraction=0.1
    )
    np.testing.assert_allclose([schedule(0), schedule(1), schedule(2)], [0.0, 0.5, 1.0])
    # Halfway through the decay: 0.1 + 0.9 · (1 + cos(π/2)) / 2 = 0.55.
    np.testing.assert_allclose(schedule(7), 0.55, rtol=1e-6)
    np.testing.assert_allclose(schedule(12), 0.1, rtol=1e-6)
    linear = learning_rate_schedule(2.0, num_steps=10, schedule="linear")
    np.testing.assert_allclose(linear(5), 1.0)
    with pytest.raises(ValueError, match="schedule='step'"):
        learning_rate_schedule(1.0, 10, schedule="step")


def test_frozen_subtrees_and_decay_mask():
    mesh, state, _, step = build(
        {"data": 1}, frozen=("^embed/", "layer_0/attn/q/"), weight_decay=0.1
    )
    before = params_of(state)
    state, _ = run_steps(mesh, state, step, random_sft_arrays(), 3)
    after = params_of(state)
    np.testing.assert_array_equal(after["embed"]["embedding"], before["embed"]["embedding"])
    np.testing.assert_array_equal(
        after["layer_0"]["attn"]["q"]["kernel"], before["layer_0"]["attn"]["q"]["kernel"]
    )
    assert not np.allclose(
        after["layer_0"]["attn"]["k"]["kernel"], before["layer_0"]["attn"]["k"]["kernel"]
    )
    # Decoupled weight decay only on matrices: with zero gradient, a norm scale would be
    # untouched by decay; check the mask itself.
    from irl_jax.train.optim import decay_mask

    mask = decay_mask(after)
    assert mask["layer_0"]["mlp"]["up"]["kernel"] and not mask["final_norm"]["scale"]


def test_gradient_accumulation_equals_the_global_token_mean():
    """Rows of very different lengths: 4 microbatches give the same update as 1, because the
    token-mean loss is Σ token losses / Σ tokens over the whole batch, not the mean of the
    microbatches' means (which would weight a short microbatch's tokens more)."""
    arrays = random_sft_arrays()
    lengths = np.where(np.arange(64) % 8 < 2, 12, 5)  # each microbatch of 2: one long, one short
    lengths[np.arange(64) % 8 >= 4] = 4  # ... and whole microbatches of short rows
    arrays["attention_mask"] = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
    arrays["loss_mask"] = arrays["attention_mask"].copy()
    arrays["loss_mask"][:, :3] = 0
    batch = {k: v[:8] for k, v in arrays.items()}
    tokens = batch["loss_mask"].reshape(4, 2, 12).sum(axis=(1, 2))
    assert len(set(tokens.tolist())) > 1  # microbatches of unequal token counts
    # SGD without clipping: the update is −lr · gradient, so gradients are compared directly.
    results = {}
    for accum in (1, 4):
        mesh = mesh_of({"data": 1})
        optimizer, _ = make_optimizer(num_steps=10, learning_rate=0.1, name="sgd")
        policy = create_model(model_source.init_fn(Transformer(CFG), 0), optimizer, mesh)
        initial = jax.device_get(policy[0].params)
        state, shardings = create_state(mesh, seed=0, models={"policy": policy})
        step = supervised_step(
            sft.make_loss_fn(CFG), optimizer, shardings, mesh, grad_accum_steps=accum
        )
        state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
        results[accum] = (float(metrics["loss"]), params_of(state))
    assert results[4][0] == pytest.approx(results[1][0], rel=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), results[1][1], results[4][1]
    )
    # The loss is Σ NLL / Σ tokens of the whole batch, by hand from one forward; the mean of the
    # four microbatches' token means differs from it.
    logps = np.asarray(sft.token_logps(Transformer(CFG), initial, batch))
    nll = -(logps * batch["loss_mask"]).reshape(4, 2, 12).sum(axis=(1, 2))
    assert results[1][0] == pytest.approx(nll.sum() / tokens.sum(), rel=1e-5)
    assert abs(np.mean(nll / tokens) - nll.sum() / tokens.sum()) > 0.01


def test_222_mesh_losses_equal_one_device():
    arrays = random_sft_arrays()
    mesh1 = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state1, _, step1 = build_on(mesh1)
    _, losses1 = run_steps(mesh1, state1, step1, arrays, 5)
    mesh8, state8, _, step8 = build({"data": 2, "fsdp": 2, "tensor": 2}, lr=3e-2)
    with jax.set_mesh(mesh8):
        state8, losses8 = run_steps(mesh8, state8, step8, arrays, 5)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    policy = state8.models["policy"]
    q = policy.params["layer_0"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # Adam moments are sharded like their params.
    mu = policy.opt_state[1][0].mu["layer_0"]["attn"]["q"]["kernel"]
    assert mu.sharding.spec == q.sharding.spec


def test_no_recompilation_after_first_step():
    mesh, state, _, step = build({"data": -1})
    arrays = random_sft_arrays()
    state, _ = run_steps(mesh, state, step, arrays, 1)
    with count_compiles() as compiles:
        state, _ = run_steps(mesh, state, step, arrays, 4)
    assert compiles == []


def test_checkpoint_round_trip_restores_typed_key_and_shardings(tmp_path):
    mesh, state, shardings, step = build({"data": 2, "fsdp": 2, "tensor": 2})
    state, _ = run_steps(mesh, state, step, random_sft_arrays(), 2)
    manager = CheckpointManager(str(tmp_path))
    manager.save(2, state, {"iterator": {"epoch": 0, "index": 2}}, {"lr": 0.1})
    manager.wait()
    restored, data_state, config = manager.restore(state, shardings)
    manager.close()
    assert data_state == {"iterator": {"epoch": 0, "index": 2}} and config == {"lr": 0.1}
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    same = lambda a, b: np.testing.assert_array_equal(
        jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
        jax.random.key_data(b) if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key) else b,
    )
    jax.tree.map(same, jax.device_get(restored), jax.device_get(state))
    embedding = lambda s: s.models["policy"].params["embed"]["embedding"]
    assert embedding(restored).sharding == embedding(state).sharding


def test_batch_iterator_resume_and_process_slices():
    arrays = {"x": np.arange(20)}
    straight = BatchIterator(arrays, 4, seed=3)
    seen = [next(straight)["x"] for _ in range(7)]
    resumed = BatchIterator(arrays, 4, seed=3)
    for _ in range(3):
        next(resumed)
    again = BatchIterator(arrays, 4, seed=3)
    again.restore(resumed.state)
    np.testing.assert_array_equal(
        np.stack([next(again)["x"] for _ in range(4)]), np.stack(seen[3:])
    )
    assert sorted(np.concatenate(seen[:5])) == list(range(20))  # epoch 0 covers every row once
    halves = [BatchIterator(arrays, 4, seed=3, process_index=i, process_count=2) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([next(h)["x"] for h in halves]), seen[0])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        BatchIterator(arrays, 32, seed=0)
    last = eval_batches(arrays, 8)[-1]["x"]
    np.testing.assert_array_equal(last, [16, 17, 18, 19, 0, 0, 0, 0])


def test_loop_writes_metrics_and_keeps_last_good_checkpoint(tmp_path):
    mesh, state, shardings, step = build({"data": -1})
    arrays = random_sft_arrays()
    workdir = str(tmp_path)
    train_loop(
        state=state,
        state_shardings=shardings,
        train_step=step,
        batches=BatchIterator(arrays, 8, seed=0),
        mesh=mesh,
        workdir=workdir,
        num_steps=4,
        log_every=2,
        checkpoint_every=2,
        evaluate=lambda s: ({"answer": 42.0}, []),
    )
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]
    assert {"train/loss", "train/grad_norm", "train/learning_rate"} <= set(rows[0])
    assert rows[-1] == {"step": 4, "eval/answer": 42.0}
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert CheckpointManager(workdir).all_steps() == [2, 4]

    def exploding(state, batch):
        state, metrics = step(state, batch)
        return state, {**metrics, "loss": metrics["loss"] * jnp.nan}

    mesh, state, shardings, step = build({"data": -1})
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient norm at step 5"):
        train_loop(
            state=state,
            state_shardings=shardings,
            train_step=exploding,
            batches=BatchIterator(arrays, 8, seed=0),
            mesh=mesh,
            workdir=workdir,
            num_steps=8,
            log_every=1,
        )
    assert CheckpointManager(workdir).latest_step() == 4
    # The failed run wrote nothing past the good checkpoint's metrics for steps it never logged.
    assert max(r["step"] for r in read_metrics(workdir)) == 4
