"""Reward sources of dense and shaped per-token rewards (SURVEY §7; the math is in
``irl_jax.objectives.shaping``).

Each source follows ``irl_jax.rewards``' interface ``fn(prompt_ids, prompt_mask, response_ids,
response_mask)`` but returns token rewards ``[B, N]`` aligned with the response tokens, which
PPO takes as they are (``policy_gradient.token_rewards``) and to which it adds −β·k1_t. What
each row's sum equals:

* ``PrefixDifferences``: r_t = RM(x, y_≤t) − RM(x, y_<t); sum RM(x, y) − RM(x). All prefixes
  are scored in one forward (the score head at every position: ``prefix_scores``).
* ``AttentionCredit`` (ABC): r_t = w·α_t·R + (1 − w)·R·1[t = T], α the reward model's
  last-layer attention from the final token over the response, head-averaged and normalized;
  sum R = RM(x, y).
* ``ImplicitTokenReward`` (RTO): r_t = β₁·(log π_dpo − log π_ref)(y_t | s_t) + β₃·R·1[t = T];
  sum β₁·log π_dpo(y|x)/π_ref(y|x) + β₃·R.
* ``PotentialShaped``: r′_t = r_t + γΦ(s_{t+1}) − Φ(s_t) around any source and potential
  (``RewardPotential``: Φ(s_t) = RM(x, y_<t)); Σ_t γ^t r′_t = Σ_t γ^t r_t − Φ(s_0).

All are ``flax.struct`` pytrees with their params as leaves (jitted code takes them as
arguments, see ``irl_jax.rewards``).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from irl_jax.models import ModelConfig
from irl_jax.models.heads import RewardModel, TokenRewardModel, last_token_index
from irl_jax.models.transformer import attention_weights
from irl_jax.objectives import shaping
from irl_jax.objectives.policy_gradient import token_rewards
from irl_jax.rewards import concat_prompt_response, is_process_reward_model, load_checkpoint
from irl_jax.sampling import teacher_forced_logprobs

Array = jax.Array


def prefix_scores(
    model_config: ModelConfig, params: Any, prompt_ids, prompt_mask, response_ids, response_mask
) -> tuple[Array, Array]:
    """``(RM(x, y_≤t) [B, N], RM(x) [B])`` of a one-head sequence reward model, from one
    forward: the score head applied at every position (``TokenRewardModel``, whose params are a
    ``RewardModel``'s) of the left-padded prompt followed by the response. A causal model's
    score at position i depends only on tokens ≤ i, so the score at response token t is the
    reward model's score of the prefix y_≤t, and at the prompt's last token that of x alone."""
    ids, mask = concat_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
    scores = TokenRewardModel(model_config).apply({"params": params}, ids, mask)
    prompt_length = prompt_ids.shape[1]
    return scores[:, prompt_length:], scores[:, prompt_length - 1]


@flax.struct.dataclass
class PrefixDifferences:
    """r_t = RM(x, y_≤t) − RM(x, y_<t) of a one-head sequence reward model (``params``: a
    ``RewardModel(model_config)``'s); the sum over a response is RM(x, y) − RM(x)."""

    params: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        scores, prompt_scores = prefix_scores(self.model_config, self.params, *rows)
        return shaping.prefix_differences(scores, prompt_scores, response_mask)


@flax.struct.dataclass
class RewardPotential:
    """Φ(s_t) = RM(x, y_<t) ``[B, N]``: a sequence reward model's score of the state before
    each response token (Φ(s_0) = RM(x)), a potential for ``PotentialShaped``."""

    params: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        scores, prompt_scores = prefix_scores(self.model_config, self.params, *rows)
        return jnp.concatenate([prompt_scores[:, None], scores[:, :-1]], axis=1)


def final_token_attention(
    model_config: ModelConfig, params: Any, prompt_ids, prompt_mask, response_ids, response_mask
) -> tuple[Array, Array]:
    """``(RM(x, y) [B], a [B, H, N])`` of a one-head sequence reward model from one forward:
    its score and its last layer's attention probabilities from the sequence's final token
    (where the score is read) to each response position. The forward keeps every layer's
    ``[B, H, T, T]`` float32 attention (the sown intermediates), not only the last one's: cheap
    for the tiny models, ``L·B·H·T²·4`` bytes for long sequences."""
    ids, mask = concat_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
    scores, state = RewardModel(model_config).apply(
        {"params": params}, ids, mask, mutable=["intermediates"]
    )
    attention = attention_weights(state["intermediates"]["transformer"], model_config)[-1]
    last = last_token_index(mask)  # [B]; attention [B, H, T, S]
    rows = jnp.take_along_axis(attention, last[:, None, None, None], axis=2)[:, :, 0]
    return scores, rows[:, :, prompt_ids.shape[1] :]


@flax.struct.dataclass
class AttentionCredit:
    """ABC (Chan et al. 2024): r_t = w·α_t·R + (1 − w)·R·1[t = T], R = RM(x, y) and α the
    reward model's normalized last-layer attention from the final token over the response
    (``shaping.attention_credit``); the sum over a response is R."""

    params: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)
    weight: float = flax.struct.field(pytree_node=False, default=0.5)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        scores, attention = final_token_attention(self.model_config, self.params, *rows)
        credit = shaping.attention_credit(attention, response_mask)
        return shaping.abc_rewards(scores, credit, response_mask, self.weight)


@flax.struct.dataclass
class ImplicitTokenReward:
    """RTO's reward without PPO's KL term (Zhong et al. 2024): r_t = β₁·(log π_dpo −
    log π_ref)(y_t | s_t) + β₃·R·1[t = T] with R = ``outcome`` (a sequence source, e.g. the
    gold reward or a reward model); the sum is β₁·log π_dpo(y|x)/π_ref(y|x) + β₃·R.

    Attributes:
      dpo_params, ref_params: π_dpo (a DPO-trained export) and the reference it was trained
        against (architectures ``model_config``, ``ref_model_config``).
      outcome: the sequence reward source R (a pytree, see ``rewards.as_pytree``).
      dpo_coef, outcome_coef: β₁ and β₃.
    """

    dpo_params: Any
    ref_params: Any
    outcome: Any
    model_config: ModelConfig = flax.struct.field(pytree_node=False)
    ref_model_config: ModelConfig = flax.struct.field(pytree_node=False)
    dpo_coef: float = flax.struct.field(pytree_node=False, default=0.1)
    outcome_coef: float = flax.struct.field(pytree_node=False, default=1.0)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        dpo = teacher_forced_logprobs(self.model_config, self.dpo_params, *rows)
        ref = teacher_forced_logprobs(self.ref_model_config, self.ref_params, *rows)
        return shaping.implicit_token_rewards(
            dpo,
            ref,
            self.outcome(*rows),
            response_mask,
            dpo_coef=self.dpo_coef,
            outcome_coef=self.outcome_coef,
        )


@flax.struct.dataclass
class PotentialShaped:
    """r′_t = r_t + γΦ(s_{t+1}) − Φ(s_t), Φ(terminal) = 0 (``shaping.potential_shaping``):
    ``source``'s rewards (a sequence reward is placed at the last token) shaped by
    ``potential``, a source of ``[B, N]`` values Φ(s_t) (e.g. ``RewardPotential``, or a user's
    jittable function). Σ_t γ^t r′_t = Σ_t γ^t r_t − Φ(s_0)."""

    source: Any
    potential: Any
    gamma: float = flax.struct.field(pytree_node=False, default=1.0)

    def __call__(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Array:
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        rewards = token_rewards(self.source(*rows), response_mask)
        return shaping.potential_shaping(rewards, self.potential(*rows), response_mask, self.gamma)


def load_sequence_reward_model(
    path: str, *, mesh: jax.sharding.Mesh, vocab_size: int, overrides: dict | None = None
) -> tuple[ModelConfig, Any]:
    """``(ModelConfig, params)`` of a one-head sequence reward-model export (what
    ``PrefixDifferences``, ``RewardPotential`` and ``AttentionCredit`` read).

    Raises:
      ValueError: a causal LM, a process reward model, an ensemble of heads or another
        vocabulary (the message names the path).
    """
    if is_process_reward_model(path):
        raise ValueError(f"{path!r} is a process reward model; dense rewards need a sequence RM")
    cfg, params = load_checkpoint(
        path, mesh=mesh, vocab_size=vocab_size, scorer=True, overrides=overrides
    )
    if params["score"]["kernel"].shape[-1] != 1:
        raise ValueError(f"{path!r} has several score heads; dense rewards need one")
    return cfg, params
