"""Where a model comes from: a named preset (random init) or a local Hugging Face directory.

``resolve_config`` gives the ``ModelConfig`` (from the directory's ``config.json``, or a preset
sized to the tokenizer), ``init_fn`` a function returning boxed params (shapes and logical
axes, initialized from a seed) and ``load_params`` the directory's weights placed into their
shardings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from irl_jax.models import hf
from irl_jax.models.config import ModelConfig, preset


def is_hf_dir(path: str) -> bool:
    """``path`` is a directory with a ``config.json``."""
    return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def weights_dir(model: str, init_from: str = "") -> str:
    """The Hugging Face directory the weights come from: ``init_from``, else ``model`` when it
    is a directory, else "" (a preset, randomly initialized)."""
    if init_from:
        return init_from
    return model if is_hf_dir(model) else ""


def resolve_config(
    model: str,
    init_from: str = "",
    *,
    tokenizer: Any,
    overrides: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """The ``ModelConfig``: from the weights' ``config.json``, or the preset ``model`` with its
    vocabulary and special ids taken from ``tokenizer``.

    Args:
      model: a preset name or a Hugging Face directory.
      init_from: a directory whose weights to start from (its config wins).
      tokenizer: sizes a preset's vocabulary.
      overrides: ``ModelConfig`` fields to change (dtypes, remat, shapes of a preset); a preset
        whose ``hidden_size`` or ``num_heads`` changes keeps ``head_dim = hidden / heads``.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    source = weights_dir(model, init_from)
    if source:
        cfg, _ = hf.config_from_hf(hf.read_config(source), **overrides)
        return cfg
    base = preset(model)
    if "hidden_size" in overrides or "num_heads" in overrides:
        hidden = overrides.get("hidden_size", base.hidden_size)
        heads = overrides.get("num_heads", base.num_heads)
        overrides.setdefault("head_dim", hidden // heads)
        if base.is_gpt2:
            overrides.setdefault("num_kv_heads", heads)
            overrides.setdefault("intermediate_size", 4 * hidden)
    eos = tuple(i for i in (tokenizer.eos_token_id,) if i is not None)
    return base.replace(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=eos,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )


def init_fn(module: nn.Module, seed: int) -> Callable[[], Any]:
    """``() -> params`` of ``module`` (called on ``(ids, mask)``), boxed in their logical axes:
    what ``irl_jax.train.create_model`` needs for shapes and shardings."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return lambda: module.init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"]


def load_params(
    source: str, mesh: jax.sharding.Mesh, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The weights of the directory ``source``, each tensor placed straight into its sharding
    (a sequence classifier's params carry ``transformer`` and ``score``)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg, params = hf.load_pretrained(source, mesh=mesh, **overrides)
    logging.info("loaded %s weights from %s", cfg.architecture, source)
    return params
