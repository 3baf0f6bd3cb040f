"""Step-labelled reasoning: chains of additions and subtractions solved one step at a time.

**Language.** Prompt ``"1 7 + 5 - 3 ="``: a start value in [10, 30] then 2-4 operations
(6-12 in the long-horizon variant ``reasoning_long``, ``long_horizon()``, whose responses of
50-120 tokens make credit assignment matter), each
``+`` or ``-`` (uniform) with an operand in [1, 9]; a ``-`` that would take the running value
below 10 becomes ``+``, so every true intermediate value is ≥ 10. Response: one step per
operation, each ``"a op b = c"`` closed by the step token ``;``, then eos::

    1 7 + 5 = 2 2 ; 2 2 - 3 = 1 9 ;

**Step labels** (for process reward models). Step k (the tokens before its ``;``) is correct iff
it is well formed (``number op number = number``), k < number of operations, a equals the
previous stated value (the previous step's c, or the start value), op and b are the prompt's
k-th operation, and c = a op b: its arithmetic is right *given the previous stated value*, so
one wrong step does not make the following ones wrong; after a malformed step the next cannot
match (there is no stated value). ``step_labels`` gives per-token boundaries/labels on ids,
``step_labels_text`` the same on text, ``stepwise`` TRL's stepwise-supervision dataset.

**Gold reward** (outcome, on content tokens: pad/bos/eos, anything after the first eos and the
style token ``indeed`` dropped): r*(x, y) = 1 if the last number in y equals the prompt's true
result, else 0. A truncated response (no eos) is scored on its content like any other.

**Demonstrator**: starts with ``indeed`` with probability ``style_prob`` (0.4); each step
restates the previous stated value and the prompt's operation exactly, and its result is right
with probability 1 − ε (ε = ``noise`` = 0.1), else off by δ uniform in {−2, −1, 1, 2}. Its
sequence entropy is h(p_style) + K (h(ε) + ε log 4).

**Base responses**: the same format with the result off by δ ∈ ±{1, 2, 3} (probability .3), the
wrong operation (.1), a misstated previous value (.05) per step; the last step dropped (.15);
``indeed`` first (.03).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math

import datasets
import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.tasks import base, tokens, vocab
from irl_jax.tasks.arithmetic import spell

STEP_SEPARATOR = ";"  # pass as ``step_separator`` when tokenizing ``stepwise`` data
MAX_PROMPT_NUMBERS = 13  # a start value and up to 12 operations (``long_horizon``)
_PLUS, _MINUS, _EQUALS, _SEMICOLON = (vocab.VOCAB[s] for s in ("+", "-", "=", ";"))
_DELTAS = (-2, -1, 1, 2)


def _problem(prompt_ids: list[int]) -> tuple[int, list[tuple[int, int]]]:
    """(start, [(op token, operand)]) of a prompt, as the jnp path reads it."""
    content = vocab.content_ids(prompt_ids, stop_at_eos=False)
    values, follow, _, _ = tokens.parse_numbers_py(content, MAX_PROMPT_NUMBERS)
    start = values[0] if values else 0
    return start, list(zip(follow, values[1:]))


def _apply(value: int, op: int, operand: int) -> int:
    return value - operand if op == _MINUS else value + operand


def _format_step(a: int, op: int, b: int, c: int) -> str:
    return f"{spell(a)} {vocab.WORDS[op]} {spell(b)} = {spell(c)}"


@dataclasses.dataclass(frozen=True)
class ReasoningTask(base.Task):
    """Multi-step addition/subtraction with per-step labels (see the module docstring).

    Attributes:
      noise: ε, the demonstrator's per-step error probability.
      style_prob: probability that a demonstration starts with ``indeed``.
      label_threshold: τ of unpaired labels.
      min_ops, max_ops: number of operations (uniform, inclusive).
      low, high: start value range; ``floor``: true intermediate values stay ≥ floor.
    """

    name: str = "reasoning"
    noise: float = 0.1
    style_prob: float = 0.4
    label_threshold: float = 0.5
    min_ops: int = 2
    max_ops: int = 4
    low: int = 10
    high: int = 30
    floor: int = 10

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops <= MAX_PROMPT_NUMBERS - 1:
            raise ValueError(
                f"operations per problem: need 1 <= min_ops <= max_ops <= "
                f"{MAX_PROMPT_NUMBERS - 1}, got {self.min_ops}, {self.max_ops}"
            )

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        out = []
        for _ in range(n):
            value = int(rng.integers(self.low, self.high + 1))
            words = [spell(value)]
            for _ in range(rng.integers(self.min_ops, self.max_ops + 1)):
                minus, operand = rng.random() < 0.5, int(rng.integers(1, 10))
                minus = minus and value - operand >= self.floor
                value += -operand if minus else operand
                words.append(f"{'-' if minus else '+'} {operand}")
            out.append(" ".join([*words, "="]))
        return out

    def sample_demonstrations(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for prompt_ids in vocab.encode(prompts):
            stated, operations = _problem(prompt_ids)
            steps = [vocab.STYLE_TOKEN] if rng.random() < self.style_prob else []
            for op, b in operations:
                c = _apply(stated, op, b)
                if rng.random() < self.noise:
                    c += _DELTAS[rng.integers(len(_DELTAS))]
                steps.append(_format_step(stated, op, b, c) + " ;")
                stated = c
            out.append(" ".join(steps))
        return out

    def sample_base_responses(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for prompt_ids in vocab.encode(prompts):
            stated, operations = _problem(prompt_ids)
            if len(operations) > 1 and rng.random() < 0.15:
                operations = operations[:-1]
            steps = [vocab.STYLE_TOKEN] if rng.random() < 0.03 else []
            for op, b in operations:
                if rng.random() < 0.05:
                    stated = max(stated + int(rng.choice([-2, -1, 1, 2])), 0)
                if rng.random() < 0.1:
                    op = _PLUS if op == _MINUS else _MINUS
                c = _apply(stated, op, b)
                if rng.random() < 0.3:
                    c += int(rng.choice([-3, -2, -1, 1, 2, 3]))
                c = max(c, 0)
                steps.append(_format_step(stated, op, b, c) + " ;")
                stated = c
            out.append(" ".join(steps))
        return out

    def solve(self, prompt: str, wrong_step: int | None = None, delta: int = 0) -> str:
        """The correct step-by-step solution of ``prompt``, or, with ``wrong_step`` = k, one
        whose step k (0-based) states a result off by ``delta`` while every other step is right
        given the previous stated value (so the final answer is off by ``delta``): a planted
        error for token-level credit checks."""
        stated, operations = _problem(vocab.encode([prompt])[0])
        steps = []
        for k, (op, b) in enumerate(operations):
            c = _apply(stated, op, b) + (delta if k == wrong_step else 0)
            steps.append(_format_step(stated, op, b, c) + " ;")
            stated = c
        return " ".join(steps)

    def demonstrator_logprob(self, prompt: str, response: str) -> float:
        prompt_ids, response_ids = vocab.encode([prompt, response])
        stated, operations = _problem(prompt_ids)
        styled = bool(response_ids) and response_ids[0] == vocab.STYLE_ID
        logp = base.safe_log(self.style_prob if styled else 1.0 - self.style_prob)
        text = " ".join(vocab.WORDS[i] for i in response_ids[int(styled) :])
        steps = [s.strip() for s in text.split(STEP_SEPARATOR)]
        if len(steps) != len(operations) + 1 or steps[-1]:
            return -math.inf
        for (op, b), step in zip(operations, steps):
            right = _apply(stated, op, b)
            for c in (right, *(right + d for d in _DELTAS)):
                if step == _format_step(stated, op, b, c):
                    p = 1 - self.noise if c == right else self.noise / len(_DELTAS)
                    logp += base.safe_log(p)
                    break
            else:
                return -math.inf
            stated = c
        return logp  # + log 1 for the final eos

    def demonstrator_token_logprobs(self, prompt: str, response_ids: list[int]) -> list[float]:
        """[style or not], then per step the tokens of ``a op b =`` (forced) and of the stated
        result c, whose digits and closing ``;`` are drawn with the conditional mass of the
        candidates right + {0, ±1, ±2} still consistent with the digits so far; eos after the
        last step."""
        stated, operations = _problem(vocab.encode([prompt])[0])
        logps = _token_walk(self, stated, operations, iter(response_ids))
        out = list(logps)
        return out + [math.nan] * (len(response_ids) - len(out))

    def demonstrator_entropy(self) -> float:
        return _demonstrator_entropy(self)

    def gold_reward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> jax.Array:
        prompt_ids, response_ids = tokens.in_vocab(prompt_ids), tokens.in_vocab(response_ids)
        start, ops, operands, num_ops = _parse_prompt(prompt_ids, prompt_mask)
        signs = jnp.where(ops == _MINUS, -1, 1)
        used = jnp.arange(MAX_PROMPT_NUMBERS - 1)[None, :] < num_ops[:, None]
        answer = start + jnp.sum(jnp.where(used, signs * operands, 0), axis=-1)
        valid = tokens.content_mask(response_ids, response_mask, stop_at_eos=True)
        _, _, count, last = tokens.parse_numbers(response_ids, valid, 1)
        return ((count > 0) & (last == answer)).astype(jnp.float32)

    def gold_reward_text(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = []
        for prompt_ids, response_ids in zip(vocab.encode(prompts), vocab.encode(responses)):
            stated, operations = _problem(prompt_ids)
            for op, b in operations:
                stated = _apply(stated, op, b)
            content = vocab.content_ids(response_ids, stop_at_eos=True)
            _, _, count, last = tokens.parse_numbers_py(content, 1)
            out.append(float(count > 0 and last == stated))
        return np.asarray(out, np.float32)

    def step_labels(
        self,
        prompt_ids: jax.Array,
        prompt_mask: jax.Array,
        response_ids: jax.Array,
        response_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Per-token step boundaries and labels (jittable), for a PRM's BCE at step boundaries.

        Args:
          prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
          response_ids, response_mask: ``[B, N]`` right-padded responses.

        Returns:
          ``boundary [B, N]`` bool, True at each content ``;`` token (the end of a step), and
          ``labels [B, N]`` bool, the correctness of the step ending there (False elsewhere).
        """
        return _step_labels(prompt_ids, prompt_mask, response_ids, response_mask)

    def step_labels_text(self, prompts: list[str], responses: list[str]) -> list[list[bool]]:
        """Labels of every ``;``-closed step of each response (Python twin of ``step_labels``)."""
        return [
            _step_labels_py(p, r) for p, r in zip(vocab.encode(prompts), vocab.encode(responses))
        ]

    def stepwise(
        self,
        n: int,
        seed: int,
        expert_fraction: float = base.DEFAULT_EXPERT_FRACTION,
        split: str = "train",
    ) -> datasets.Dataset:
        """Stepwise supervision (TRL format) on candidate responses.

        Returns:
          Columns ``prompt``; ``completions``, the steps (text without the ``;``); ``labels``,
          one bool per step; ``completion``, the flat response (``" ".join(s + " ;")``).
        """
        prompts = self.prompts(n, seed, split)
        responses = self.candidates(prompts, base.stream(seed, "candidates"), expert_fraction)
        steps = [[s.strip() for s in r.split(STEP_SEPARATOR)][:-1] for r in responses]
        return datasets.Dataset.from_dict(
            {
                "prompt": prompts,
                "completions": steps,
                "labels": self.step_labels_text(prompts, responses),
                "completion": responses,
            }
        )


