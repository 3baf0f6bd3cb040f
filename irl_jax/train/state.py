"""``TrainState``: everything a step updates, as one pytree, created directly into shardings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from irl_jax import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
    """Step counter, params, optimizer state, base PRNG key and algorithm extras.

    ``rng`` is a typed key; step t uses ``fold_in(rng, t)``, so randomness depends only on the
    seed and the step (exact resume). ``extras`` holds algorithm-owned arrays (e.g. an adaptive
    KL coefficient, a running reward normalizer); it is checkpointed with the rest.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extras: Any = flax.struct.field(default_factory=dict)

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


def create_train_state(
    init_params: Callable[[], Any],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    seed: int,
    extras: Callable[[], Any] | None = None,
    params: Any = None,
) -> tuple[TrainState, TrainState]:
    """Builds a ``TrainState`` directly into its shardings.

    The state is first built abstractly (``jax.eval_shape``) with params still boxed in their
    logical axis names; the optimizer state is initialized from the boxed params, so Adam's
    moments inherit the names too. Those names give every leaf its ``NamedSharding``; then the
    init runs under ``jax.jit(out_shardings=...)`` so nothing is materialized on one device.

    Args:
      init_params: ``() -> params`` whose leaves may be ``nn.Partitioned`` (logical axes), e.g.
        ``lambda: model.init(key, ids, mask)["params"]``.
      optimizer: the optax transformation.
      mesh: the device mesh.
      seed: base PRNG seed of the state.
      extras: ``() -> pytree`` of algorithm extras (replicated).
      params: already loaded params (e.g. from a Hugging Face checkpoint) to use instead of
        ``init_params()``; ``init_params`` then only provides the shapes and logical axes.

    Returns:
      ``(state, shardings)``: the state and the matching tree of ``NamedSharding``.
    """

    def build(params) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key(seed),
            extras=extras() if extras is not None else {},
        )

    shardings = sharding_lib.tree_shardings(jax.eval_shape(lambda: build(init_params())), mesh)
    if params is None:
        state = jax.jit(lambda: sharding_lib.unbox(build(init_params())), out_shardings=shardings)()
    else:
        state = jax.jit(build, in_shardings=(shardings.params,), out_shardings=shardings)(params)
    return state, shardings
