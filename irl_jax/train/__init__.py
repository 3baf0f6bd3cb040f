"""Training core shared by every algorithm: state, optimizer, the update builder, the one loop."""

from irl_jax.train.loop import train_loop
from irl_jax.train.optim import make_optimizer, optimizer_from_config
from irl_jax.train.state import ModelState, TrainState, copy_params, create_model, create_state
from irl_jax.train.step import Loss, jit_step, make_update, supervised_step

__all__ = [
    "Loss",
    "ModelState",
    "TrainState",
    "copy_params",
    "create_model",
    "create_state",
    "jit_step",
    "make_optimizer",
    "make_update",
    "optimizer_from_config",
    "supervised_step",
    "train_loop",
]
