"""The data formats irl_jax reads, their canonical fields, and format detection.

A *format* is a set of columns, detected from the column names alone (``detect_format``). Each
format maps its source columns onto irl_jax's canonical field names (a TRL ``completion`` column
is our ``response``; a stepwise ``completions`` column is our ``steps``). After validation every
row becomes a ``Record`` of ``Example``s, the only thing tokenization sees.

Formats, in detection order (the first whose required columns are all present wins; extra
columns are ignored):

=========================  ==============================================  =====================
format                     source columns (alternatives with ``|``)        kinds that accept it
=========================  ==============================================  =====================
cross_prompt_preference    chosen_prompt, chosen, rejected_prompt, rejected  preference, ranking
preference                 prompt, chosen, rejected                          preference, ranking,
                                                                             prompt
implicit_preference        chosen, rejected (HH-RLHF transcripts, or full    preference, ranking,
                           conversations as in UltraFeedback-binarized)      prompt
stepwise                   prompt, completions|steps, labels|step_labels     stepwise, prompt
ranking                    prompt, completions|responses                     ranking, prompt
unpaired                   prompt, completion|response, label                unpaired, prompt
prompt_completion          prompt, completion|response                       sft, prompt
messages                   messages                                          sft, prompt
text                       text                                              sft
prompt_only                prompt                                            prompt
=========================  ==============================================  =====================

Optional columns: ``margin`` (preference formats), ``chosen_score|score_chosen`` and
``rejected_score|score_rejected`` (preference formats; used only with ``margin_from_scores``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

Message = dict[str, Any]
Conversation = list[Message]
Text = str | Conversation

KINDS = ("sft", "preference", "ranking", "unpaired", "prompt", "stepwise")
ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """Bad input data: the message names the source, the 0-based row, the field and what was
    expected versus found, e.g. ``train.jsonl row 17, field 'chosen': expected a non-empty
    string, got None``. ``source``, ``row`` and ``field`` hold the first error's location."""

    def __init__(self, message: str, *, source: str = "", row: int | None = None, field: str = ""):
        super().__init__(message)
        self.source, self.row, self.field = source, row, field


@dataclasses.dataclass(frozen=True)
class Example:
    """One sequence before tokenization.

    Attributes:
      prompt: plain text (tokenized with the tokenizer's special tokens, e.g. a leading bos) or
        the conversation so far (rendered by the chat template with ``add_generation_prompt``).
      response: plain text (followed by eos), or the messages that follow a conversational
        prompt (starting and ending with an assistant turn; assistant turns are the targets);
        ``None`` for a prompt-only example.
      steps: for stepwise supervision, the response as a sequence of steps (``response`` is
        then ``None``).
    """

    prompt: Text
    response: Text | None = None
    steps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Record:
    """One validated row.

    Attributes:
      row: 0-based row number in the source (for error messages).
      examples: 1 example (sft, unpaired, prompt, stepwise), 2 (preference: chosen, rejected)
        or K (ranking, most to least preferred).
      margin: preference margin (0 when absent).
      label: the unpaired (KTO) label: True for a desirable response.
      step_labels: one label per step (stepwise).
    """

    row: int
    examples: tuple[Example, ...]
    margin: float = 0.0
    label: bool = False
    step_labels: tuple[bool, ...] = ()


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """Required and optional canonical fields of a format, each with its accepted column names."""

    required: Mapping[str, tuple[str, ...]]
    optional: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    kinds: tuple[str, ...] = ()


_SCORES = {
    "margin": ("margin",),
    "chosen_score": ("chosen_score", "score_chosen"),
    "rejected_score": ("rejected_score", "score_rejected"),
}
_PAIR_KINDS = ("preference", "ranking", "prompt")

