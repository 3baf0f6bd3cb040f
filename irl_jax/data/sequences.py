"""Operations on tokenized rows in the training layout (``input_ids``, ``attention_mask``,
``loss_mask`` ``[B, T]``, prompt then response, right-padded): find the prompt, take it out
left-padded for a sampler, splice a new response after it, pair prompts with other rows'
responses. Jittable where noted (they also run on numpy arrays).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def prompt_lengths(loss_mask: Array) -> Array:
    """``[B, T] -> [B]``: tokens before the first response (``loss_mask``) token. Jittable."""
    return jnp.argmax(loss_mask > 0, axis=1).astype(jnp.int32)


def splice(
    input_ids: Array,
    prompt_length: Array,
    response_ids: Array,
    response_mask: Array,
    response_start: Array | int = 0,
    response_loss_mask: Array | None = None,
    *,
    pad_id: int,
) -> dict[str, Array]:
    """Each row's prompt ``input_ids[i, :p_i]`` followed by the response tokens
    ``response_ids[i, s_i:]`` (where ``response_mask``), right-padded and cut at T. Jittable.

    The response side is any ``[B, R]`` layout: a sampler's output (s = 0), or other rows of the
    training layout (s = their prompt lengths).

    Returns:
      ``input_ids``, ``attention_mask`` and ``loss_mask`` ``[B, T]`` int32; ``loss_mask`` is
      ``response_loss_mask`` (default ``response_mask``) on the response tokens.
    """
    length, width = input_ids.shape[1], response_ids.shape[1]
    position = jnp.arange(length)[None, :]
    in_prompt = position < prompt_length[:, None]
    source = position - prompt_length[:, None] + jnp.asarray(response_start).reshape(-1, 1)
    in_response = ~in_prompt & (source < width)
    source = jnp.clip(source, 0, width - 1)
    take = lambda x: jnp.where(in_response, jnp.take_along_axis(x, source, axis=1), 0)
    attention = jnp.where(in_prompt, 1, take(response_mask)).astype(jnp.int32)
    ids = jnp.where(in_prompt, input_ids, take(response_ids))
    targets = response_mask if response_loss_mask is None else response_loss_mask
    return {
        "input_ids": jnp.where(attention > 0, ids, pad_id).astype(jnp.int32),
        "attention_mask": attention,
        "loss_mask": take(targets).astype(jnp.int32),
    }


def left_padded_prompts(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prompts of training-layout rows (the tokens before the first ``loss_mask`` token),
    left-padded to the longest: ``prompt_ids``/``prompt_mask`` ``[N, P]``, as the sampler wants."""
    lengths = np.asarray(prompt_lengths(arrays["loss_mask"]))
    width = max(int(lengths.max()), 1)
    source = np.arange(width)[None, :] - (width - lengths)[:, None]
    mask = (source >= 0).astype(np.int32)
    ids = np.take_along_axis(arrays["input_ids"], np.maximum(source, 0), axis=1) * mask
    return {"prompt_ids": ids.astype(np.int32), "prompt_mask": mask}


def cyclic_partners(rows: int, seed: int) -> np.ndarray:
    """π(i) for mismatched pairs: one random cycle through all rows, so π(i) ≠ i."""
    if rows < 2:
        raise ValueError(f"mismatched pairs need at least 2 rows, got {rows}")
    order = np.random.default_rng([seed, 17]).permutation(rows)
    partner = np.empty(rows, np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def mismatched_pairs(
    arrays: dict[str, np.ndarray], partner: np.ndarray, pad_id: int, prefix: str = "kl_"
) -> dict[str, np.ndarray]:
    """Mismatched pairs (x_i, y_π(i)): row i's prompt with row ``partner[i]``'s response, as
    ``<prefix>input_ids`` / ``attention_mask`` / ``loss_mask`` (cut at the same length T)."""
    starts = prompt_lengths(arrays["loss_mask"])
    joined = splice(
        arrays["input_ids"],
        starts,
        arrays["input_ids"][partner],
        arrays["attention_mask"][partner],
        starts[partner],
        arrays["loss_mask"][partner],
        pad_id=pad_id,
    )
    return {f"{prefix}{name}": np.asarray(value) for name, value in joined.items()}
