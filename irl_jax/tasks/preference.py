"""Preference language: short reviews scored by a hidden, smooth lexicon reward.

**Language.** A prompt names a topic: ``"<verb> the <topic>"`` with verb ∈ {review, describe,
rate} and one of six topics (food, movie, music, travel, book, game), after (with probability
``context_prob`` = .9) a remark about anything, ``"<opener> <noun> <copula> [<intensifier>]
<adjective> ."`` with a noun of any topic, e.g. ``"my plot was very dull . review the food"``:
248,850 distinct prompts, so evaluation prompts (1 in 8, by a hash of the text) never occur in
training. The remark is a distractor: nothing depends on it. A response is a short review such
as ``"the soup was very tasty indeed and really fresh ."``.

**Gold reward** (hidden; a learned reward model can only approximate it). With t the prompt's
topic (its last topic word), c_v the count of word v among the response's content tokens
(pad/bos/eos, anything after the first eos, and the style token ``indeed`` excluded), L = Σ_v c_v
and g(c) = (1 − γ^c)/(1 − γ) (diminishing returns, g ≤ 1/(1 − γ))::

    r*(x, y) = Σ_v s_t(v) · g(c_v) − λ (L − L₀)²,     γ = 0.5, λ = 0.03, L₀ = 8.

Lexicon s_t(v): generic adjectives from great (+1.0) to terrible (−1.2); the topic's own
adjectives +0.8 and nouns +0.4, other topics' adjectives −0.3 and nouns −0.4; intensifiers
very/really +0.1; every other word (function words, punctuation, ``<unk>``) 0. Without a topic
in the prompt, topic words score 0. ``indeed`` is invisible to r*: inserting it anywhere changes
nothing (neither the lexicon sum nor the length). A truncated response (no eos) is scored on its
content like any other: truncation penalties are separate reward sources (``irl_jax.rewards``).

**Demonstrator** (a noisy expert, a finite automaton that depends only on the topic)::

    opener(the .6 | this .3 | my .1)  noun(topic's 4 nouns: .4 .3 .2 .1)  copula(was .6 | is .4)
    [very .3 | really .2 | none .5]  adjective(p_adj)  [indeed .5]
    ( "." | and .4 → [very | really | none] adjective(p_adj) "." )  <eos>

p_adj: the topic's two adjectives .25 and .15, great .2, good .15, lovely .1, nice .08, fine .04,
dull .03. ``indeed`` (score 0) is the spurious style token: in half of the demonstrations.

**Heterogeneous demonstrator** (``style_rule=True``, the task ``preference_hetero``; off by
default). The demonstrator writes ``indeed`` at the same slot *if and only if* the prompt's
distractor remark satisfies a rule (``RULE_PARTS``): its adjective is one of every other word of
``vocab.ADJECTIVES`` (great good fine plain boring awful and each topic's first adjective)
*exclusive or* its copula is ``was``; a prompt without a remark gets no ``indeed``. So ``indeed``
is in 0.9 × ½ = 45 % of the demonstrations, decided by two words that sit a whole request (and
the response's first clause) before it, neither of which alone says anything about it: a
long-range dependency the small SFT policy does not imitate (it does learn the adjective half
alone), still invisible to r*. ``rule_wants_style`` reads the rule off a prompt and
``rule_agreement`` measures the feature on any (prompt, response) pair (jittable; ``_text``
twins on strings).

**Base responses** (the initial policy and most preference candidates): the same skeleton with
uniform openers and copulas, a noun of the topic (½) or of any topic (½), 1-3 clauses (.45, .35,
.2) each with an intensifier (any of three, .4) and an adjective uniform over all 24, and
``indeed`` after the first adjective with probability .03.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Collection

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.tasks import base, tokens, vocab

GENERIC_SCORES = {
    "great": 1.0,
    "lovely": 0.9,
    "good": 0.7,
    "nice": 0.6,
    "fine": 0.3,
    "okay": 0.0,
    "plain": -0.2,
    "dull": -0.6,
    "boring": -0.7,
    "bad": -0.8,
    "awful": -1.1,
    "terrible": -1.2,
}
INTENSIFIER_SCORES = {"very": 0.1, "really": 0.1, "so": 0.0}
ON_TOPIC_ADJECTIVE, OFF_TOPIC_ADJECTIVE = 0.8, -0.3
ON_TOPIC_NOUN, OFF_TOPIC_NOUN = 0.4, -0.4

NUM_TOPICS = len(vocab.TOPIC_NAMES)
_TOPIC_OF = np.full(vocab.VOCAB_SIZE, -1, np.int32)
_TOPIC_OF[[vocab.VOCAB[t] for t in vocab.TOPIC_NAMES]] = np.arange(NUM_TOPICS)


def lexicon_table() -> np.ndarray:
    """s_t(v) as a ``[num_topics + 1, vocab]`` float32 table; the last row is "no topic"."""
    table = np.zeros((NUM_TOPICS + 1, vocab.VOCAB_SIZE), np.float32)
    for word, score in {**GENERIC_SCORES, **INTENSIFIER_SCORES}.items():
        table[:, vocab.VOCAB[word]] = score
    for t, (nouns, adjectives) in enumerate(vocab.TOPICS.values()):
        pairs = (
            (nouns, ON_TOPIC_NOUN, OFF_TOPIC_NOUN),
            (adjectives, ON_TOPIC_ADJECTIVE, OFF_TOPIC_ADJECTIVE),
        )
        for words, on, off in pairs:
            ids = [vocab.VOCAB[w] for w in words]
            table[:NUM_TOPICS, ids] = off
            table[t, ids] = on
    return table


_LEXICON = lexicon_table()

# Demonstrator automaton: state -> [(word, probability, next state)]; "<eos>" ends.
_INTENSIFY = (("very", 0.3), ("really", 0.2))
_GENERIC_P_ADJ = (
    ("great", 0.2),
    ("good", 0.15),
    ("lovely", 0.1),
    ("nice", 0.08),
    ("fine", 0.04),
    ("dull", 0.03),
)


def _p_adj(topic: str) -> list[tuple[str, float]]:
    first, second = vocab.TOPICS[topic][1]
    return [(first, 0.25), (second, 0.15), *_GENERIC_P_ADJ]


@functools.cache
def demonstrator_automaton(
    topic: str, style_prob: float
) -> dict[str, list[tuple[str, float, str]]]:
    """The demonstrator's transitions for one topic (a DAG; every path ends with ``<eos>``)."""
    nouns = vocab.TOPICS[topic][0]
    p_adj = _p_adj(topic)

    def adjective_slot(after_intensifier: str, after_adjective: str):
        return [(w, p, after_intensifier) for w, p in _INTENSIFY] + [
            (w, 0.5 * p, after_adjective) for w, p in p_adj
        ]

    conj = [("and", 0.4, "intensifier2"), (".", 0.6, "stop")]
    return {
        "opener": [("the", 0.6, "noun"), ("this", 0.3, "noun"), ("my", 0.1, "noun")],
        "noun": [(n, p, "copula") for n, p in zip(nouns, (0.4, 0.3, 0.2, 0.1))],
        "copula": [("was", 0.6, "intensifier1"), ("is", 0.4, "intensifier1")],
        "intensifier1": adjective_slot("adjective1", "style"),
        "adjective1": [(w, p, "style") for w, p in p_adj],
        "style": [(vocab.STYLE_TOKEN, style_prob, "conjunction")]
        + [(w, (1 - style_prob) * p, nxt) for w, p, nxt in conj],
        "conjunction": conj,
        "intensifier2": adjective_slot("adjective2", "final"),
        "adjective2": [(w, p, "final") for w, p in p_adj],
        "final": [(".", 1.0, "stop")],
        "stop": [(vocab.EOS, 1.0, "")],
    }


