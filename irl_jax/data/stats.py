"""What a tokenization kept, cut and dropped (``TokenizeStats``), and the check that the
tokenizer fits the text (the rate of its unknown token)."""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging

from irl_jax.data.formats import DataError


@dataclasses.dataclass
class TokenizeStats:
    """Row counts of one tokenization (truncation counts are over kept rows; a row counts once
    even when several of its sequences were cut), and unknown-token counts.

    ``rows_in = rows_kept + rows_dropped + rows_identical``: ``rows_dropped`` lost every target
    token to truncation; ``rows_identical`` are preference pairs / rankings whose sequences are
    not all distinct after truncation. ``text_tokens`` and ``unk_tokens`` count the tokens of
    the rows' texts (before truncation, without the eos appended) and how many of them are the
    tokenizer's unknown token (0 for a tokenizer without one).
    """

    rows_in: int = 0
    rows_kept: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0
    rows_dropped: int = 0
    rows_identical: int = 0
    text_tokens: int = 0
    unk_tokens: int = 0

    @property
    def unk_rate(self) -> float:
        """The fraction of text tokens that are the unknown token."""
        return self.unk_tokens / max(self.text_tokens, 1)


def count_unknown(stats: TokenizeStats, tokenizer: Any, rendered: list, table: dict) -> None:
    """Adds the text tokens of every piece, and the unknown ones among them, to ``stats``.

    Skipped when the unknown token is also eos or bos (GPT-2's ``<|endoftext|>``): such a
    tokenizer (byte-level) never produces it for unknown text, and templates write it.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk in (tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None)):
        return
    unknown = {key: ids.count(unk) for key, ids in table.items()}
    for pieces in rendered:
        for piece in (p for ps, _ in pieces for p in ps):
            stats.text_tokens += len(table[(piece.text, piece.special)])
            stats.unk_tokens += unknown[(piece.text, piece.special)]


def check_unknown(
    stats: TokenizeStats, tokenizer: Any, source: str, max_unk_rate: float | None
) -> None:
    """Raises if more than ``max_unk_rate`` of the text tokens are unknown (logs any)."""
    if not stats.unk_tokens:
        return
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    name = f"{name} ({len(tokenizer)} tokens)"
    summary = (
        f"{stats.unk_rate:.1%} of tokens ({stats.unk_tokens} of {stats.text_tokens}) are "
        f"{tokenizer.unk_token} under tokenizer {name}"
    )
    if max_unk_rate is not None and stats.unk_rate > max_unk_rate:
        raise DataError(
            f"{source}: {summary} (max_unk_rate={max_unk_rate * 100:g}%): the tokenizer does "
            "not fit this text; set config.tokenizer to the model's tokenizer",
            source=source,
        )
    logging.warning("%s: %s", source, summary)


def log_stats(source: str, kind: str, stats: TokenizeStats) -> None:
    logging.info(
        "%s (%s): %d rows in, %d kept, %d prompts truncated on the left, %d responses cut on "
        "the right, %d dropped, %d identical",
        source, kind, stats.rows_in, stats.rows_kept, stats.prompts_truncated,
        stats.responses_truncated, stats.rows_dropped, stats.rows_identical,
    )  # fmt: skip
    if stats.rows_dropped:
        logging.warning(
            "%s: dropped %d of %d rows whose response was truncated to nothing (raise "
            "max_length or lower max_prompt_length)",
            source, stats.rows_dropped, stats.rows_in,
        )  # fmt: skip
    if stats.rows_identical:
        logging.warning(
            "%s: dropped %d of %d %s whose sequences are not all distinct after truncation "
            "(an identical chosen and rejected teaches nothing)",
            source, stats.rows_identical, stats.rows_in,
            "pairs" if kind == "preference" else "rankings",
        )  # fmt: skip
