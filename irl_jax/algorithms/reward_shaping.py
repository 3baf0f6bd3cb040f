"""``ppo.reward_shaping``: how the configured sequence reward becomes per-token credit (SURVEY §7;
the sources are ``irl_jax.dense_rewards``, their math ``irl_jax.objectives.shaping``).

    kind     r_t (PPO adds −β·k1_t)                                    sum over a response
    sparse   R·1[t = T]                                                 R
    prefix   RM(x, y_≤t) − RM(x, y_<t)                                  RM(x, y) − RM(x)
    abc      w·α_t·R + (1 − w)·R·1[t = T] (α: RM's last-layer attention) R
    rto      β₁·(log π_dpo − log π_ref)(y_t | s_t) + β₃·R·1[t = T]      β₁·log π_dpo/π_ref + β₃·R

R is ``config.reward``'s score; ``prefix`` and ``abc`` read the one-head sequence reward model of
``reward.model``. A ``potential`` (a user's jittable Φ) then shapes any of them:
r′_t = r_t + γΦ(s_{t+1}) − Φ(s_t) with PPO's γ and Φ(terminal) = 0.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from irl_jax import dense_rewards
from irl_jax import rewards as rewards_lib
from irl_jax.config import ConfigError, check_fields, require, reward_model_paths
from irl_jax.models import source as model_source

KINDS = ("sparse", "prefix", "abc", "rto")


def default_config() -> ml_collections.ConfigDict:
    """``config.ppo.reward_shaping``."""
    return ml_collections.ConfigDict(
        {
            "kind": "sparse",  # sparse | prefix | abc | rto (see irl_jax.algorithms.reward_shaping)
            "abc_weight": 0.5,  # abc's w
            "dpo_model": "",  # rto: π_dpo, a DPO export
            "dpo_reference": "",  # rto: its π_ref ("": the policy's initial weights)
            "dpo_coef": 0.1,  # rto's β₁
            "outcome_coef": 1.0,  # rto's β₃ (on the reward of config.reward)
            # "module:function" (or "file.py:function"): a jittable Φ(prompt_ids, prompt_mask,
            # response_ids, response_mask) -> [B, N] potentials Φ(s_t) shaping the rewards above
            "potential": "",
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """``ppo.reward_shaping``: a known kind with the models it reads, a loadable potential;
    raises ``ConfigError`` naming the field."""
    shaping = config.ppo.reward_shaping
    where = "ppo.reward_shaping"
    check_fields(
        shaping,
        where,
        choices={"kind": KINDS},
        at_least=dict.fromkeys(("dpo_coef", "outcome_coef"), 0),
    )
    require(
        0 <= shaping.abc_weight <= 1,
        f"{where}.abc_weight",
        f"must be in [0, 1], got {shaping.abc_weight}",
    )
    one_model = (
        config.reward.source == "model" and len(reward_model_paths(config.reward.model)) == 1
    )
    require(
        shaping.kind not in ("prefix", "abc") or one_model,
        f"{where}.kind",
        f"{shaping.kind!r} reads one sequence reward model: set reward.source='model' and "
        "reward.model to a reward-model export",
    )
    require(
        shaping.kind != "rto" or bool(shaping.dpo_model),
        f"{where}.dpo_model",
        "kind='rto' needs a DPO export (e.g. runs/dpo/export)",
    )
    require(
        shaping.kind != "rto"
        or bool(shaping.dpo_reference or model_source.weights_dir(config.model, config.init_from)),
        f"{where}.dpo_reference",
        "kind='rto' needs the DPO run's reference: set it, or start the policy from init_from",
    )
    if shaping.potential:
        from irl_jax import user_rewards

        try:
            potential = user_rewards.load_function(shaping.potential)
        except user_rewards.UserRewardError as e:
            raise ConfigError(f"config.{where}.potential: {e}") from None
        require(
            user_rewards.is_jittable(potential),
            f"{where}.potential",
            "must take (prompt_ids, prompt_mask, response_ids, response_mask)",
        )


def validate_paths(config: ml_collections.ConfigDict) -> None:
    """The DPO export and its reference, when set, are Hugging Face directories."""
    for field in ("dpo_model", "dpo_reference"):
        path = config.ppo.reward_shaping[field]
        require(
            not path or model_source.is_hf_dir(path),
            f"ppo.reward_shaping.{field}",
            f"{path!r} is not a Hugging Face directory with a config.json",
        )


def source(setup: Any, reward: tuple[str, Any]) -> Any:
    """The source an algorithm trains on: ``config.reward``'s ``(name, source)`` (from
    ``setup.reward_source``) turned into per-token rewards by ``ppo.reward_shaping``, then
    shaped by its potential; ``sparse`` without a potential is the source itself."""
    config, shaping = setup.config, setup.config.ppo.reward_shaping
    out = reward[1]
    vocab = dict(mesh=setup.mesh, vocab_size=setup.model_config.vocab_size)
    if shaping.kind in ("prefix", "abc"):
        cfg, params = dense_rewards.load_sequence_reward_model(
            config.reward.model, overrides=setup.overrides, **vocab
        )
        if shaping.kind == "prefix":
            out = dense_rewards.PrefixDifferences(params, cfg)
        else:
            out = dense_rewards.AttentionCredit(params, cfg, shaping.abc_weight)
    elif shaping.kind == "rto":
        load = lambda path: rewards_lib.load_checkpoint(
            path, scorer=False, overrides=setup.overrides, **vocab
        )
        dpo_cfg, dpo_params = load(shaping.dpo_model)
        ref_cfg, ref_params = load(shaping.dpo_reference or setup.weights)
        out = dense_rewards.ImplicitTokenReward(
            dpo_params,
            ref_params,
            rewards_lib.as_pytree(out),
            dpo_cfg,
            ref_cfg,
            dpo_coef=shaping.dpo_coef,
            outcome_coef=shaping.outcome_coef,
        )
    if shaping.potential:
        from irl_jax import user_rewards

        potential = rewards_lib.as_pytree(user_rewards.load_function(shaping.potential))
        out = dense_rewards.PotentialShaped(rewards_lib.as_pytree(out), potential, config.ppo.gamma)
    return out
