"""The adversarial discriminator (``irl_jax.algorithms.adversarial``): its model (a decoder +
score head), its logit h on training rows (sequence-level, or token-level AIRL's
Σ_t f_t − log π), its loss with the embedding-space gradient penalty, and the replay buffer of
past policy samples it also trains on.

Training rows are ``irl_jax.data``'s layout: ``input_ids``, ``attention_mask``, ``loss_mask`` on
the response (``rollout.as_sequences`` for samples), plus ``logprobs`` (token-level) and
``weight`` (policy rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from irl_jax.algorithms import setup as setup_lib
from irl_jax.models import ModelConfig, lora
from irl_jax.models import source as model_source
from irl_jax.models.heads import RewardModel, TokenRewardModel
from irl_jax.objectives import adversarial as adv
from irl_jax.objectives.logprobs import masked_mean
from irl_jax.train import Loss, ModelState, create_model

Array = jax.Array

# ----------------------------------------------------------------------------- model and loss


def discriminator_module(config: ModelConfig, token_level: bool) -> nn.Module:
    """``RewardModel`` (a score at the last token) or, for token-level AIRL, ``TokenRewardModel``
    (a score f_t per token); both have the param tree ``{"transformer", "score"}``."""
    return TokenRewardModel(config) if token_level else RewardModel(config)


def create_discriminator(
    setup: setup_lib.Setup, optimizer
) -> tuple[nn.Module, tuple[ModelState, ModelState]]:
    """The discriminator module and its ``ModelState`` (and shardings): the backbone of
    ``discriminator.path`` or of the policy's weights (``init="policy"``) with a fresh score
    head, or a random init (``"fresh"``, or a policy without weights)."""
    s = setup.config.adversarial
    source = s.discriminator.path or (setup.weights if s.discriminator.init == "policy" else "")
    cfg = setup.model_config
    if source and source != setup.weights:
        cfg = model_source.resolve_config(
            source, tokenizer=setup.tokenizer, overrides=setup.overrides
        )
    module = discriminator_module(cfg, s.token_level)
    init_fn = model_source.init_fn(module, setup.config.seed + 2)
    params = None
    if source:
        loaded = model_source.load_params(source, setup.mesh, setup.overrides)
        head = model_source.fresh_head(init_fn, "score", setup.mesh)
        params = {"transformer": model_source.backbone(loaded), "score": head}
    return module, create_model(init_fn, optimizer, setup.mesh, params=params)


def make_logits(module: nn.Module, token_level: bool):
    """``logits(params, rows) -> h [B]`` of training rows (``input_ids``, ``attention_mask``,
    ``loss_mask`` on the response and, token-level, the behaviour ``logprobs`` aligned with
    ``input_ids``); ``rng`` drives LoRA dropout in a training forward (``lora.dropout_rngs``)."""

    def logits(params, rows, rng=None):
        scores = module.apply(
            {"params": params},
            rows["input_ids"],
            rows["attention_mask"],
            rngs=lora.dropout_rngs(module, rng),
        )
        if not token_level:
            return scores
        return adv.airl_sequence_logits(scores, rows["logprobs"], rows["loss_mask"])

    return logits


def embedding_gradients(logits: Callable, params: Any, rows: dict[str, Array], hidden: int):
    """∂h_b/∂e_bt ``[B, L, D]``: the gradient of each row's logit with respect to its input
    token embeddings (a zero perturbation added to the decoder's ``embed`` output; rows are
    independent, so the gradient of Σ_b h_b gives every row's own)."""

    def total(delta):
        def add_delta(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            is_embed = isinstance(context.module, (nn.Embed, lora.LoraEmbed))
            is_embed = is_embed and context.module.name == "embed"
            if is_embed and context.method_name == "__call__":
                return out + delta.astype(out.dtype)
            return out

        with nn.intercept_methods(add_delta):
            return logits(params, rows).sum()

    return jax.grad(total)(jnp.zeros((*rows["input_ids"].shape, hidden), jnp.float32))


def make_discriminator_loss(module: nn.Module, config: ml_collections.ConfigDict, hidden: int):
    """``loss_fn(params, batch, rng) -> (Loss, metrics)`` on ``batch = {"demos": rows,
    "policy": rows + "weight"}``: ``discriminator_loss`` plus the R1 penalty. Metrics:
    ``disc_accuracy_demo``, ``disc_accuracy_policy`` (train accuracy, before the update),
    ``h_demo_mean``, ``h_policy_mean`` and ``disc_gradient_penalty`` with a penalty."""
    d = config.adversarial.discriminator
    logits = make_logits(module, config.adversarial.token_level)

    def loss_fn(params, batch, rng):
        demos, policy = batch["demos"], batch["policy"]
        demo_key, policy_key = jax.random.split(rng)
        h_demo, h_policy = logits(params, demos, demo_key), logits(params, policy, policy_key)
        weight = policy["weight"]
        loss = adv.discriminator_loss(
            h_demo, h_policy, label_smoothing=d.label_smoothing, policy_weights=weight
        )
        demo_accuracy, policy_accuracy = adv.discriminator_accuracy(
            h_demo, h_policy, policy_weights=weight
        )
        metrics = {
            "disc_accuracy_demo": demo_accuracy,
            "disc_accuracy_policy": policy_accuracy,
            "h_demo_mean": h_demo.mean(),
            "h_policy_mean": masked_mean(h_policy, weight),
        }
        if d.gradient_penalty:
            grads = embedding_gradients(logits, params, demos, hidden)
            penalty = adv.gradient_penalty(grads, demos["attention_mask"]).mean()
            metrics["disc_gradient_penalty"] = penalty
            loss = loss + 0.5 * d.gradient_penalty * penalty
        return Loss(loss, jnp.float32(1.0)), metrics

    return loss_fn


# ----------------------------------------------------------------------------- replay buffer


def replay_draw(replay: dict[str, Any], num: int, rng: Array) -> tuple[dict[str, Array], Array]:
    """``num`` rows drawn uniformly (with replacement) from the filled part of the buffer and
    their weights (all 0 while it is empty)."""
    size = replay["rows"]["input_ids"].shape[0]
    filled = jnp.minimum(replay["count"], size)
    index = jax.random.randint(rng, (num,), 0, jnp.maximum(filled, 1))
    rows = jax.tree.map(lambda x: x[index], replay["rows"])
    return rows, jnp.full((num,), filled > 0, jnp.float32)


def replay_push(replay: dict[str, Any], rows: dict[str, Array]) -> dict[str, Any]:
    """The buffer with ``rows`` written at slots count, count + 1, … (mod its size)."""
    size = replay["rows"]["input_ids"].shape[0]
    num = rows["input_ids"].shape[0]
    slots = (replay["count"] + jnp.arange(num)) % size
    stored = {k: v.at[slots].set(rows[k].astype(v.dtype)) for k, v in replay["rows"].items()}
    return {"rows": stored, "count": replay["count"] + num}