# Detection order: the most specific column sets first.
FORMATS: dict[str, FormatSpec] = {
    "cross_prompt_preference": FormatSpec(
        {
            "chosen_prompt": ("chosen_prompt",),
            "chosen": ("chosen",),
            "rejected_prompt": ("rejected_prompt",),
            "rejected": ("rejected",),
        },
        _SCORES,
        ("preference", "ranking"),
    ),
    "preference": FormatSpec(
        {"prompt": ("prompt",), "chosen": ("chosen",), "rejected": ("rejected",)},
        _SCORES,
        _PAIR_KINDS,
    ),
    "implicit_preference": FormatSpec(
        {"chosen": ("chosen",), "rejected": ("rejected",)}, _SCORES, _PAIR_KINDS
    ),
    "stepwise": FormatSpec(
        {
            "prompt": ("prompt",),
            "steps": ("completions", "steps"),
            "step_labels": ("labels", "step_labels"),
        },
        kinds=("stepwise", "prompt"),
    ),
    "ranking": FormatSpec(
        {"prompt": ("prompt",), "responses": ("completions", "responses")},
        kinds=("ranking", "prompt"),
    ),
    "unpaired": FormatSpec(
        {"prompt": ("prompt",), "response": ("completion", "response"), "label": ("label",)},
        kinds=("unpaired", "prompt"),
    ),
    "prompt_completion": FormatSpec(
        {"prompt": ("prompt",), "response": ("completion", "response")}, kinds=("sft", "prompt")
    ),
    "messages": FormatSpec({"messages": ("messages",)}, kinds=("sft", "prompt")),
    "text": FormatSpec({"text": ("text",)}, kinds=("sft",)),
    "prompt_only": FormatSpec({"prompt": ("prompt",)}, kinds=("prompt",)),
}


@dataclasses.dataclass(frozen=True)
class Format:
    """A detected format: its name and ``fields`` mapping canonical field -> source column."""

    name: str
    fields: Mapping[str, str]


def _resolve(spec: FormatSpec, columns: set[str], source: str) -> tuple[dict[str, str], list[str]]:
    """Source column per field of ``spec``; also the required fields with no column."""
    fields, missing = {}, []
    for group, required in ((spec.required, True), (spec.optional, False)):
        for field, names in group.items():
            present = [name for name in names if name in columns]
            if len(present) > 1:
                raise DataError(
                    f"{source}: columns {present} are alternative names of the field "
                    f"{field!r}; keep one (e.g. with column_map)",
                    source=source,
                    field=field,
                )
            if present:
                fields[field] = present[0]
            elif required:
                missing.append(field)
    return fields, missing


def detect_format(
    columns: Iterable[str], format: str | None = None, *, source: str = "<data>"
) -> Format:
    """The format of a dataset with these ``columns`` (see the module docstring's table).

    Args:
      columns: column names (after any ``column_map``).
      format: force this format name instead of detecting it (e.g. ``"messages"`` for
        UltraFeedback, whose preference columns would otherwise win).
      source: name used in error messages.

    Returns:
      The ``Format``.

    Raises:
      DataError: no format matches (the columns are listed), a forced format lacks a column, or
        two alternative names of one field are both present.
    """
    present = set(columns)
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"unknown format {format!r}; known formats: {sorted(FORMATS)}")
        fields, missing = _resolve(FORMATS[format], present, source)
        if missing:
            names = [FORMATS[format].required[field] for field in missing]
            raise DataError(
                f"{source}: format {format!r} needs columns {names}; found {sorted(present)}",
                source=source,
                field=missing[0],
            )
        return Format(format, fields)
    for name, spec in FORMATS.items():
        fields, missing = _resolve(spec, present, source)
        if not missing:
            return Format(name, fields)
    expected = "; ".join(
        f"{name}: {' + '.join('|'.join(names) for names in spec.required.values())}"
        for name, spec in FORMATS.items()
    )
    raise DataError(
        f"{source}: unknown format: columns {sorted(present)} match none of the formats "
        f"({expected}); rename columns with column_map",
        source=source,
    )


def check_kind(fmt: Format, kind: str, source: str = "<data>") -> None:
    """Raises ``DataError`` unless data of format ``fmt`` can be tokenized as ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    accepted = FORMATS[fmt.name].kinds
    if kind not in accepted:
        usable = [name for name, spec in FORMATS.items() if kind in spec.kinds]
        raise DataError(
            f"{source}: format {fmt.name!r} (columns {sorted(fmt.fields.values())}) cannot be "
            f"used for kind {kind!r}; it serves {list(accepted)}. Formats for {kind!r}: {usable}",
            source=source,
        )


def describe(value: Any, limit: int = 60) -> str:
    """Short description of a found value for error messages: ``None``, ``''``, ``int 5``."""
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text if isinstance(value, str) else f"{type(value).__name__} {text}"
