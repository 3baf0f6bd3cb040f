"""The one fixed word-level vocabulary of the synthetic tasks, and its Hugging Face tokenizer.

Every word of the three tasks is a single token: the special tokens (``<pad>`` = 0, ``<bos>`` =
1, ``<eos>`` = 2, ``<unk>`` = 3), the chat-template words, the digits ``0``-``9``, operators and
punctuation, and the preference language's lexicon. Text is split on whitespace, then every
punctuation character and every digit is split off on its own, so ``"37+45="`` and
``"3 7 + 4 5 ="`` give the same ids; any other unknown word becomes ``<unk>``. Decoding joins
tokens with single spaces, so the canonical text of a task (one space between tokens, as every
generator here emits) round-trips exactly: ``decode(encode(s)) == s``.

Because splitting happens at whitespace or around single characters, tokenizing a prompt and a
response separately and concatenating the ids equals tokenizing ``prompt + " " + response``.

``add_special_tokens`` adds nothing (there is no post-processor): no bos is prepended and no eos
appended; the data layer appends eos to responses itself. The chat template writes its own
``<bos>`` and closes every assistant turn with ``<eos>``::

    <bos>user : review the food assistant : the soup was tasty . <eos>
"""

from __future__ import annotations

import functools
import os

import tokenizers
import transformers
from tokenizers import models, pre_tokenizers

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHAT_WORDS = ("system", "user", "assistant", ":")
DIGITS = tuple(str(d) for d in range(10))
SYMBOLS = ("+", "-", "=", ";", ".", ",", "?", "!")
STYLE_TOKEN = "indeed"  # the demonstrators' spurious style word; every gold reward ignores it

# The preference language (see ``preference.py`` for its grammar and gold lexicon scores).
PROMPT_VERBS = ("review", "describe", "rate")
OPENERS = ("the", "this", "my")
COPULAS = ("was", "is")
CONJUNCTION = "and"
INTENSIFIERS = ("very", "really", "so")
# topic -> (on-topic nouns, on-topic adjectives)
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "food": (("soup", "bread", "cake", "sauce"), ("tasty", "fresh")),
    "movie": (("plot", "actor", "scene", "ending"), ("gripping", "moving")),
    "music": (("song", "band", "voice", "beat"), ("catchy", "soulful")),
    "travel": (("hotel", "beach", "trip", "guide"), ("relaxing", "scenic")),
    "book": (("story", "author", "chapter", "hero"), ("thrilling", "clever")),
    "game": (("level", "puzzle", "boss", "map"), ("addictive", "fun")),
}
GENERIC_ADJECTIVES = (
    "great",
    "lovely",
    "good",
    "nice",
    "fine",
    "okay",
    "plain",
    "dull",
    "boring",
    "bad",
    "awful",
    "terrible",
)
TOPIC_NAMES = tuple(TOPICS)
NOUNS = tuple(noun for nouns, _ in TOPICS.values() for noun in nouns)
TOPIC_ADJECTIVES = tuple(adj for _, adjs in TOPICS.values() for adj in adjs)
ADJECTIVES = GENERIC_ADJECTIVES + TOPIC_ADJECTIVES

WORDS: tuple[str, ...] = (
    SPECIAL_TOKENS
    + CHAT_WORDS
    + DIGITS
    + SYMBOLS
    + (STYLE_TOKEN,)
    + PROMPT_VERBS
    + OPENERS
    + COPULAS
    + (CONJUNCTION,)
    + INTENSIFIERS
    + TOPIC_NAMES
    + NOUNS
    + ADJECTIVES
)
VOCAB: dict[str, int] = {word: i for i, word in enumerate(WORDS)}
assert len(VOCAB) == len(WORDS), "duplicate word in the task vocabulary"
VOCAB_SIZE = len(WORDS)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIAL_TOKENS)
STYLE_ID = VOCAB[STYLE_TOKEN]
DIGIT_IDS = tuple(VOCAB[d] for d in DIGITS)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }} : {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %} {{ eos_token }}{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@functools.cache
def _backend() -> tokenizers.Tokenizer:
    """The ``tokenizers`` word-level tokenizer (built once; never mutated)."""
    tokenizer = tokenizers.Tokenizer(models.WordLevel(VOCAB, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    # Registered as special so that a literal "<eos>" in text maps to its id, as in HF.
    tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    return tokenizer


def build_tokenizer(padding_side: str = "right") -> transformers.PreTrainedTokenizerFast:
    """The task tokenizer as a ``transformers`` fast tokenizer (a new, identical object per call).

    Args:
      padding_side: ``"right"`` or ``"left"``.

    Returns:
      A tokenizer with pad/bos/eos/unk set, the chat template, ``len() == VOCAB_SIZE``, and
      ``add_special_tokens`` adding nothing.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        padding_side=padding_side,
        model_max_length=1024,
    )


def save_tokenizer(path: str | os.PathLike, padding_side: str = "right") -> str:
    """Writes the task tokenizer as a normal HF tokenizer directory.

    Args:
      path: the directory (created if needed).
      padding_side: stored in ``tokenizer_config.json``.

    Returns:
      ``path`` as a string; ``transformers.AutoTokenizer.from_pretrained(path)`` loads it offline.
    """
    path = os.fspath(path)
    build_tokenizer(padding_side).save_pretrained(path)
    return path


def encode(texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens (same ids as ``build_tokenizer()``)."""
    return [e.ids for e in _backend().encode_batch(list(texts), add_special_tokens=False)]


def content_ids(ids: list[int], *, stop_at_eos: bool) -> list[int]:
    """The content of a token sequence as the gold rewards see it: pad/bos/eos and the style
    token dropped and, if ``stop_at_eos``, everything from the first eos on dropped.

    Args:
      ids: token ids.
      stop_at_eos: True for responses (nothing after eos counts), False for prompts.

    Returns:
      The remaining ids, in order (``<unk>`` stays: it is an unknown word).
    """
    out = []
    for token in ids:
        if token == EOS_ID and stop_at_eos:
            break
        if token not in (PAD_ID, BOS_ID, EOS_ID, STYLE_ID):
            out.append(token)
    return out
