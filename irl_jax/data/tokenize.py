"""Validated records -> fixed-shape numpy arrays with masks, plus truncation statistics.

Token layout of one sequence: ``ids = prompt_tokens + response_tokens (+ [eos])``.

* The prompt and the response are tokenized **separately**, so a BPE merge can never straddle
  the boundary and shift the loss mask. A plain-text prompt is tokenized with
  ``add_special_tokens=True`` (a tokenizer that prepends bos does so), a plain-text response
  with ``add_special_tokens=False`` and followed by eos.
* Conversations are rendered with the tokenizer's chat template: the prompt is
  ``apply_chat_template(turns, add_generation_prompt=True)``; each assistant turn is the text
  that rendering one more turn adds (its content plus the template's end-of-turn markup), a
  target; user/system turns between assistant turns are context (not targets). Each piece is
  tokenized with ``add_special_tokens=False`` (the template writes its own bos) and no eos is
  appended: the template's end-of-turn token is the target that teaches the model to stop.
  Rendering turn by turn must reproduce the whole conversation's rendering as a prefix chain,
  else the row is rejected; the token ids equal those of tokenizing the whole rendering except
  where a merge would cross a turn boundary (never, for templates that delimit turns with
  special tokens).
* Stepwise rows: each step is tokenized separately and followed by the tokens of
  ``step_separator``; the last of those tokens is the step boundary (``step_mask``) that carries
  the step's label; then eos.
* ``loss_mask`` is 1 on target tokens (response tokens, eos, assistant turns), 0 on prompt,
  context and padding, and always 0 at position 0, which nothing predicts.

Truncation, per sequence: the prompt keeps its **last** ``max_prompt_length`` tokens (default
``max_length``); the response (with its eos) is then cut **at the right** to fill
``max_length``, so a cut response has no eos. A row with a sequence left without any target
token (stepwise: without any step boundary) is dropped and counted. Prompt-only rows keep the
last ``max_prompt_length or max_length`` prompt tokens and are left-padded.

Silent garbage is refused or counted: text that is mostly the tokenizer's unknown token (a
tokenizer that does not fit the text) is a ``DataError`` above ``max_unk_rate``; a preference
pair or ranking whose sequences are not all distinct after truncation (``chosen == rejected``)
teaches nothing and is dropped and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from irl_jax.data.formats import KINDS, DataError, Example, Record
from irl_jax.data.stats import TokenizeStats, check_unknown, count_unknown, log_stats


@dataclasses.dataclass(frozen=True)
class _Piece:
    text: str
    special: bool  # tokenize with add_special_tokens
    role: str  # "prompt" | "context" | "target" | "step"


@dataclasses.dataclass(frozen=True)
class _Encoded:
    prompt: list[int]
    response: list[int]
    targets: list[int]
    step_ends: list[tuple[int, int]]  # (index into response, step number)


@dataclasses.dataclass(frozen=True)
class _Fitted:
    ids: list[int]
    loss_mask: list[int]
    step_ends: list[tuple[int, int]]  # (position in ids, step number)
    prompt_cut: bool
    response_cut: bool


def _chat(tokenizer: Any, messages: list, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _conversation_pieces(tokenizer: Any, example: Example) -> list[_Piece]:
    """Prompt, then (context, assistant turn) pieces whose texts concatenate to the whole
    conversation's rendering."""
    done = _chat(tokenizer, example.prompt, True)
    pieces = [_Piece(done, False, "prompt")]
    conversation = [*example.prompt, *example.response]
    for i in range(len(example.prompt), len(conversation)):
        if conversation[i]["role"] != "assistant":
            continue
        before = _chat(tokenizer, conversation[:i], True)
        after = _chat(tokenizer, conversation[: i + 1], False)
        if not (before.startswith(done) and after.startswith(before)):
            raise ValueError(
                f"rendering turn by turn is not a prefix of rendering turn {i} "
                f"(the chat template rewrites earlier turns), so turns cannot be masked"
            )
        pieces += [_Piece(before[len(done) :], False, "context")]
        pieces += [_Piece(after[len(before) :], False, "target")]
        done = after
    return pieces


def _pieces(tokenizer: Any, example: Example) -> tuple[list[_Piece], bool]:
    """The pieces of one example and whether an eos follows them."""
    if not isinstance(example.prompt, str):
        if example.response is None:
            return [_Piece(_chat(tokenizer, example.prompt, True), False, "prompt")], False
        return _conversation_pieces(tokenizer, example), False
    pieces = [_Piece(example.prompt, True, "prompt")]
    if example.steps:
        return pieces + [_Piece(step, False, "step") for step in example.steps], True
    if example.response is None:
        return pieces, False
    return pieces + [_Piece(example.response, False, "target")], True


def _encode_texts(tokenizer: Any, pieces: Sequence[_Piece]) -> dict[tuple[str, bool], list[int]]:
    """Token ids of every distinct (text, add_special_tokens), in one batched call per flag."""
    table = {}
    for special in (True, False):
        texts = list(dict.fromkeys(p.text for p in pieces if p.special == special))
        if texts:
            ids = tokenizer(texts, add_special_tokens=special, return_attention_mask=False)
            table.update({(text, special): list(row) for text, row in zip(texts, ids["input_ids"])})
    return table


