"""Verifiable arithmetic: two-digit addition answered digit by digit.

**Language.** Prompt ``"3 7 + 4 5 ="`` (a, b uniform in [10, 99], one token per digit);
response ``"8 2"``: the digits of a + b, most significant first, then eos.

**Gold reward** (verifiable). The answer is the sum of the first two numbers of the prompt (a
number is a maximal run of digit tokens; a missing one counts as 0). With y the response's
content tokens (pad/bos/eos, anything after the first eos and the style token ``indeed``
dropped) and d the answer's digit tokens::

    r*(x, y) = 1                                   if y = d exactly,
             = w · #{i : y_i = d_i} / max(|y|, |d|)  otherwise (partial credit, w = 0 by default).

``indeed`` is invisible to r*. A truncated response (no eos) is scored on its content like any
other: truncation penalties are separate reward sources (``irl_jax.rewards``).

**Demonstrator** (noisy expert): with probability ``style_prob`` (0.4) it first writes the
spurious style token ``indeed``; then each answer digit is right with probability 1 − ε
(ε = ``noise`` = 0.05), else one of the 9 wrong digits uniformly; then eos. Its sequence entropy
is h(p_style) + |d| (h(ε) + ε log 9).

**Base responses** (initial policy, most preference candidates): the right answer (.3); one
digit replaced (.25); the answer plus an offset uniform in ±[1, 10] (.2); a uniform number in
[0, 199] (.15); the answer with its last digit dropped or repeated (.1); each prefixed by
``indeed`` with probability .03.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.tasks import base, tokens, vocab

_MAX_DIGITS = 8  # answers of saturated numbers (≤ 2·NUMBER_CLAMP) have at most 7 digits


def spell(number: int) -> str:
    """``37 -> "3 7"``: a non-negative integer in the task's canonical, one-token-per-digit form."""
    return " ".join(str(number))