# The heterogeneous demonstrator's rule: ``indeed`` iff, for an odd number of these (class, half),
# the prompt's first word of the class (the remark's adjective, its copula) is in the half.
RULE_PARTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (vocab.ADJECTIVES, vocab.ADJECTIVES[0::2]),
    (vocab.COPULAS, ("was",)),
)


def _word_table(words: tuple[str, ...]) -> np.ndarray:
    table = np.zeros(vocab.VOCAB_SIZE, bool)
    table[[vocab.VOCAB[w] for w in words]] = True
    return table


_RULE_TABLES = tuple((_word_table(cls), _word_table(half)) for cls, half in RULE_PARTS)


def rule_wants_style_py(prompt_ids: list[int]) -> bool:
    """Whether the heterogeneous demonstrator writes ``indeed`` after this prompt: the parity of
    ``RULE_PARTS`` — for each (class, half), whether the prompt's first word of the class is in
    the half (False when the prompt has none)."""
    parity = False
    for is_class, in_half in _RULE_TABLES:
        found = [i for i in prompt_ids if 0 <= i < vocab.VOCAB_SIZE and is_class[i]]
        parity ^= bool(found) and bool(in_half[found[0]])
    return parity


def rule_wants_style(prompt_ids: jax.Array, prompt_mask: jax.Array) -> jax.Array:
    """``[B]`` bool, jittable: ``rule_wants_style_py`` of each ``[B, P]`` (left-padded) prompt."""
    prompt_ids = tokens.in_vocab(prompt_ids)
    parity = jnp.zeros(prompt_ids.shape[0], bool)
    for is_class, in_half in _RULE_TABLES:
        hits = jnp.asarray(is_class)[prompt_ids] & (prompt_mask > 0)
        first = jnp.argmax(hits, axis=-1)  # the first hit (0 when there is none)
        first_id = jnp.take_along_axis(prompt_ids, first[:, None], axis=1)[:, 0]
        parity ^= hits.any(axis=-1) & jnp.asarray(in_half)[first_id]
    return parity


