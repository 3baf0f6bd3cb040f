"""One update builder for every trained model, and the jitted step that wraps an algorithm.

``make_update`` turns a loss function into ``update(model, batch, rng, *context) -> (model,
metrics)``: gradients (accumulated over microbatches), the optax update, ``num_epochs`` passes
over ``num_minibatches`` shuffled minibatches. It is a pure function, so an algorithm composes
several (a policy and a critic, a policy and a discriminator) inside ONE jitted step built by
``jit_step``; ``supervised_step`` is that composition for the one-model case (SFT, reward
models, DPO).

Loss functions return a ``Loss(total, count)`` — a sum of per-unit losses and the number of
units (rows, tokens, pairs) it covers — instead of a mean. The update divides the sum over all
microbatches by the count over all microbatches, so a token-mean loss under gradient
accumulation equals the token mean over the whole batch, not the mean of per-microbatch means
(which over-weights the tokens of short microbatches; the bug transformers fixed in 4.46).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from irl_jax import sharding as sharding_lib
from irl_jax.models import lora
from irl_jax.train.state import ModelState, TrainState, attach, detach


class Loss(NamedTuple):
    """A loss as ``total`` (Σ of per-unit losses) over ``count`` units; its value is
    ``total / count`` (0 when ``count`` is 0)."""

    total: jax.Array
    count: jax.Array

    @classmethod
    def mean(cls, losses: jax.Array, weights: jax.Array | None = None) -> Loss:
        """The (weighted) mean of per-unit ``losses`` as a ``Loss``."""
        if weights is None:
            return cls(jnp.sum(losses), jnp.asarray(losses.size, jnp.float32))
        weights = weights.astype(jnp.float32)
        return cls(jnp.sum(losses * weights), jnp.sum(weights))

    @property
    def value(self) -> jax.Array:
        return self.total / _nonzero(self.count)


# loss_fn(params, batch, rng, *context) -> (Loss, metrics dict of scalars)
LossFn = Callable[..., tuple[Loss, dict[str, jax.Array]]]
Update = Callable[..., tuple[ModelState, dict[str, jax.Array]]]


def _nonzero(count: jax.Array) -> jax.Array:
    return jnp.where(count > 0, count, 1.0)


def split_rows(tree: Any, parts: int) -> Any:
    """``[B, ...] -> [parts, B / parts, ...]`` for every leaf (B must divide)."""

    def split(x):
        if x.shape[0] % parts:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {parts} parts")
        return x.reshape(parts, x.shape[0] // parts, *x.shape[1:])

    return jax.tree.map(split, tree)


def constrain_rows(tree: Any) -> Any:
    """Keeps a (mini)batch's rows sharded over ``('data', 'fsdp')`` (a no-op without a mesh)."""
    return jax.tree.map(
        lambda x: sharding_lib.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1)), tree
    )


