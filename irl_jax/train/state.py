"""Training state: one record per trained model, gathered into one algorithm state.

* ``ModelState`` — a trained model: its update count, params and its own optimizer state.
* ``SharedBase`` — frozen params that share a trained model's frozen base weights and hold only
  their own LoRA adapters (a LoRA policy's reference: no second copy of the base).
* ``TrainState`` — everything an algorithm's step updates, as one pytree: the step counter and
  base PRNG key, the trained models by name (``policy``, ``critic``, ``discriminator``, …),
  frozen params by name (``reference``) and small arrays (KL coefficient, baselines, running
  reward statistics). It is checkpointed and restored as a whole, so resuming is exact for every
  part.

Both are created directly into their shardings: shapes come from ``jax.eval_shape`` with params
still boxed in their logical axis names, and the values are built by a jit with those
``out_shardings``, so no model is ever materialized on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from irl_jax import sharding as sharding_lib
from irl_jax.models import lora


@flax.struct.dataclass
class ModelState:
    """A trained model: ``step`` = optimizer updates applied so far (what its learning-rate
    schedule counts), ``params`` and ``opt_state``."""

    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class SharedBase:
    """Frozen params of a LoRA model that are the trained model ``model``'s base weights (frozen,
    so equal in both) with these ``adapters`` (``lora.adapters_only``) put in.

    A LoRA policy's reference π_ref is ``SharedBase`` of the initial adapters, whose ``B = 0``
    makes it compute exactly the base model. ``attach`` turns it into a full params tree (the
    same arrays, no copy) for a step or an evaluation; ``detach`` takes the adapters back.
    """

    adapters: Any
    model: str = flax.struct.field(pytree_node=False, default="policy")


@flax.struct.dataclass
class TrainState:
    """An algorithm's whole state.

    ``step`` counts the algorithm's steps (one ``train_loop`` step each; an RL iteration may
    apply several updates to a model, counted by that model's own ``step``). ``rng`` is a typed
    key; step t draws from ``fold_in(rng, t)``, so randomness depends only on the seed and the
    step (exact resume). ``models`` maps names to trained models, ``frozen`` names to params that
    no optimizer touches (a reference policy), ``extras`` names to algorithm arrays.
    """

    step: jax.Array
    rng: jax.Array
    models: dict[str, ModelState]
    frozen: dict[str, Any] = flax.struct.field(default_factory=dict)
    extras: dict[str, Any] = flax.struct.field(default_factory=dict)

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)

    def with_model(self, name: str, model: ModelState) -> TrainState:
        """This state with trained model ``name`` replaced."""
        return self.replace(models={**self.models, name: model})


def attach(state: TrainState) -> TrainState:
    """``state`` with every ``SharedBase`` frozen entry as full params (its model's params with
    its adapters put in); the other entries unchanged."""

    def full(value):
        if not isinstance(value, SharedBase):
            return value
        return lora.with_adapters(state.models[value.model].params, value.adapters)

    return state.replace(frozen={name: full(v) for name, v in state.frozen.items()})


def detach(state: TrainState, like: TrainState) -> TrainState:
    """Inverse of ``attach``: the entries that are ``SharedBase`` in ``like`` keep only their
    adapters (a step may have replaced such params, e.g. a reference refreshed to the policy)."""

    def shared(name, value):
        kept = like.frozen.get(name)
        if not isinstance(kept, SharedBase) or isinstance(value, SharedBase):
            return value
        return SharedBase(lora.adapters_only(value), kept.model)

    return state.replace(frozen={name: shared(name, v) for name, v in state.frozen.items()})


def create_model(
    init_params: Callable[[], Any],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    params: Any = None,
) -> tuple[ModelState, ModelState]:
    """A ``ModelState`` built directly into its shardings.

    The optimizer state is initialized from the *boxed* params, so Adam's moments inherit their
    logical axis names and are sharded like the params they follow. With LoRA adapters in the
    params, only the trained part (``lora.split``: adapters and heads) has optimizer state,
    and loaded base ``params`` are completed with fresh adapters (and quantized where the model
    stores a quantized kernel) by ``lora.conform``.

    Args:
      init_params: ``() -> params`` whose leaves may be ``nn.Partitioned`` (logical axes), e.g.
        ``lambda: model.init(key, ids, mask)["params"]``.
      optimizer: the model's optax transformation.
      mesh: the device mesh.
      params: already loaded (and placed) params to start from instead of ``init_params()``,
        which then only provides shapes and logical axes.

    Returns:
      ``(model, shardings)``: the record and the matching tree of ``NamedSharding``.
    """

    def build(params) -> ModelState:
        trainable, _ = lora.split(params)
        return ModelState(jnp.zeros((), jnp.int32), params, optimizer.init(trainable))

    shardings = sharding_lib.tree_shardings(jax.eval_shape(lambda: build(init_params())), mesh)
    if params is not None:
        params = lora.conform(params, init_params, shardings.params)
    if params is None:
        model = jax.jit(lambda: sharding_lib.unbox(build(init_params())), out_shardings=shardings)()
    else:
        model = jax.jit(build, in_shardings=(shardings.params,), out_shardings=shardings)(params)
    return model, shardings


def copy_params(params: Any, shardings: Any) -> Any:
    """A separate copy (own buffers, same shardings) of params that a step will donate: e.g. the
    frozen reference π_ref taken from the initial policy."""
    return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def create_state(
    mesh: Mesh,
    *,
    seed: int,
    models: Mapping[str, tuple[ModelState, ModelState]],
    frozen: Mapping[str, tuple[Any, Any]] | None = None,
    extras: Callable[[], Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """Gathers models (each from ``create_model``) into a ``TrainState`` and its shardings.

    Args:
      mesh: the device mesh.
      seed: base PRNG seed of the state.
      models: name -> ``(ModelState, shardings)``.
      frozen: name -> ``(params, shardings)``; the params are copied (``copy_params``), so they
        may alias a trained model's params (e.g. the reference = the initial policy).
      extras: ``() -> pytree`` of algorithm arrays, created replicated.

    Returns:
      ``(state, shardings)``.
    """
    replicated = sharding_lib.replicated(mesh)
    frozen = dict(frozen or {})

    def arrays():  # built by a jit with replicated outputs: fine across processes too
        made = extras() if extras is not None else {}
        return jnp.zeros((), jnp.int32), jax.random.key(seed), made

    step, rng, made = jax.jit(arrays, out_shardings=replicated)()
    state = TrainState(
        step=step,
        rng=rng,
        models={name: model for name, (model, _) in models.items()},
        frozen={name: copy_params(params, s) for name, (params, s) in frozen.items()},
        extras=made,
    )
    shardings = TrainState(
        step=replicated,
        rng=replicated,
        models={name: s for name, (_, s) in models.items()},
        frozen={name: s for name, (_, s) in frozen.items()},
        extras=jax.tree.map(lambda _: replicated, made),
    )
    return state, shardings
