"""Optimizers from config: AdamW, warmup + cosine/linear decay, clipping, masks, freezing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "cosine", "linear")


def _path_name(path: tuple) -> str:
    """``'layer_0/attn/q/kernel'`` from a key path (box ``.value`` attributes are skipped)."""
    parts = [str(getattr(k, "key", getattr(k, "idx", ""))) for k in path if hasattr(k, "key")]
    return "/".join(parts)


def learning_rate_schedule(
    learning_rate: float,
    num_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_lr_fraction: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then ``schedule`` down to
    ``end_lr_fraction · learning_rate`` at ``num_steps`` (``constant`` stays flat)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={schedule!r}; expected one of {SCHEDULES}")
    decay_steps = max(num_steps - warmup_steps, 1)
    end = learning_rate * end_lr_fraction
    if schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    elif schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_lr_fraction)
    else:
        decay = optax.linear_schedule(learning_rate, end, decay_steps)
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (ndim ≥ 2): not on norms' scales or biases."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def freeze_labels(params: Any, frozen: Sequence[str]) -> Any:
    """``"frozen"`` for every param whose path matches one of the ``frozen`` regexes."""
    patterns = [re.compile(p) for p in frozen]

    def label(path, _):
        name = _path_name(path)
        return "frozen" if any(p.search(name) for p in patterns) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    *,
    num_steps: int,
    learning_rate: float,
    name: str = "adamw",
    warmup_steps: int = 0,
    schedule: str = "cosine",
    end_lr_fraction: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float = 0.0,
    frozen: Sequence[str] = (),
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain for a config's ``optimizer`` section.

    Args:
      num_steps: total optimizer steps (for the decay schedule).
      learning_rate, warmup_steps, schedule, end_lr_fraction: see ``learning_rate_schedule``.
      name: ``adamw`` (decoupled weight decay, Loshchilov & Hutter) or ``sgd``.
      weight_decay: applied to matrices only (``decay_mask``).
      b1, b2, eps: Adam moments.
      max_grad_norm: global-norm clipping before the update (0 disables).
      frozen: regexes over param paths (``'embed/'``, ``'layer_[01]/'``) that receive no
        updates.

    Returns:
      ``(optimizer, schedule)``.
    """
    schedule_fn = learning_rate_schedule(
        learning_rate, num_steps, warmup_steps, schedule, end_lr_fraction
    )
    if name == "adamw":
        core = optax.adamw(
            schedule_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask
        )
    elif name == "sgd":
        core = optax.sgd(schedule_fn)
    else:
        raise ValueError(f"optimizer.name={name!r}; expected 'adamw' or 'sgd'")
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    optimizer = optax.chain(*parts, core)
    if frozen:
        optimizer = optax.multi_transform(
            {"trainable": optimizer, "frozen": optax.set_to_zero()},
            lambda params: freeze_labels(params, frozen),
        )
    return optimizer, schedule_fn


def optimizer_from_config(config: Any, num_steps: int):
    """``make_optimizer`` from an ``ml_collections`` ``optimizer`` section."""
    return make_optimizer(num_steps=num_steps, **dict(config))
