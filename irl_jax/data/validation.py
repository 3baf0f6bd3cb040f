"""Row validation: every row is checked, and normalized to a ``Record``, before tokenizing.

Rules (each violation is a ``DataError`` naming the source, the 0-based row, the field and what
was expected versus found):

* text fields are non-empty strings (not only whitespace); ``None`` / a missing value is an error;
* a conversation is a non-empty list of dicts, each with a ``role`` in ``ROLES`` and a non-empty
  string ``content``; other keys are passed to the chat template, ``None``-valued keys dropped;
* a response conversation starts and ends with an assistant turn; a full conversation given as
  ``chosen``/``rejected`` (UltraFeedback-binarized) or as ``completions`` item ends with an
  assistant turn, and everything before that turn is the prompt, which must be identical on
  both sides (a ``prompt`` column beside such conversations is then not used);
* HH-RLHF transcripts contain ``"\\n\\nAssistant:"``; the prompt is everything up to and
  including its last occurrence and must be the same in ``chosen`` and ``rejected``;
* SFT ``messages`` start with a system or user turn and end with an assistant turn;
* a ranking has at least 2 responses, the same number in every row;
* a label is a bool or the integer 0 or 1 (strings such as ``"yes"`` and floats are rejected);
* a margin or score is a finite int or float;
* stepwise rows have a non-empty list of non-empty step strings and one boolean label per step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from irl_jax.data.formats import (
    ROLES,
    Conversation,
    DataError,
    Example,
    Format,
    Record,
    Text,
    check_kind,
    describe,
)
from irl_jax.data.loading import RawRows

HH_ASSISTANT = "\n\nAssistant:"


class _RowError(Exception):
    """One violation in the current row: ``field`` (canonical) plus a ``path`` inside it."""

    def __init__(self, field: str, expected: str, got: str, path: str = ""):
        super().__init__(field)
        self.field, self.expected, self.got, self.path = field, expected, got, path


def _string(value: Any, field: str, path: str = "") -> str:
    if not isinstance(value, str) or not value.strip():
        raise _RowError(field, "a non-empty string", describe(value), path)
    return value


def _conversation(value: Any, field: str) -> Conversation:
    if not isinstance(value, list | tuple) or not value:
        raise _RowError(field, "a non-empty list of messages", describe(value))
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise _RowError(
                field, "a message dict with 'role' and 'content'", describe(message), f"[{i}]"
            )
        message = {key: item for key, item in message.items() if item is not None}
        if message.get("role") not in ROLES:
            expected = f"a role in {list(ROLES)}"
            raise _RowError(field, expected, describe(message.get("role")), f"[{i}].role")
        _string(message.get("content"), field, f"[{i}].content")
        messages.append(message)
    return messages


def _text(value: Any, field: str) -> Text:
    """A string or a conversation."""
    if isinstance(value, list | tuple):
        return _conversation(value, field)
    if not isinstance(value, str) or not value.strip():
        raise _RowError(field, "a non-empty string or a list of messages", describe(value))
    return value


def _ends_with_assistant(messages: Conversation, field: str) -> None:
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise _RowError(
            field,
            "'assistant' (the conversation must end with an assistant turn)",
            describe(messages[last]["role"]),
            f"[{last}].role",
        )


def _split_last_turn(messages: Conversation, field: str) -> Example:
    """A full conversation -> (everything before the last assistant turn, that turn)."""
    _ends_with_assistant(messages, field)
    if len(messages) < 2:
        raise _RowError(field, "a user turn before the final assistant turn", "1 message")
    return Example(messages[:-1], messages[-1:])


def _example(prompt: Any, response: Any, prompt_field: str, response_field: str) -> Example:
    """A prompt–response example from string or conversation values (``prompt`` may be absent
    (``...``) when ``response`` is a full conversation)."""
    response = _text(response, response_field)
    if isinstance(response, list) and response[0]["role"] != "assistant":
        return _split_last_turn(response, response_field)
    if prompt is ...:
        first = "a conversation starting with 'assistant'"
        got = first if isinstance(response, list) else describe(response)
        raise _RowError(response_field, "a full conversation (a user turn first)", got)
    prompt = _text(prompt, prompt_field)
    if isinstance(response, str):
        if isinstance(prompt, str):
            return Example(prompt, response)
        return Example(prompt, [{"role": "assistant", "content": response}])
    _ends_with_assistant(response, response_field)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return Example(prompt, response)


def _split_hh(chosen: Any, rejected: Any) -> tuple[Example, Example]:
    examples = []
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        text = _string(value, field)
        cut = text.rfind(HH_ASSISTANT)
        if cut < 0:
            raise _RowError(field, f"an HH-RLHF transcript containing {HH_ASSISTANT!r}", "none")
        cut += len(HH_ASSISTANT)
        if not text[cut:].strip():
            expected = f"a non-empty response after the last {HH_ASSISTANT!r}"
            raise _RowError(field, expected, describe(text[cut:]))
        examples.append(Example(text[:cut], text[cut:]))
    if examples[0].prompt != examples[1].prompt:
        at = next(
            (i for i, (a, b) in enumerate(zip(examples[0].prompt, examples[1].prompt)) if a != b),
            min(len(examples[0].prompt), len(examples[1].prompt)),
        )
        raise _RowError(
            "rejected",
            f"the same prompt as 'chosen' (up to the last {HH_ASSISTANT!r})",
            f"a different prompt (first difference at character {at})",
        )
    return examples[0], examples[1]


def _same_prompt(examples: list[Example], fields: list[str]) -> None:
    for example, field in zip(examples[1:], fields[1:]):
        if example.prompt != examples[0].prompt:
            raise _RowError(
                field, f"the same prompt (turns before the last) as {fields[0]!r}", "another"
            )


def _number(value: Any, field: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if not ok or not math.isfinite(float(value)):
        raise _RowError(field, "a finite number", describe(value))
    return float(value)


def _label(value: Any, field: str, path: str = "") -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise _RowError(field, "a boolean (true/false or 0/1)", describe(value), path)


def _margin(values: Mapping[str, Any], margin_from_scores: bool) -> float:
    if margin_from_scores:
        scores = [_number(values.get(f), f) for f in ("chosen_score", "rejected_score")]
        return scores[0] - scores[1]
    return _number(values["margin"], "margin") if "margin" in values else 0.0


def _pair(values: Mapping[str, Any], fmt: str, margin_from_scores: bool) -> Record:
    chosen, rejected = values["chosen"], values["rejected"]
    if fmt == "cross_prompt_preference":
        examples = [
            _example(values["chosen_prompt"], chosen, "chosen_prompt", "chosen"),
            _example(values["rejected_prompt"], rejected, "rejected_prompt", "rejected"),
        ]
    elif fmt == "implicit_preference" and isinstance(chosen, str):
        examples = list(_split_hh(chosen, rejected))
    else:
        prompt = values.get("prompt", ...)
        examples = [
            _example(prompt, chosen, "prompt", "chosen"),
            _example(prompt, rejected, "prompt", "rejected"),
        ]
        _same_prompt(examples, ["chosen", "rejected"])
    return Record(0, tuple(examples), margin=_margin(values, margin_from_scores))


def _ranking(values: Mapping[str, Any]) -> Record:
    responses = values["responses"]
    if not isinstance(responses, list | tuple) or len(responses) < 2:
        raise _RowError("responses", "a list of at least 2 responses", describe(responses))
    fields = [f"responses[{i}]" for i in range(len(responses))]
    examples = [
        _example(values["prompt"], response, "prompt", field)
        for response, field in zip(responses, fields)
    ]
    _same_prompt(examples, fields)
    return Record(0, tuple(examples))


def _stepwise(values: Mapping[str, Any]) -> Record:
    prompt = _string(values["prompt"], "prompt")
    steps, labels = values["steps"], values["step_labels"]
    if not isinstance(steps, list | tuple) or not steps:
        raise _RowError("steps", "a non-empty list of step strings", describe(steps))
    steps = tuple(_string(step, "steps", f"[{i}]") for i, step in enumerate(steps))
    if not isinstance(labels, list | tuple) or len(labels) != len(steps):
        got = f"{len(labels)} labels" if isinstance(labels, list | tuple) else describe(labels)
        raise _RowError("step_labels", f"a list of {len(steps)} booleans (one per step)", got)
    labels = tuple(_label(label, "step_labels", f"[{i}]") for i, label in enumerate(labels))
    return Record(0, (Example(prompt, steps=steps),), step_labels=labels)


def _messages(values: Mapping[str, Any], kind: str) -> Record:
    messages = _conversation(values["messages"], "messages")
    if kind == "prompt":
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise _RowError("messages", "a turn before the final assistant turn", "none")
        return Record(0, (Example(messages),))
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise _RowError("messages", "a conversation with an assistant turn", "none")
    if first == 0:
        raise _RowError("messages", "a system or user turn first", "'assistant'", "[0].role")
    _ends_with_assistant(messages, "messages")
    return Record(0, (Example(messages[:first], messages[first:]),))


def _build(values: Mapping[str, Any], fmt: str, kind: str, margin_from_scores: bool) -> Record:
    """The record of one row in its format's native shape (before narrowing to ``kind``)."""
    if fmt in ("preference", "implicit_preference", "cross_prompt_preference"):
        return _pair(values, fmt, margin_from_scores and kind == "preference")
    if fmt == "ranking":
        return _ranking(values)
    if fmt == "stepwise":
        return _stepwise(values)
    if fmt == "messages":
        return _messages(values, kind)
    if fmt == "text":
        return Record(0, (Example("", _string(values["text"], "text")),))
    if fmt == "prompt_only":
        return Record(0, (Example(_text(values["prompt"], "prompt")),))
    example = _example(values["prompt"], values["response"], "prompt", "response")
    if fmt == "unpaired":
        return Record(0, (example,), label=_label(values["label"], "label"))
    return Record(0, (example,))