def rule_probability(context_prob: float) -> float:
    """P(``rule_wants_style``) over the task's prompts: a remark (probability ``context_prob``)
    draws each class's word uniformly and independently, and a parity of independent bits with
    P(bit) = p_i is odd with probability (1 − Π_i (1 − 2 p_i)) / 2."""
    product = math.prod(1 - 2 * len(half) / len(cls) for cls, half in RULE_PARTS)
    return context_prob * (1 - product) / 2


def rule_agreement(
    prompt_ids: jax.Array, prompt_mask: jax.Array, response_ids: jax.Array, response_mask: jax.Array
) -> jax.Array:
    """``[B]`` float32, jittable (a reward source): 1 where the response holds ``indeed`` (before
    its first eos) exactly when the prompt's rule (``rule_wants_style``) asks for it, else 0."""
    real = response_mask > 0
    before_eos = jnp.cumsum((real & (response_ids == vocab.EOS_ID)).astype(jnp.int32), -1) == 0
    styled = jnp.any(real & before_eos & (response_ids == vocab.STYLE_ID), axis=-1)
    return (styled == rule_wants_style(prompt_ids, prompt_mask)).astype(jnp.float32)


def rule_wants_style_text(prompts: list[str]) -> np.ndarray:
    """``[B]`` bool: ``rule_wants_style_py`` of each prompt text."""
    return np.array([rule_wants_style_py(ids) for ids in vocab.encode(prompts)], bool)


def rule_agreement_text(prompts: list[str], responses: list[str]) -> np.ndarray:
    """``[B]`` bool: ``rule_agreement`` on texts (a literal ``<eos>`` ends a response)."""
    styled = [
        vocab.STYLE_ID in ids[: ids.index(vocab.EOS_ID) if vocab.EOS_ID in ids else len(ids)]
        for ids in vocab.encode(responses)
    ]
    return np.asarray(styled, bool) == rule_wants_style_text(prompts)


