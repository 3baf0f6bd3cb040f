"""Heads on the decoder's final hidden states: scalar reward, K-member ensemble, per-token
reward (a process reward model) and per-token value.

Reward models score a sequence at its **last non-pad token** (found from the attention mask, so
left and right padding both work and a pad id equal to the eos id is harmless), as Hugging
Face's ``*ForSequenceClassification`` models do. Param trees::

    RewardModel:      {"transformer": <decoder params without lm_head>, "score": {"kernel": [D, K]}}
    TokenRewardModel: the same tree as RewardModel(num_heads=1)
    ValueModel:  {"transformer": ..., "value": {"kernel": [D, 1], "bias": [1]}}
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from irl_jax.models.config import ModelConfig
from irl_jax.models.transformer import Transformer


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index ``[B]`` of the last position whose mask is 1 (0 for an all-pad row)."""
    positions = jnp.arange(mask.shape[-1])
    return jnp.max(jnp.where(mask.astype(bool), positions, 0), axis=-1)


def gather_last(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Hidden state ``[B, D]`` at each row's last non-pad token of ``hidden`` ``[B, T, D]``."""
    index = last_token_index(mask)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


class RewardModel(nn.Module):
    """Decoder + linear score head, no bias (Hugging Face's ``score``).

    ``num_heads = K > 1`` gives a K-member ensemble sharing the backbone (heads differ by their
    random init); ensembles of independent backbones are built by vmapping seeds instead.

    Returns:
      rewards ``[B]`` float32 for ``num_heads == 1``, else ``[B, K]``.
    """

    config: ModelConfig
    num_heads: int = 1

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        hidden = _backbone(self.config, input_ids, attention_mask)
        features = gather_last(hidden, attention_mask)
        scores = _score_head(self.config, self.num_heads)(features).astype(jnp.float32)
        return scores[:, 0] if self.num_heads == 1 else scores


class TokenRewardModel(nn.Module):
    """Decoder + ``RewardModel``'s linear score head applied at every position: a process reward
    model (PRM).

    Returns per-token scores ``[B, T]`` float32. The param tree equals ``RewardModel(config)``'s
    (``{"transformer", "score"}``), so a PRM exports as (and loads from) a sequence classifier,
    whose score is the PRM's score at the last token.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        hidden = _backbone(self.config, input_ids, attention_mask)
        scores = _score_head(self.config, 1)(hidden)
        return scores[..., 0].astype(jnp.float32)


def _backbone(config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The decoder's final hidden states ``[B, T, D]`` (a submodule named ``transformer`` of the
    calling head; no LM head is computed)."""
    return Transformer(config, name="transformer")(
        input_ids, attention_mask, compute_logits=False
    ).hidden_states


def _score_head(config: ModelConfig, num_heads: int) -> nn.Module:
    """Hugging Face's ``score``: a linear map to ``num_heads`` outputs without bias."""
    return nn.DenseGeneral(
        num_heads,
        use_bias=False,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0 / (config.hidden_size + 1) ** 0.5),
            ("embed", "reward_heads"),
        ),
        name="score",
    )


class ValueModel(nn.Module):
    """Decoder + per-token value head (PPO critic). Returns values ``[B, T]`` float32."""

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        hidden = _backbone(self.config, input_ids, attention_mask)
        values = nn.DenseGeneral(
            1,
            dtype=self.config.compute_dtype,
            param_dtype=self.config.weight_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.zeros_init(), ("embed", "reward_heads")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("reward_heads",)),
            name="value",
        )(hidden)
        return values[..., 0].astype(jnp.float32)
