"""The decoder family: config, linen modules, heads, and Hugging Face checkpoint I/O."""

from irl_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from irl_jax.models.transformer import (
    KVCache,
    Transformer,
    TransformerOutput,
    init_cache,
    positions_from_mask,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "TransformerOutput",
    "init_cache",
    "positions_from_mask",
    "preset",
    "stack_layers",
    "unstack_layers",
]