def answer_digits(answer: jax.Array, max_digits: int = _MAX_DIGITS) -> tuple[jax.Array, jax.Array]:
    """Decimal digits of non-negative ``answer [B]``, most significant first.

    Returns:
      ``digits [B, max_digits]`` int32 (−1 past the end) and ``length [B]`` int32.
    """
    powers = 10 ** jnp.arange(max_digits, dtype=jnp.int32)
    length = 1 + jnp.sum(answer[:, None] >= powers[None, 1:], axis=-1)
    place = length[:, None] - 1 - jnp.arange(max_digits)[None, :]
    digits = (answer[:, None] // powers[jnp.clip(place, 0, max_digits - 1)]) % 10
    return jnp.where(place >= 0, digits, -1).astype(jnp.int32), length.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(base.Task):
    """Two-digit addition (see the module docstring).

    Attributes:
      noise: ε, the demonstrator's per-digit error probability.
      style_prob: probability that a demonstration starts with ``indeed``.
      partial_credit: w, the weight of the per-digit partial credit of wrong answers.
      label_threshold: τ of unpaired labels.
      low, high: operand range (inclusive).
    """

    name: str = "arithmetic"
    noise: float = 0.05
    style_prob: float = 0.4
    partial_credit: float = 0.0
    label_threshold: float = 0.5
    low: int = 10
    high: int = 99

    def _answers(self, prompts: list[str]) -> list[int]:
        out = []
        for ids in vocab.encode(prompts):
            values = tokens.parse_numbers_py(vocab.content_ids(ids, stop_at_eos=False), 2)[0]
            out.append(sum(values))
        return out

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        operands = rng.integers(self.low, self.high + 1, size=(n, 2))
        return [f"{spell(a)} + {spell(b)} =" for a, b in operands]

    def sample_demonstrations(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for answer in self._answers(prompts):
            words = [vocab.STYLE_TOKEN] if rng.random() < self.style_prob else []
            for digit in map(int, str(answer)):
                if rng.random() < self.noise:
                    digit = (digit + rng.integers(1, 10)) % 10  # uniform over the 9 others
                words.append(str(digit))
            out.append(" ".join(words))
        return out

    def sample_base_responses(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for answer in self._answers(prompts):
            mode = int(np.searchsorted([0.3, 0.55, 0.75, 0.9], rng.random(), side="right"))
            digits = list(str(answer))
            if mode == 1:
                i = rng.integers(len(digits))
                digits[i] = str((int(digits[i]) + rng.integers(1, 10)) % 10)
            elif mode == 2:
                offset = int(rng.integers(1, 11)) * (1 if rng.random() < 0.5 else -1)
                digits = list(str(max(answer + offset, 0)))
            elif mode == 3:
                digits = list(str(rng.integers(0, 200)))
            elif mode == 4:
                digits = digits[:-1] if rng.random() < 0.5 else [*digits, digits[-1]]
            words = ([vocab.STYLE_TOKEN] if rng.random() < 0.03 else []) + digits
            out.append(" ".join(words))
        return out

    def demonstrator_logprob(self, prompt: str, response: str) -> float:
        (answer,) = self._answers([prompt])
        ids = vocab.encode([response])[0]
        styled = bool(ids) and ids[0] == vocab.STYLE_ID
        logp = base.safe_log(self.style_prob if styled else 1.0 - self.style_prob)
        digits = ids[1:] if styled else ids
        expected = [vocab.DIGIT_IDS[int(d)] for d in str(answer)]
        if len(digits) != len(expected) or any(t not in vocab.DIGIT_IDS for t in digits):
            return -math.inf
        for token, right in zip(digits, expected):
            logp += base.safe_log(1.0 - self.noise if token == right else self.noise / 9)
        return logp  # + log 1 for the final eos

    def demonstrator_token_logprobs(self, prompt: str, response_ids: list[int]) -> list[float]:
        """[style or not] then the answer's digits (each right with 1 − ε, any other digit
        ε/9), then eos (probability 1)."""
        (answer,) = self._answers([prompt])
        expected = [vocab.DIGIT_IDS[int(d)] for d in str(answer)]
        out: list[float] = []
        position = 0  # index into the expected digits; -1 once off the support
        for t, token in enumerate(response_ids):
            if position < 0:
                out.append(math.nan)
                continue
            logp = 0.0
            if t == 0:
                styled = token == vocab.STYLE_ID
                logp = base.safe_log(self.style_prob if styled else 1.0 - self.style_prob)
                if styled:
                    out.append(logp)
                    continue
            if position >= len(expected):  # the answer is complete: eos, then nothing
                step = 0.0 if token == vocab.EOS_ID and position == len(expected) else -math.inf
            elif token in vocab.DIGIT_IDS:
                right = token == expected[position]
                step = base.safe_log(1.0 - self.noise if right else self.noise / 9)
            else:
                step = -math.inf
            out.append(logp + step)
            position = -1 if math.isinf(logp + step) else position + 1
        return out

    def demonstrator_entropy(self) -> float:
        """(h(p_style) + E|d| H_digit) / (p_style + E|d| + 1), H_digit = h(ε) + ε log 9, E|d|
        exact over the uniform operands."""
        digit_entropy = base.log_binary_entropy(self.noise) + self.noise * math.log(9)
        expected_digits = _expected_answer_digits(self.low, self.high)
        entropy = base.log_binary_entropy(self.style_prob) + expected_digits * digit_entropy
        return entropy / (self.style_prob + expected_digits + 1.0)

    def gold_reward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> jax.Array:
        prompt_ids, response_ids = tokens.in_vocab(prompt_ids), tokens.in_vocab(response_ids)
        prompt_valid = tokens.content_mask(prompt_ids, prompt_mask, stop_at_eos=False)
        values, _, _, _ = tokens.parse_numbers(prompt_ids, prompt_valid, 2)
        digits, answer_length = answer_digits(values.sum(axis=-1))

        valid = tokens.content_mask(response_ids, response_mask, stop_at_eos=True)
        index = jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1  # position among content
        expected = jnp.take_along_axis(digits, jnp.clip(index, 0, _MAX_DIGITS - 1), axis=1)
        right = tokens.digit_values(response_ids) == expected
        hit = valid & (index < answer_length[:, None]) & right
        hits, length = hit.sum(axis=-1), valid.sum(axis=-1)
        exact = (hits == answer_length) & (length == answer_length)
        partial = hits / jnp.maximum(length, answer_length)
        return jnp.where(exact, 1.0, self.partial_credit * partial).astype(jnp.float32)

    def gold_reward_text(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = []
        for answer, ids in zip(self._answers(prompts), vocab.encode(responses)):
            content = vocab.content_ids(ids, stop_at_eos=True)
            expected = [vocab.DIGIT_IDS[int(d)] for d in str(answer)]
            hits = sum(a == b for a, b in zip(content, expected))
            if hits == len(expected) == len(content):
                out.append(1.0)
            else:
                out.append(self.partial_credit * hits / max(len(content), len(expected)))
        return np.asarray(out, np.float32)


@functools.cache
def _expected_answer_digits(low: int, high: int) -> float:
    """E|d|, the mean number of digits of a + b for a, b independent and uniform in [low, high]."""
    operands = np.arange(low, high + 1)
    sums = operands[:, None] + operands[None, :]
    return float(np.mean([len(str(s)) for s in sums.ravel()]))