def _message(raw: RawRows, fmt: Format, row: int, error: _RowError) -> str:
    base = error.field.split("[")[0]
    column = fmt.fields.get(base, base)
    where = f"'{column}{error.field[len(base) :]}{error.path}'"
    if column in raw.original:
        where += f" (column {raw.original[column]!r} in the source)"
    return f"{raw.source} row {row}, field {where}: expected {error.expected}, got {error.got}"


def validate_rows(
    raw: RawRows,
    fmt: Format,
    kind: str,
    *,
    margin_from_scores: bool = False,
    max_errors: int = 5,
) -> list[Record]:
    """Checks every row of ``raw`` (format ``fmt``) and normalizes it for ``kind``.

    Args:
      raw: rows from ``load_rows``.
      fmt: their format (``detect_format``).
      kind: what they will be tokenized as (``irl_jax.data.formats.KINDS``).
      margin_from_scores: preference margin = ``chosen_score - rejected_score`` (needs both
        score columns; not together with a ``margin`` column).
      max_errors: how many row errors the ``DataError`` lists (all rows are checked).

    Returns:
      One ``Record`` per row, in order.

    Raises:
      DataError: naming the source, row, field, expected and found value of the first errors.
    """
    check_kind(fmt, kind, raw.source)
    if margin_from_scores and kind == "preference":
        needed = {"chosen_score", "rejected_score"} - set(fmt.fields)
        if needed or "margin" in fmt.fields:
            raise DataError(
                f"{raw.source}: margin_from_scores needs the columns chosen_score and "
                f"rejected_score and no margin column; found {sorted(raw.columns)}",
                source=raw.source,
            )
    records, errors, first = [], [], None
    width = None
    for i, row in enumerate(raw.rows):
        values = {field: row.get(column) for field, column in fmt.fields.items()}
        try:
            record = _build(values, fmt.name, kind, margin_from_scores)
            if kind == "ranking":
                width = width or len(record.examples)
                if len(record.examples) != width:
                    raise _RowError(
                        "responses",
                        f"{width} responses like row 0 (rankings need equal lengths)",
                        f"{len(record.examples)}",
                    )
            elif kind == "prompt":
                record = Record(0, (Example(record.examples[0].prompt),))
        except _RowError as error:
            first = first or (i, error)
            errors.append(_message(raw, fmt, i, error))
            continue
        records.append(dataclasses.replace(record, row=i))
    if errors:
        shown = errors[:max_errors]
        more = len(errors) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more invalid rows" if more else "")
        row, error = first
        raise DataError(text, source=raw.source, row=row, field=error.field)
    return records