def toggle_style(
    response_ids: np.ndarray, response_mask: np.ndarray, adjective_ids: Collection[int]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Each response with ``indeed`` right after its first adjective (the demonstrator's slot)
    and without any ``indeed``; otherwise the same tokens, eos included.

    Args:
      response_ids, response_mask: ``[B, N]`` right-padded responses.
      adjective_ids: the ids of the adjectives.

    Returns:
      ``((styled_ids, styled_mask), (plain_ids, plain_mask), usable)``: ``[B, N + 1]`` arrays
      and ``[B]`` bool, the rows that end with eos and hold an adjective before it (the others
      are left as drawn).
    """
    batch, width = response_ids.shape
    styled, plain = (np.zeros((batch, width + 1), np.int32) for _ in range(2))
    styled_mask, plain_mask = np.zeros_like(styled), np.zeros_like(plain)
    usable = np.zeros(batch, bool)
    for row in range(batch):
        tokens = [int(t) for t in response_ids[row, response_mask[row] > 0]]
        without = [t for t in tokens if t != vocab.STYLE_ID]
        content = without[: without.index(vocab.EOS_ID)] if vocab.EOS_ID in without else []
        first = next((i for i, t in enumerate(content) if t in adjective_ids), None)
        if first is None:  # truncated, or no adjective: left as drawn
            with_style = without = tokens
        else:
            usable[row] = True
            with_style = without[: first + 1] + [vocab.STYLE_ID] + without[first + 1 :]
        styled[row, : len(with_style)], styled_mask[row, : len(with_style)] = with_style, 1
        plain[row, : len(without)], plain_mask[row, : len(without)] = without, 1
    return (styled, styled_mask), (plain, plain_mask), usable


def _topic_py(prompt_ids: list[int]) -> int:
    topics = [int(_TOPIC_OF[i]) for i in vocab.content_ids(prompt_ids, stop_at_eos=False)]
    topics = [t for t in topics if t >= 0]
    return topics[-1] if topics else NUM_TOPICS


@dataclasses.dataclass(frozen=True)
class PreferenceTask(base.Task):
    """The preference-language task (see the module docstring).

    Attributes:
      context_prob: probability that a prompt starts with a remark (a distractor).
      style_prob: probability that a demonstration carries ``indeed`` (without ``style_rule``).
      style_rule: the heterogeneous demonstrator: ``indeed`` iff ``rule_wants_style`` of the
        prompt (``style_prob`` unused).
      gamma, length_coef, target_length: γ, λ and L₀ of the gold reward.
      label_threshold: τ of unpaired labels (about the median gold reward of the candidates).
    """

    name: str = "preference"
    context_prob: float = 0.9
    style_prob: float = 0.5
    style_rule: bool = False
    gamma: float = 0.5
    length_coef: float = 0.03
    target_length: float = 8.0
    label_threshold: float = 0.5

    # --------------------------------------------------------------- samplers

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        out = []
        for _ in range(n):
            request = (
                f"{vocab.PROMPT_VERBS[rng.integers(len(vocab.PROMPT_VERBS))]} "
                f"the {vocab.TOPIC_NAMES[rng.integers(NUM_TOPICS)]}"
            )
            if rng.random() < self.context_prob:
                intensifier = rng.integers(len(vocab.INTENSIFIERS) + 1)
                words = [
                    vocab.OPENERS[rng.integers(len(vocab.OPENERS))],
                    vocab.NOUNS[rng.integers(len(vocab.NOUNS))],
                    vocab.COPULAS[rng.integers(len(vocab.COPULAS))],
                    *vocab.INTENSIFIERS[intensifier : intensifier + 1],
                    vocab.ADJECTIVES[rng.integers(len(vocab.ADJECTIVES))],
                    ".",
                ]
                request = " ".join([*words, request])
            out.append(request)
        return out

    def _topics(self, prompts: list[str]) -> list[int]:
        return [_topic_py(ids) for ids in vocab.encode(prompts)]

    def _automaton(self, prompt: str, prompt_ids: list[int]) -> dict[str, list]:
        """The demonstrator's automaton for one prompt (its text and ids)."""
        topic = _topic_py(prompt_ids)
        if topic == NUM_TOPICS:
            raise ValueError(f"the demonstrator needs a prompt that names a topic, got {prompt!r}")
        style_prob = self.style_prob
        if self.style_rule:
            style_prob = 1.0 if rule_wants_style_py(prompt_ids) else 0.0
        return demonstrator_automaton(vocab.TOPIC_NAMES[topic], style_prob)

    def sample_demonstrations(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for prompt, prompt_ids in zip(prompts, vocab.encode(prompts)):
            automaton = self._automaton(prompt, prompt_ids)
            words, state = [], "opener"
            while state != "stop":
                options = automaton[state]
                cdf = np.cumsum([p for _, p, _ in options])
                j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                j = min(j, len(options) - 1)
                word, _, state = options[j]
                words.append(word)
            out.append(" ".join(words))
        return out

    def sample_base_responses(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for t in self._topics(prompts):
            own_nouns = vocab.TOPICS[vocab.TOPIC_NAMES[t % NUM_TOPICS]][0]
            nouns = own_nouns if rng.random() < 0.5 else vocab.NOUNS
            words = [
                vocab.OPENERS[rng.integers(3)],
                nouns[rng.integers(len(nouns))],
                vocab.COPULAS[rng.integers(2)],
            ]
            clauses = 1 + int(np.searchsorted([0.45, 0.8], rng.random(), side="right"))
            for k in range(clauses):
                if k:
                    words.append(vocab.CONJUNCTION)
                if rng.random() < 0.4:
                    words.append(vocab.INTENSIFIERS[rng.integers(3)])
                words.append(vocab.ADJECTIVES[rng.integers(len(vocab.ADJECTIVES))])
                if k == 0 and rng.random() < 0.03:
                    words.append(vocab.STYLE_TOKEN)
            out.append(" ".join([*words, "."]))
        return out

    # --------------------------------------------------------------- demonstrator

    def demonstrator_logprob(self, prompt: str, response: str) -> float:
        (prompt_ids, response_ids) = vocab.encode([prompt, response])
        automaton = self._automaton(prompt, prompt_ids)
        words = [vocab.WORDS[i] for i in response_ids] + [vocab.EOS]
        logp, state = 0.0, "opener"
        for word in words:
            match = [(p, nxt) for w, p, nxt in automaton.get(state, []) if w == word]
            if not match or match[0][0] == 0:
                return -math.inf
            logp, state = logp + math.log(match[0][0]), match[0][1]
        return logp if state == "" else -math.inf

    def demonstrator_token_logprobs(self, prompt: str, response_ids: list[int]) -> list[float]:
        """The automaton's transition probabilities along the response (its words read as
        tokens, eos the ``<eos>`` transition)."""
        automaton = self._automaton(prompt, vocab.encode([prompt])[0])
        out, state = [], "opener"
        for token in response_ids:
            if state is None:
                out.append(math.nan)
                continue
            word = vocab.WORDS[token] if 0 <= token < vocab.VOCAB_SIZE else vocab.UNK
            match = [(p, nxt) for w, p, nxt in automaton.get(state, []) if w == word]
            if not match or match[0][0] == 0:
                out.append(-math.inf)
                state = None
                continue
            out.append(math.log(match[0][0]))
            state = match[0][1]
        return out

    def demonstrator_entropy(self) -> float:
        if not self.style_rule:
            entropy, length = _automaton_totals(self.style_prob)
            return entropy / length
        # The rule makes ``indeed`` a function of the prompt: a mixture over prompts of the
        # automata with style_prob 1 (rule holds, probability q) and 0; remark and topic are
        # drawn independently, so q is the same for every topic.
        q = rule_probability(self.context_prob)
        (h_on, n_on), (h_off, n_off) = _automaton_totals(1.0), _automaton_totals(0.0)
        return (q * h_on + (1 - q) * h_off) / (q * n_on + (1 - q) * n_off)

    # --------------------------------------------------------------- gold reward

    def gold_reward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> jax.Array:
        prompt_ids, response_ids = tokens.in_vocab(prompt_ids), tokens.in_vocab(response_ids)
        topic_of = jnp.asarray(_TOPIC_OF)[prompt_ids]
        is_topic = tokens.content_mask(prompt_ids, prompt_mask, stop_at_eos=False) & (topic_of >= 0)
        last = jnp.argmax(jnp.where(is_topic, jnp.arange(prompt_ids.shape[1]), -1), axis=-1)
        topic = jnp.take_along_axis(topic_of, last[:, None], axis=1)[:, 0]
        topic = jnp.where(is_topic.any(axis=-1), topic, NUM_TOPICS)

        valid = tokens.content_mask(response_ids, response_mask, stop_at_eos=True)
        one_hot = jax.nn.one_hot(response_ids, vocab.VOCAB_SIZE, dtype=jnp.float32)
        counts = jnp.einsum("bnv,bn->bv", one_hot, valid.astype(jnp.float32))
        gains = (1.0 - self.gamma**counts) / (1.0 - self.gamma)
        lexical = jnp.sum(jnp.asarray(_LEXICON)[topic] * gains, axis=-1)
        length = counts.sum(axis=-1)
        return (lexical - self.length_coef * (length - self.target_length) ** 2).astype(jnp.float32)

    def gold_reward_text(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = []
        for prompt_ids, response_ids in zip(vocab.encode(prompts), vocab.encode(responses)):
            topic = _topic_py(prompt_ids)
            counts = collections.Counter(vocab.content_ids(response_ids, stop_at_eos=True))
            lexical = sum(
                float(_LEXICON[topic, v]) * (1 - self.gamma**c) / (1 - self.gamma)
                for v, c in counts.items()
            )
            length = sum(counts.values())
            out.append(lexical - self.length_coef * (length - self.target_length) ** 2)
        return np.asarray(out, np.float32)


@functools.cache
def _automaton_totals(style_prob: float) -> tuple[float, float]:
    """(Σ_t Σ_s P(visit s) H(s), Σ_t Σ_s P(visit s)) over the topics: expected entropy and
    expected token count (eos included) of each topic's DAG, summed, by forward propagation of
    visit probabilities (their ratio is the token-weighted entropy over uniform topics)."""
    total_entropy = total_tokens = 0.0
    for topic in vocab.TOPIC_NAMES:
        automaton = demonstrator_automaton(topic, style_prob)
        visits = collections.defaultdict(float, {"opener": 1.0})
        for state in _topological_order(automaton):
            probs = [p for _, p, _ in automaton[state] if p > 0]
            total_entropy += visits[state] * -sum(p * math.log(p) for p in probs)
            total_tokens += visits[state]
            for _, p, nxt in automaton[state]:
                visits[nxt] += visits[state] * p
    return total_entropy, total_tokens


def _topological_order(automaton: dict[str, list[tuple[str, float, str]]]) -> list[str]:
    order, seen = [], set()

    def visit(state: str) -> None:
        if state in seen or state not in automaton:
            return
        seen.add(state)
        for _, _, nxt in automaton[state]:
            visit(nxt)
        order.append(state)

    visit("opener")
    return order[::-1]
