"""The DPO family's implicit reward β log π(y|x)/π_ref(y|x) on preference pairs: sequence
log-probs of both responses in one forward, reference log-probs (precomputed or from frozen
params), the per-pair losses of ``config.<section>.loss`` and the held-out pair evaluation.
Shared by ``direct`` and ``spin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irl_jax import sharding as sharding_lib
from irl_jax.evaluation.batches import map_rows
from irl_jax.models import ModelConfig, Transformer, lora
from irl_jax.objectives import direct as objectives
from irl_jax.objectives.logprobs import next_token_logprobs, sequence_logprobs

Array = jax.Array
PAIRWISE_LOSSES = ("dpo", "robust_dpo", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
PAIR = ("chosen_", "rejected_")  # column prefixes of a preference batch


def uses_reference(loss: str) -> bool:
    return loss not in REFERENCE_FREE


def pair_logps(
    model: Transformer,
    params: Any,
    batch: dict[str, Array],
    prefixes: Sequence[str] = PAIR,
    rng: Array | None = None,
) -> tuple[Array, ...]:
    """log π(y | x) ``[B]`` of each sequence ``<prefix>input_ids`` in ONE forward.

    The K sequences of a row are interleaved into ``[B·K, T]`` rows (row-major), so a device's
    rows stay on it; the response is the ``<prefix>loss_mask`` tokens. ``rng`` drives LoRA
    dropout in a training forward (``lora.dropout_rngs``).
    """
    stacked = {
        name: jnp.stack([batch[p + name] for p in prefixes], axis=1)
        for name in ("input_ids", "attention_mask", "loss_mask")
    }
    rows, length = stacked["input_ids"].shape[0] * len(prefixes), stacked["input_ids"].shape[-1]
    flat = {name: x.reshape(rows, length) for name, x in stacked.items()}
    rngs = lora.dropout_rngs(model, rng)
    logits = model.apply({"params": params}, flat["input_ids"], flat["attention_mask"], rngs=rngs)
    logps = sequence_logprobs(
        next_token_logprobs(logits.logits, flat["input_ids"]), flat["loss_mask"]
    )
    logps = logps.reshape(-1, len(prefixes))
    return tuple(logps[:, k] for k in range(len(prefixes)))


def pair_tokens(batch: dict[str, Array]) -> tuple[Array, Array]:
    """Response lengths |y_w|, |y_l| ``[B]``."""
    return tuple(batch[p + "loss_mask"].sum(-1).astype(jnp.float32) for p in PAIR)


def reference_logps(model, batch, reference, prefixes: Sequence[str]) -> tuple[Array, ...]:
    """Precomputed ``ref_<prefix>logps`` columns (``reference`` is ``None``), or a forward of
    the frozen reference params."""
    if reference is None:
        return tuple(batch[f"ref_{p}logps"] for p in prefixes)
    return jax.lax.stop_gradient(pair_logps(model, reference, batch, prefixes))


def pairwise_loss(
    section: ml_collections.ConfigDict,
    logps: tuple[Array, Array],
    ref_logps: tuple[Array, Array] | None,
    tokens: tuple[Array, Array],
) -> tuple[Array, dict[str, Array]]:
    """The per-pair losses ``[B]`` and metrics of ``section.loss`` (see ``objectives.direct``)."""
    loss, beta = section.loss, section.beta
    if loss == "simpo":
        return objectives.simpo(*logps, *tokens, beta=beta, gamma=section.simpo_gamma)
    if loss == "orpo":
        return objectives.orpo(*logps, *tokens, lam=section.orpo_lambda)
    args = (*logps, *ref_logps)
    if loss == "dpo":
        return objectives.dpo(*args, beta=beta, label_smoothing=section.label_smoothing)
    if loss == "robust_dpo":
        return objectives.robust_dpo(*args, beta=beta, label_smoothing=section.label_smoothing)
    if loss == "ipo":
        averaged = dict(zip(("chosen_tokens", "rejected_tokens"), tokens))
        return objectives.ipo(*args, beta=beta, **(averaged if section.ipo_average else {}))
    if loss == "hinge":
        return objectives.hinge(*args, beta=beta)
    raise ValueError(f"{loss!r} is not a pairwise loss ({PAIRWISE_LOSSES})")


def add_reference_logps(
    cfg: ModelConfig,
    ref_params: Any,
    arrays: dict[str, np.ndarray],
    prefixes: Sequence[str],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """``arrays`` plus ``ref_<prefix>logps`` ``[N]`` float32 columns: one pass of the reference."""
    model = Transformer(cfg)

    def logps(params, batch):
        return {
            f"ref_{p}logps": x for p, x in zip(prefixes, pair_logps(model, params, batch, prefixes))
        }

    jitted = jax.jit(logps, out_shardings=sharding_lib.replicated(mesh))
    return {**arrays, **map_rows(jitted, ref_params, arrays, batch_size, mesh)}


def make_eval_fn(cfg: ModelConfig, section: ml_collections.ConfigDict, with_gold: bool):
    """``(params, batch, reference) -> per-pair values`` on held-out preference pairs (the
    reference log-probs from ``reference`` params, or precomputed columns when ``None``):
    ``valid`` (1 for real rows), ``loss`` (pairwise losses), ``accuracy`` (implicit-reward
    margin > 0), the rewards and margin, and with ``with_gold`` (``margin`` column = gold
    difference) ``gold_decided`` (non-ties) and ``gold_agrees`` (margin sign = gold sign)."""
    model = Transformer(cfg)

    def eval_fn(params, batch, reference):
        logps = pair_logps(model, params, batch)
        ref = (
            reference_logps(model, batch, reference, PAIR) if uses_reference(section.loss) else None
        )
        out = {"valid": (batch["chosen_attention_mask"].sum(-1) > 0).astype(jnp.float32)}
        if section.loss == "kto":  # KTO's implicit reward β log π/π_ref is DPO's
            metrics = objectives.dpo(*logps, *ref, beta=section.beta)[1]
        else:
            out["loss"], metrics = pairwise_loss(section, logps, ref, pair_tokens(batch))
        margin = metrics.get("reward_margin", metrics.get("log_odds_ratio"))
        for name in ("accuracy", "chosen_reward", "rejected_reward"):
            if name in metrics:
                out[name] = metrics[name]
        out["reward_margin"] = margin
        if with_gold:
            out["gold_decided"] = (batch["margin"] != 0).astype(jnp.float32)
            out["gold_agrees"] = ((margin > 0) == (batch["margin"] > 0)).astype(jnp.float32)
        return out

    return eval_fn


def pair_metrics(rows: dict[str, np.ndarray]) -> dict[str, float]:
    """``eval/<name>`` means over the valid pairs of ``make_eval_fn``'s per-pair values;
    ``eval/gold_accuracy`` over the pairs whose gold rewards differ."""
    valid = rows["valid"]
    metrics = {
        f"eval/{name}": float(np.sum(value * valid) / max(valid.sum(), 1.0))
        for name, value in rows.items()
        if name not in ("valid", "gold_decided", "gold_agrees")
    }
    if "gold_decided" in rows:
        decided = rows["gold_decided"] * valid
        agrees = np.sum(rows["gold_agrees"] * decided)
        metrics["eval/gold_accuracy"] = float(agrees / max(decided.sum(), 1.0))
    return metrics
