"""Where a model comes from: a named preset (random init) or a local Hugging Face directory.

``resolve_config`` gives the ``ModelConfig`` (from the directory's ``config.json``, or a preset
sized to the tokenizer), ``init_fn`` a function returning boxed params (shapes and logical
axes, initialized from a seed) and ``load_params`` the directory's weights placed into their
shardings.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from irl_jax.models import hf
from irl_jax.models.config import ModelConfig, preset

# Written last into an export (``irl_jax.workdir.publish_directory``): the directory is whole.
COMPLETE_MARKER = "irl_jax_complete.json"


def _safetensors_problem(file: str) -> str | None:
    """Why the safetensors ``file`` is missing or shorter than its header says, or None (reads
    only the header: 8 bytes of length, then the JSON table of tensor offsets)."""
    if not os.path.isfile(file):
        return f"{os.path.basename(file)} is missing"
    size = os.path.getsize(file)
    try:
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size)) if 8 + header_size <= size else None
    except (struct.error, ValueError):
        header = None
    if not isinstance(header, dict):
        return f"{os.path.basename(file)} has an unreadable header (truncated?)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if size < 8 + header_size + max(ends, default=0):
        return f"{os.path.basename(file)} is truncated ({size} bytes)"
    return None


def hf_dir_problem(path: str) -> str | None:
    """Why ``path`` is not a complete Hugging Face model directory, or None.

    Complete: a ``config.json`` and either this project's completeness marker (an export is
    written elsewhere and renamed into place whole, the marker last) or weights that are all
    there — ``model.safetensors`` or every shard of ``model.safetensors.index.json``, each as
    long as its header says (a directory written by other tools, or an interrupted copy).
    """
    if not path or not os.path.isdir(path):
        return "is not a directory"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return "has no config.json"
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        return None
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return "has an unreadable model.safetensors.index.json"
    else:
        files = ["model.safetensors"]
    for file in files:
        problem = _safetensors_problem(os.path.join(path, file))
        if problem:
            return f"is incomplete: {problem} (an interrupted export or copy?)"
    return None


def is_hf_dir(path: str) -> bool:
    """``path`` is a complete Hugging Face model directory (``hf_dir_problem`` finds nothing)."""
    return hf_dir_problem(path) is None


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


def backbone(params: Any) -> Any:
    """The decoder params inside loaded weights: a head model's ``transformer``, or a causal
    LM's params without its ``lm_head`` (what a reward, value or embedding head sits on)."""
    params = params.get("transformer", params)
    return {name: value for name, value in params.items() if name != "lm_head"}


def fresh_head(init_fn: Callable[[], Any], name: str, mesh: jax.sharding.Mesh) -> Any:
    """The freshly initialized params of one head ``init_fn()[name]`` directly into their
    shardings (only that part of the init runs: XLA drops the rest)."""
    from irl_jax import sharding as sharding_lib

    abstract = jax.eval_shape(init_fn)[name]
    shardings = sharding_lib.tree_shardings(abstract, mesh)
    return jax.jit(lambda: sharding_lib.unbox(init_fn()[name]), out_shardings=shardings)()