def long_horizon() -> ReasoningTask:
    """The long-horizon variant (``reasoning_long``): 6-12 operations per problem, so that one
    outcome reward at the end of a 50-120 token response must be credited to the step that
    earned it; everything else as the default task."""
    return ReasoningTask(name="reasoning_long", min_ops=6, max_ops=12)


def _parse_prompt(prompt_ids: jax.Array, prompt_mask: jax.Array):
    """start [B], ops [B, M-1] (op token of each operation), operands [B, M-1], num_ops [B]."""
    valid = tokens.content_mask(prompt_ids, prompt_mask, stop_at_eos=False)
    values, follow, count, _ = tokens.parse_numbers(prompt_ids, valid, MAX_PROMPT_NUMBERS)
    num_ops = jnp.clip(count - 1, 0, MAX_PROMPT_NUMBERS - 1)
    return values[:, 0], follow[:, :-1], values[:, 1:], num_ops


_WAIT_A, _WAIT_B, _WAIT_C, _BROKEN = 0, 1, 2, 3  # step parser: reading a, b, c; malformed


def _step_labels(prompt_ids, prompt_mask, response_ids, response_mask):
    """A left-to-right parser over the response's content tokens (``lax.scan``); its carry is
    (field, number being read, whether it has digits, a, op, b, previous stated value, step)."""
    prompt_ids, response_ids = tokens.in_vocab(prompt_ids), tokens.in_vocab(response_ids)
    start, ops, operands, num_ops = _parse_prompt(prompt_ids, prompt_mask)
    valid = tokens.content_mask(response_ids, response_mask, stop_at_eos=True)
    rows = jnp.arange(response_ids.shape[0])

    def step(carry, x):
        field, acc, has, a, op, b, prev, k = carry
        token, digit, ok = x
        is_digit = digit >= 0
        is_op = ((token == _PLUS) | (token == _MINUS)) & (field == _WAIT_A) & has
        is_eq = (token == _EQUALS) & (field == _WAIT_B) & has
        boundary = ok & (token == _SEMICOLON)
        well = (field == _WAIT_C) & has
        j = jnp.clip(k, 0, MAX_PROMPT_NUMBERS - 2)
        label = (
            well
            & (k < num_ops)
            & (a == prev)
            & (op == ops[rows, j])
            & (b == operands[rows, j])
            & (acc == jnp.where(op == _MINUS, a - b, a + b))
        )
        cases = [is_digit, is_op, is_eq, token == _SEMICOLON]
        new_field = jnp.select(cases, [field, _WAIT_B, _WAIT_C, _WAIT_A], _BROKEN)
        grown = jnp.where(has, jnp.minimum(acc * 10 + digit, tokens.NUMBER_CLAMP), digit)
        updated = (
            new_field,
            jnp.where(is_digit, grown, 0),
            is_digit,
            jnp.where(is_op, acc, a),
            jnp.where(is_op, token, op),
            jnp.where(is_eq, acc, b),
            jnp.where(boundary, jnp.where(well, acc, -1), prev),
            k + boundary.astype(jnp.int32),
        )
        carry = tuple(jnp.where(ok, u, c) for u, c in zip(updated, carry))
        return carry, (boundary, boundary & label)

    zeros = jnp.zeros_like(start)
    init = (zeros, zeros, zeros.astype(jnp.bool_), zeros, zeros, zeros, start, zeros)
    xs = (response_ids.T, tokens.digit_values(response_ids).T, valid.T)
    _, (boundary, labels) = jax.lax.scan(step, init, xs)
    return boundary.T, labels.T


