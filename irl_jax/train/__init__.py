"""Training core shared by every algorithm: state, optimizer, step, the one loop."""

from irl_jax.train.loop import train_loop
from irl_jax.train.optim import make_optimizer, optimizer_from_config
from irl_jax.train.state import TrainState, create_train_state
from irl_jax.train.step import global_batch, make_train_step

__all__ = [
    "TrainState",
    "create_train_state",
    "global_batch",
    "make_optimizer",
    "make_train_step",
    "optimizer_from_config",
    "train_loop",
]
