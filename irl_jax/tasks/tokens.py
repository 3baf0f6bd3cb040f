"""Reading token ids inside a jitted gold reward (and their Python twins on id lists): the
content a reward sees, digit values, numbers as runs of digits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.tasks import vocab

NUMBER_CLAMP = 10**6  # parsed numbers saturate here, identically in the ids and text paths

_DIGIT_VALUE = np.full(vocab.VOCAB_SIZE, -1, np.int32)
_DIGIT_VALUE[list(vocab.DIGIT_IDS)] = np.arange(10)


def in_vocab(ids: jax.Array) -> jax.Array:
    """Ids outside the task vocabulary (a model whose vocab is padded larger) read as ``<unk>``."""
    return jnp.where((ids >= 0) & (ids < vocab.VOCAB_SIZE), ids, vocab.UNK_ID)


def content_mask(ids: jax.Array, mask: jax.Array, *, stop_at_eos: bool) -> jax.Array:
    """``[B, T]`` bool: the tokens a gold reward reads (mask > 0, not pad/bos/eos/style token,
    and, if ``stop_at_eos``, before the first eos). Mirrors ``vocab.content_ids``."""
    real = mask > 0
    special = (ids == vocab.PAD_ID) | (ids == vocab.BOS_ID) | (ids == vocab.EOS_ID)
    keep = real & ~special & (ids != vocab.STYLE_ID)
    if stop_at_eos:
        eos_seen = jnp.cumsum((real & (ids == vocab.EOS_ID)).astype(jnp.int32), axis=-1)
        keep &= eos_seen == 0
    return keep


def digit_values(ids: jax.Array) -> jax.Array:
    """``[B, T]`` int32: the digit a token stands for, −1 for non-digits."""
    return jnp.asarray(_DIGIT_VALUE)[jnp.clip(ids, 0, vocab.VOCAB_SIZE - 1)]


def parse_numbers(
    ids: jax.Array, valid: jax.Array, max_numbers: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Reads the maximal runs of digit tokens among the ``valid`` tokens as numbers.

    Invalid tokens are skipped (a run continues across them). Values saturate at
    ``NUMBER_CLAMP``. Mirrors ``parse_numbers_py``.

    Args:
      ids: ``[B, T]`` token ids.
      valid: ``[B, T]`` bool, the tokens to read.
      max_numbers: M, how many numbers to keep (later ones are counted but not stored).

    Returns:
      ``values [B, M]`` int32 (0 where absent); ``follow [B, M]`` int32, the token that ends
      each number (−1 if the number ends the sequence or is absent); ``count [B]`` int32, the
      number of numbers; ``last [B]`` int32, the last number (−1 if there is none).
    """
    batch = ids.shape[0]

    def close(carry, now, follow_token):
        acc, in_number, count, values, follow, last = carry
        slot = jax.nn.one_hot(count, max_numbers, dtype=jnp.bool_) & now[:, None]
        values = jnp.where(slot, acc[:, None], values)
        follow = jnp.where(slot, follow_token[:, None], follow)
        last = jnp.where(now, acc, last)
        return acc, in_number & ~now, count + now.astype(jnp.int32), values, follow, last

    def step(carry, x):
        token, digit, ok = x
        is_digit = ok & (digit >= 0)
        carry = close(carry, ok & ~is_digit & carry[1], token)
        acc, in_number, *rest = carry
        grown = jnp.minimum(acc * 10 + digit, NUMBER_CLAMP)
        acc = jnp.where(is_digit, jnp.where(in_number, grown, digit), acc)
        return (acc, in_number | is_digit, *rest), None

    zeros = jnp.zeros((batch,), jnp.int32)
    init = (
        zeros,
        jnp.zeros((batch,), jnp.bool_),
        zeros,
        jnp.zeros((batch, max_numbers), jnp.int32),
        jnp.full((batch, max_numbers), -1, jnp.int32),
        jnp.full((batch,), -1, jnp.int32),
    )
    xs = (ids.T.astype(jnp.int32), digit_values(ids).T, valid.T)
    carry, _ = jax.lax.scan(step, init, xs)
    _, _, count, values, follow, last = close(carry, carry[1], jnp.full((batch,), -1, jnp.int32))
    return values, follow, count, last


def parse_numbers_py(ids: list[int], max_numbers: int) -> tuple[list[int], list[int], int, int]:
    """Python twin of ``parse_numbers`` on one already-filtered id list (``values`` and
    ``follow`` hold only the numbers present, at most ``max_numbers``)."""
    values, follow, count, last = [], [], 0, -1
    acc = None
    for token in [*ids, None]:
        digit = -1 if token is None else int(_DIGIT_VALUE[token])
        if digit >= 0:
            acc = digit if acc is None else min(acc * 10 + digit, NUMBER_CLAMP)
        elif acc is not None:
            if count < max_numbers:
                values.append(acc)
                follow.append(-1 if token is None else token)
            count, last, acc = count + 1, acc, None
    return values, follow, count, last