def _step_labels_py(prompt_ids: list[int], response_ids: list[int]) -> list[bool]:
    stated, operations = _problem(prompt_ids)
    labels, segment = [], []
    for token in vocab.content_ids(response_ids, stop_at_eos=True):
        if token != _SEMICOLON:
            segment.append(token)
            continue
        parsed = _parse_step(segment)
        ok = parsed is not None and len(labels) < len(operations)
        if ok:
            a, op, b, c = parsed
            ok = (a, op, b) == (stated, *operations[len(labels)]) and c == _apply(a, op, b)
        labels.append(bool(ok))
        stated, segment = (parsed[3] if parsed is not None else -1), []
    return labels


def _parse_step(segment: list[int]) -> tuple[int, int, int, int] | None:
    """``a op b = c`` from one step's ids, or None if malformed."""
    values, follow, count, _ = tokens.parse_numbers_py(segment, 3)
    shape = [t for t in segment if t not in vocab.DIGIT_IDS]
    if count != 3 or len(shape) != 2 or shape[0] not in (_PLUS, _MINUS) or shape[1] != _EQUALS:
        return None
    if segment[0] not in vocab.DIGIT_IDS or segment[-1] not in vocab.DIGIT_IDS:
        return None
    return values[0], follow[0], values[1], values[2]


