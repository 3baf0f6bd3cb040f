"""``make_train_step``: one jitted, sharded, donating optimizer step for any loss function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from irl_jax import sharding as sharding_lib
from irl_jax.train.state import TrainState

# loss_fn(params, batch, rng, frozen) -> (scalar loss, metrics dict of scalars)
LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array, Any], tuple[jax.Array, dict]]


def split_rows(tree: Any, parts: int) -> Any:
    """``[B, ...] -> [parts, B / parts, ...]`` for every leaf (B must divide)."""

    def split(x):
        if x.shape[0] % parts:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {parts} parts")
        return x.reshape(parts, x.shape[0] // parts, *x.shape[1:])

    return jax.tree.map(split, tree)


def mean_over_microbatches(fn: Callable[[Any, jax.Array], Any], batch: Any, num: int) -> Any:
    """Averages ``fn(microbatch, index)`` (any pytree of arrays, e.g. ``(loss, metrics),
    grads``) over ``num`` equal row splits of ``batch``, in a ``lax.scan`` (gradient
    accumulation: peak memory is one microbatch's)."""
    if num == 1:
        return fn(batch, jnp.int32(0))
    micro = split_rows(batch, num)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, first, jnp.int32(0)))

    def add(total, inputs):
        index, microbatch = inputs
        return jax.tree.map(jnp.add, total, fn(microbatch, index)), None

    total, _ = jax.lax.scan(add, zeros, (jnp.arange(num), micro))
    return jax.tree.map(lambda x: x / num, total)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    state_shardings: TrainState,
    mesh: Mesh,
    *,
    schedule: optax.Schedule | None = None,
    grad_accum_steps: int = 1,
    frozen_shardings: Any = None,
) -> Callable[[TrainState, Mapping[str, jax.Array], Any], tuple[TrainState, dict]]:
    """Builds ``step(state, batch, frozen) -> (state, metrics)``, jitted once.

    The state is donated (updated in place); ``frozen`` carries read-only pytrees such as the
    reference policy or a reward model (not donated, not differentiated). With
    ``grad_accum_steps = A > 1`` the batch is split into A microbatches whose gradients are
    averaged in a ``lax.scan`` before one optimizer update (losses averaged per microbatch).

    Metrics: the loss function's, plus ``loss``, ``grad_norm`` and ``learning_rate``; all are
    replicated scalars left on device (the loop fetches them when it logs).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: Mapping[str, jax.Array], frozen: Any):
        rng = state.step_rng()
        (loss, metrics), grads = mean_over_microbatches(
            lambda micro, i: grad_fn(state.params, micro, jax.random.fold_in(rng, i), frozen),
            batch,
            grad_accum_steps,
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    data = sharding_lib.batch_sharding(mesh)
    replicated = sharding_lib.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(state_shardings, data, frozen_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the batch axis."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(x))
        for name, x in batch.items()
    }