def _assemble(pieces: list[_Piece], eos: int | None, table: dict, separator: list[int]) -> _Encoded:
    prompt, response, targets, step_ends = [], [], [], []
    for piece in pieces:
        ids = table[(piece.text, piece.special)]
        if piece.role == "prompt":
            prompt += ids
            continue
        if piece.role == "step":
            ids = ids + separator
            if ids:
                step_ends.append((len(response) + len(ids) - 1, len(step_ends)))
        response += ids
        targets += [int(piece.role != "context")] * len(ids)
    if eos is not None:
        response, targets = [*response, eos], [*targets, 1]
    return _Encoded(prompt, response, targets, step_ends)


def _fit(encoded: _Encoded, max_length: int, prompt_budget: int) -> _Fitted:
    """Left-truncates the prompt to ``prompt_budget`` and right-cuts the response to fit."""
    prompt = encoded.prompt[len(encoded.prompt) - min(len(encoded.prompt), prompt_budget) :]
    room = max_length - len(prompt)
    loss_mask = [0] * len(prompt) + encoded.targets[:room]
    if loss_mask:
        loss_mask[0] = 0
    steps = [(len(prompt) + end, k) for end, k in encoded.step_ends if end < room]
    return _Fitted(
        ids=prompt + encoded.response[:room],
        loss_mask=loss_mask,
        step_ends=steps,
        prompt_cut=len(prompt) < len(encoded.prompt),
        response_cut=len(encoded.response) > room,
    )