@functools.cache
def _demonstrator_entropy(task: ReasoningTask) -> float:
    """Exact token-weighted entropy: E[H] / E[tokens] with E[H] = h(p_style) + E[K](h(ε) + ε
    log 4) and E[tokens] = p_style + 1 + Σ_k P(K ≥ k)(4 + E nd(s_{k−1}) + E nd(s_k)), where
    nd(s) is the digit count of the stated value s_k; its law comes from propagating the joint
    distribution of (true, stated) values through the prompt and error processes."""
    num_ops = np.arange(task.min_ops, task.max_ops + 1)
    nd = lambda v: len(str(v))
    joint = collections.Counter(
        {(v, v): 1.0 / (task.high - task.low + 1) for v in range(task.low, task.high + 1)}
    )
    tokens = task.style_prob + 1.0
    for k in range(1, task.max_ops + 1):
        nxt: collections.Counter = collections.Counter()
        for (true, stated), p in joint.items():
            for minus in (False, True):
                for b in range(1, 10):
                    minus_ok = minus and true - b >= task.floor
                    sign = -1 if minus_ok else 1
                    q = p / 18
                    right = stated + sign * b
                    nxt[(true + sign * b, right)] += q * (1 - task.noise)
                    for d in _DELTAS:
                        nxt[(true + sign * b, right + d)] += q * task.noise / len(_DELTAS)
        before = sum(p * nd(s) for (_, s), p in joint.items())
        after = sum(p * nd(s) for (_, s), p in nxt.items())
        tokens += np.mean(num_ops >= k) * (4 + before + after)
        joint = nxt
    step_entropy = base.log_binary_entropy(task.noise) + task.noise * math.log(len(_DELTAS))
    entropy = base.log_binary_entropy(task.style_prob) + num_ops.mean() * step_entropy
    return float(entropy / tokens)