def make_update(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    shardings: ModelState,
    *,
    num_epochs: int = 1,
    num_minibatches: int = 1,
    grad_accum_steps: int = 1,
    schedule: optax.Schedule | None = None,
) -> Update:
    """Builds ``update(model, batch, rng, *context) -> (model, metrics)`` (pure; jit the step
    that calls it, e.g. with ``jit_step``).

    ``num_epochs`` passes over ``batch``, each split into ``num_minibatches`` minibatches (rows
    shuffled per epoch with ``fold_in(rng, epoch)`` when there is more than one), with one
    optimizer update each; a minibatch's gradient is accumulated over ``grad_accum_steps``
    microbatches in a ``lax.scan`` (peak memory: one microbatch), the loss being
    Σ totals / Σ counts over the microbatches. The loss function gets a key that depends on
    ``rng``, the update index and the microbatch index, and ``context`` (frozen params, a
    reward source, …) unchanged. An update whose loss or gradient norm is not finite is
    discarded on device (params, optimizer state and update count stay as they were) and
    counted in the ``nonfinite_updates`` metric, which the loop reads (``on_nonfinite``).
    With LoRA adapters in the params, gradients are taken and the optimizer applied to the
    trained part only (``lora.split``: adapters and heads); the frozen base weights are
    constants of the loss (no gradient buffers, no optimizer state).

    Args:
      loss_fn: ``(params, batch, rng, *context) -> (Loss, metrics)``.
      optimizer: the model's optax transformation.
      shardings: the model's ``ModelState`` shardings (the gradients are kept sharded like
        the params).
      num_epochs, num_minibatches, grad_accum_steps: see above.
      schedule: the learning-rate schedule, reported as ``learning_rate`` at the first update.

    Returns:
      The update function. Its metrics (means over the updates): the loss function's, ``loss``,
      ``grad_norm`` and ``nonfinite_updates`` (the fraction of updates discarded);
      ``learning_rate`` with a schedule.
    """

    def objective(trainable, frozen, batch, rng, context):
        loss, metrics = loss_fn(lora.combine(trainable, frozen), batch, rng, *context)
        return loss.total, (loss.count, metrics)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    trainable_shardings, _ = lora.split(shardings.params)

    def gradients(params, frozen, minibatch, rng, context):
        """(loss, metrics, grads) of one minibatch: sums over microbatches / the total count;
        ``params`` are the trained ones, ``frozen`` the rest (or None)."""

        def micro(carry, inputs):
            index, rows = inputs
            (total, (count, metrics)), grads = grad_fn(
                params, frozen, constrain_rows(rows), jax.random.fold_in(rng, index), context
            )
            totals = jax.tree.map(jnp.add, carry, (total, count, grads))
            return totals, metrics

        if grad_accum_steps == 1:  # no accumulator: the gradient is the only params-sized buffer
            (total, (count, metrics)), grads = grad_fn(params, frozen, minibatch, rng, context)
        else:
            zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0), jnp.float32(0), params))
            indices = jnp.arange(grad_accum_steps)
            (total, count, grads), metrics = jax.lax.scan(
                micro, zeros, (indices, split_rows(minibatch, grad_accum_steps))
            )
            metrics = jax.tree.map(jnp.mean, metrics)
        scale = 1.0 / _nonzero(count)
        grads = jax.tree.map(lambda g: g * scale, grads)
        grads = jax.lax.with_sharding_constraint(grads, trainable_shardings)
        return total * scale, metrics, grads

    def update(model: ModelState, batch: Any, rng: jax.Array, *context):
        shuffle_key, loss_key = jax.random.split(rng)

        def minibatch_step(model, inputs):
            index, minibatch = inputs
            key = jax.random.fold_in(loss_key, index)
            trainable, frozen = lora.split(model.params)
            loss, metrics, grads = gradients(trainable, frozen, minibatch, key, context)
            grad_norm = optax.global_norm(grads)
            updates, opt_state = optimizer.update(grads, model.opt_state, trainable)
            params = lora.combine(optax.apply_updates(trainable, updates), frozen)
            # A select, not a branch: fused into the update's elementwise ops; bit-identical
            # to the plain update when everything is finite.
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            updated = ModelState(model.step + 1, params, opt_state)
            model = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, model)
            metrics = {
                **metrics,
                "loss": loss,
                "grad_norm": grad_norm,
                "nonfinite_updates": 1.0 - finite.astype(jnp.float32),
            }
            return model, metrics

        def epoch(model, index):
            rows = batch
            if num_minibatches > 1:
                size = jax.tree.leaves(batch)[0].shape[0]
                order = jax.random.permutation(jax.random.fold_in(shuffle_key, index), size)
                rows = jax.tree.map(lambda x: x[order], batch)
            indices = index * num_minibatches + jnp.arange(num_minibatches)
            return jax.lax.scan(minibatch_step, model, (indices, split_rows(rows, num_minibatches)))

        first_step = model.step
        model, metrics = jax.lax.scan(epoch, model, jnp.arange(num_epochs))
        metrics = jax.tree.map(jnp.mean, metrics)
        if schedule is not None:
            metrics["learning_rate"] = schedule(first_step)
        return model, metrics

    return update


def jit_step(
    step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    shardings: TrainState,
    mesh: Mesh,
    *,
    num_args: int = 0,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch, *args) -> (state, metrics)`` jitted once, run under ``mesh``.

    The state is donated (updated in place) and keeps ``shardings``; the batch (a dict of arrays,
    or a dict of such dicts for several data streams) is sharded over ``('data', 'fsdp')``;
    ``num_args`` further arguments (e.g. a reward source: a pytree whose params are leaves, not
    constants baked into the executable) keep the shardings they come with; metrics come back
    replicated and stay on device (the loop fetches them when it logs). Frozen params that
    share a LoRA model's base (``SharedBase``) are attached for the step and detached after it.
    """

    def shared_step(state, batch, *args):
        new_state, metrics = step(attach(state), batch, *args)
        return detach(new_state, state), metrics

    jitted = jax.jit(
        shared_step,
        in_shardings=(shardings, sharding_lib.batch_sharding(mesh), *([None] * num_args)),
        out_shardings=(shardings, sharding_lib.replicated(mesh)),
        donate_argnums=(0,),
    )

    def call(state, batch, *args):
        with jax.set_mesh(mesh):
            return jitted(state, batch, *args)

    call.jitted = jitted  # for .lower(...) (cost analysis, memory planning)
    return call


def supervised_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    shardings: TrainState,
    mesh: Mesh,
    *,
    model: str = "policy",
    grad_accum_steps: int = 1,
    schedule: optax.Schedule | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted step of a one-model algorithm: one optimizer update of ``state.models[model]``
    on ``loss_fn(params, batch, rng, state.frozen)`` per batch."""
    update = make_update(
        loss_fn,
        optimizer,
        shardings.models[model],
        grad_accum_steps=grad_accum_steps,
        schedule=schedule,
    )

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        trained, metrics = update(state.models[model], batch, state.step_rng(), state.frozen)
        return state.with_model(model, trained).replace(step=state.step + 1), metrics

    return jit_step(step, shardings, mesh)