def _right_pad(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def _sequence_arrays(fitted: list[_Fitted], length: int, pad: int) -> dict[str, np.ndarray]:
    ids, mask = _right_pad([f.ids for f in fitted], length, pad)
    loss_mask, _ = _right_pad([f.loss_mask for f in fitted], length, 0)
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def _stack(
    kind: str, records: list[Record], fitted: list[list[_Fitted]], length: int, pad: int
) -> dict[str, np.ndarray]:
    n = len(records)
    if kind == "prompt":
        return _prompt_arrays([f[0].ids for f in fitted], length, pad)
    if kind == "preference":
        arrays = {}
        for side, name in enumerate(("chosen", "rejected")):
            side_arrays = _sequence_arrays([f[side] for f in fitted], length, pad)
            arrays.update({f"{name}_{key}": value for key, value in side_arrays.items()})
        arrays["margin"] = np.array([r.margin for r in records], np.float32).reshape(n)
        return arrays
    if kind == "ranking":
        k = len(fitted[0]) if fitted else 0
        flat = _sequence_arrays([s for f in fitted for s in f], length, pad)
        return {key: value.reshape(n, k, length) for key, value in flat.items()}
    arrays = _sequence_arrays([f[0] for f in fitted], length, pad)
    if kind == "unpaired":
        arrays["label"] = np.array([r.label for r in records], bool).reshape(n)
    if kind == "stepwise":
        arrays["step_mask"] = np.zeros((n, length), np.int32)
        arrays["step_labels"] = np.zeros((n, length), np.float32)
        for i, (record, (seq,)) in enumerate(zip(records, fitted)):
            for position, k in seq.step_ends:
                arrays["step_mask"][i, position] = 1
                arrays["step_labels"][i, position] = float(record.step_labels[k])
    return arrays


def _prompt_arrays(prompts: list[list[int]], length: int, pad: int) -> dict[str, np.ndarray]:
    """Left-padded ``prompt_ids`` / ``prompt_mask`` ``[N, length]``."""
    ids, mask = _right_pad([row[::-1] for row in prompts], length, pad)
    return {"prompt_ids": ids[:, ::-1].copy(), "prompt_mask": mask[:, ::-1].copy()}


def tokenize_records(
    records: Sequence[Record],
    tokenizer: Any,
    kind: str,
    max_length: int,
    max_prompt_length: int | None = None,
    *,
    source: str = "<data>",
    step_separator: str = "\n",
    max_unk_rate: float | None = 0.01,
    drop_identical: bool = True,
) -> tuple[dict[str, np.ndarray], TokenizeStats]:
    """Tokenizes validated records into fixed-shape arrays (see the module docstring).

    Args:
      records: from ``validate_rows``.
      tokenizer: a ``transformers`` tokenizer (needs eos for every kind but ``"prompt"``, and a
        chat template for conversations; pad defaults to eos).
      kind: ``"sft" | "preference" | "ranking" | "unpaired" | "prompt" | "stepwise"``.
      max_length: T, the padded length of every sequence.
      max_prompt_length: the prompt keeps at most its last this many tokens (``< max_length``);
        for ``kind="prompt"`` it is P, the padded prompt length (default ``max_length``).
      source: named in errors and logs.
      step_separator: text whose tokens close each step (stepwise; TRL's default ``"\\n"``).
      max_unk_rate: the largest fraction of text tokens that may be the tokenizer's unknown
        token (``None``: no limit); more means the tokenizer does not fit the text.
      drop_identical: drop (and count) preference pairs / rankings whose sequences are not all
        distinct after truncation; ``False`` keeps them (candidate sets, where repeats are
        expected).

    Returns:
      ``(arrays, stats)``: numpy arrays with first dimension N = kept rows (int32 ids and masks):
      sft/unpaired/stepwise ``input_ids``, ``attention_mask``, ``loss_mask`` [N, T]
      (+ unpaired ``label`` [N] bool; stepwise ``step_mask`` [N, T] int32, ``step_labels``
      [N, T] float32); preference ``{chosen,rejected}_{input_ids,attention_mask,loss_mask}``
      [N, T] and ``margin`` [N] float32; ranking ``input_ids``, ``attention_mask``,
      ``loss_mask`` [N, K, T]; prompt ``prompt_ids``, ``prompt_mask`` [N, P] left-padded.

    Raises:
      DataError: more unknown tokens than ``max_unk_rate``, or no row left.
    """
    eos, pad = _special_ids(tokenizer, kind, max_length, max_prompt_length)
    rendered = _render(records, tokenizer, source)
    table = _encode_texts(tokenizer, [p for pieces in rendered for ps, _ in pieces for p in ps])
    separator = tokenizer(step_separator, add_special_tokens=False)["input_ids"]
    if kind == "stepwise" and tokenizer.unk_token_id in separator:
        raise ValueError(f"step_separator={step_separator!r} tokenizes to the unknown token")
    budget = max_prompt_length or max_length
    length = budget if kind == "prompt" else max_length
    stats = TokenizeStats(rows_in=len(records))
    count_unknown(stats, tokenizer, rendered, table)
    check_unknown(stats, tokenizer, source, max_unk_rate)
    kept, fitted = [], []
    for record, pieces in zip(records, rendered):
        seqs = [
            _fit(_assemble(ps, eos if add_eos else None, table, separator), length, budget)
            for ps, add_eos in pieces
        ]
        if not all(_useful(kind, seq) for seq in seqs):
            stats.rows_dropped += 1
            continue
        if drop_identical and kind in ("preference", "ranking") and not _distinct(seqs):
            stats.rows_identical += 1
            continue
        stats.prompts_truncated += any(seq.prompt_cut for seq in seqs)
        stats.responses_truncated += any(seq.response_cut for seq in seqs)
        kept.append(record)
        fitted.append(seqs)
    stats.rows_kept = len(kept)
    if not kept:
        why = (
            f"because nothing of their response fits in max_length={max_length} "
            f"(max_prompt_length={max_prompt_length})"
        )
        if stats.rows_identical:
            why = f"({stats.rows_identical} have identical sequences, {stats.rows_dropped} {why})"
        raise DataError(f"{source}: all {stats.rows_in} rows were dropped {why}", source=source)
    log_stats(source, kind, stats)
    return _stack(kind, kept, fitted, length, pad), stats


def _special_ids(
    tokenizer: Any, kind: str, max_length: int, max_prompt_length: int | None
) -> tuple[int | None, int]:
    """Checks the arguments; returns the eos and pad ids (pad defaults to eos)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if max_length < 2 or (max_prompt_length is not None and max_prompt_length < 1):
        raise ValueError(
            f"need max_length >= 2 and max_prompt_length >= 1, got "
            f"{max_length}, {max_prompt_length}"
        )
    if kind != "prompt" and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length={max_prompt_length} leaves no room for a response "
            f"within max_length={max_length}"
        )
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None or (eos is None and kind != "prompt"):
        raise ValueError("the tokenizer needs an eos token (the pad token defaults to it)")
    return eos, pad


def _render(
    records: Sequence[Record], tokenizer: Any, source: str
) -> list[list[tuple[list[_Piece], bool]]]:
    """The pieces of every example of every record; template failures name the row."""
    if getattr(tokenizer, "chat_template", None) is None:
        chat = next((r for r in records if not isinstance(r.examples[0].prompt, str)), None)
        if chat is not None:
            raise DataError(
                f"{source} row {chat.row}: conversational rows need a tokenizer with a chat "
                f"template, and this tokenizer has none",
                source=source,
                row=chat.row,
            )
    rendered = []
    for record in records:
        try:
            rendered.append([_pieces(tokenizer, example) for example in record.examples])
        except Exception as error:  # jinja errors, raise_exception in templates
            raise DataError(
                f"{source} row {record.row}: the chat template rejected the conversation "
                f"({type(error).__name__}: {error})",
                source=source,
                row=record.row,
            ) from None
    return rendered


def _distinct(seqs: list[_Fitted]) -> bool:
    """Whether the sequences of a pair / ranking all differ (ids or target positions)."""
    return len({(tuple(seq.ids), tuple(seq.loss_mask)) for seq in seqs}) == len(seqs)


def _useful(kind: str, seq: _Fitted) -> bool:
    """Whether a fitted sequence still has what its kind trains on."""
    if kind == "prompt":
        return bool(seq.ids)
    if kind == "stepwise":
        return bool(seq.step_ends)
    return any(seq.loss_mask)