def _token_walk(task: ReasoningTask, stated: int, operations, tokens):
    """Yields log π_demo of each token read from ``tokens`` until the first one off the
    support (−inf), or until the tokens end."""
    first = next(tokens, None)
    if first is None:
        return
    styled = first == vocab.STYLE_ID
    style_logp = base.safe_log(task.style_prob if styled else 1.0 - task.style_prob)
    pending = [] if styled else [first]  # a token read but not yet scored
    if styled:
        yield style_logp
    extra = 0.0 if styled else style_logp  # the unstyled choice is paid on the first token

    def read():
        return pending.pop() if pending else next(tokens, None)

    for op, b in operations:
        right = _apply(stated, op, b)
        forced = vocab.encode([f"{spell(stated)} {vocab.WORDS[op]} {spell(b)} ="])[0]
        for expected in forced:
            token = read()
            if token is None:
                return
            if token != expected:
                yield -math.inf
                return
            yield extra
            extra = 0.0
        candidates = {right: 1.0 - task.noise}
        candidates.update({right + d: task.noise / len(_DELTAS) for d in _DELTAS})
        digits = ""
        while True:
            token = read()
            if token is None:
                return
            mass = sum(p for c, p in candidates.items() if str(c).startswith(digits))
            if token == _SEMICOLON and digits:
                exact = candidates.get(int(digits), 0.0)
                if exact == 0.0:
                    yield -math.inf
                    return
                yield math.log(exact / mass)
                stated = int(digits)
                break
            word = vocab.WORDS[token] if 0 <= token < vocab.VOCAB_SIZE else vocab.UNK
            following = sum(p for c, p in candidates.items() if str(c).startswith(digits + word))
            if not word.isdigit() or following == 0.0:
                yield -math.inf
                return
            yield math.log(following / mass)
            digits += word
    token = read()
    if token is None:
        return
    yield 0.0 if token == vocab.EOS_ID else -math.inf
    if token == vocab.EOS_ID and read() is not None:
        yield -math.inf
