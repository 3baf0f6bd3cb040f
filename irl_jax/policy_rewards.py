"""Reward sources read off language models rather than reward models (SURVEY §2).

* ``LogRatio``: r(x, y) = β (log π(y|x) − log π_ref(y|x)) from two teacher-forced forwards —
  AfD's closed-form Init-SFT reward (π = the SFT policy, π_ref = the initial policy, β = 1: the
  logit of the Bayes-optimal classifier between their samples; Sun & van der Schaar 2024) and
  DPO's implicit reward.
* ``ImpliedReward``: the reward an IQ-Learn Q-function implies, Σ_t (Q(s_t, a_t) − γ V(s_{t+1}))
  over the response (``objectives.imitation``; Garg et al. 2021).

Both follow ``irl_jax.rewards``' interface ``fn(prompt_ids, prompt_mask, response_ids,
response_mask) -> [B]`` and are pytrees with the params as leaves, so jitted code takes them as
arguments (``rewards.as_pytree`` passes them through).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from irl_jax.models import ModelConfig, Transformer
from irl_jax.objectives.imitation import implied_rewards
from irl_jax.rewards import concat_prompt_response
from irl_jax.sampling import teacher_forced_logprobs

Array = jax.Array


@flax.struct.dataclass
class LogRatio:
    """r(x, y) = β (log π(y|x) − log π_ref(y|x)), the response's eos included.

    Attributes:
      params, ref_params: π and π_ref (architectures ``model_config``, ``ref_model_config``).
      beta: β.
    """

    params: Any
    ref_params: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)
    ref_model_config: ModelConfig = flax.struct.field(pytree_node=False)
    beta: float = flax.struct.field(pytree_node=False, default=1.0)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        logp = teacher_forced_logprobs(self.model_config, self.params, *rows).sum(-1)
        ref_logp = teacher_forced_logprobs(self.ref_model_config, self.ref_params, *rows).sum(-1)
        return self.beta * (logp - ref_logp)


def sequence_implied_reward(
    model_config: ModelConfig,
    params: Any,
    input_ids: Array,
    attention_mask: Array,
    target_mask: Array,
    gamma: float = 1.0,
) -> Array:
    """``[B]`` Σ_t r_t over the ``target_mask`` tokens of ``[B, T]`` rows, r_t = Q − γV′ with
    Q = the model's logits and V′ = 0 after its eos (``objectives.imitation.implied_rewards``).
    At γ = 1 this is log π(y|x) + V(s₀)."""
    logits = Transformer(model_config).apply({"params": params}, input_ids, attention_mask).logits
    eos_ids = model_config.eos_token_ids
    rewards = implied_rewards(logits, input_ids, target_mask, gamma=gamma, eos_ids=eos_ids)
    return rewards.sum(-1)


@flax.struct.dataclass
class ImpliedReward:
    """IQ-Learn's implied sequence reward Σ_t (Q(s_t, a_t) − γ V(s_{t+1})) of a policy whose
    logits are the Q-values (``sequence_implied_reward``)."""

    params: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)
    gamma: float = flax.struct.field(pytree_node=False, default=1.0)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        ids, mask = concat_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
        target = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1)
        return sequence_implied_reward(
            self.model_config, self.params, ids, mask, target, self.gamma
        )
