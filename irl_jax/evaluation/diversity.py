"""Diversity of sampled responses (token ids): distinct-n and self-BLEU.

* distinct-n (Li et al. 2016): distinct n-grams / all n-grams over a set of responses;
* self-BLEU (Zhu et al. 2018): the mean BLEU of each response against the other responses to
  the same prompt as references — 1 when they all coincide, lower when they differ. BLEU here is
  the sentence BLEU of Papineni et al. 2002 (clipped n-gram precisions up to ``max_n``,
  geometric mean, brevity penalty against the closest reference length) with add-one smoothing
  of the n > 1 precisions (Lin & Och 2004), so short responses without a shared 4-gram do not
  score 0.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence


def ngrams(tokens: Sequence[int], n: int) -> collections.Counter:
    """Counts of the n-grams of ``tokens``."""
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(responses: Sequence[Sequence[int]], n: int = 2) -> float:
    """|distinct n-grams| / |n-grams| over all ``responses`` (0 when there are none)."""
    counts: collections.Counter = collections.Counter()
    for tokens in responses:
        counts.update(ngrams(tokens, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def sentence_bleu(
    hypothesis: Sequence[int], references: Sequence[Sequence[int]], max_n: int = 4
) -> float:
    """BLEU of ``hypothesis`` against ``references`` (see the module docstring)."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = ngrams(hypothesis, n)
        limit: collections.Counter = collections.Counter()
        for reference in references:
            limit |= ngrams(reference, n)
        matched = sum(min(c, limit[g]) for g, c in counts.items())
        total = sum(counts.values())
        if n > 1:  # add-one smoothing
            matched, total = matched + 1, total + 1
        if matched == 0 or total == 0:
            return 0.0
        log_precision += math.log(matched / total) / max_n
    length = len(hypothesis)
    closest = min((abs(len(r) - length), len(r)) for r in references)[1]
    brevity = 1.0 if length > closest else math.exp(1.0 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(groups: Sequence[Sequence[Sequence[int]]], max_n: int = 4) -> float:
    """Mean over groups (the responses to one prompt) and their members of the BLEU of a
    response against the group's other responses."""
    scores = [
        sentence_bleu(group[i], [r for j, r in enumerate(group) if j != i], max_n)
        for group in groups
        if len(group) > 1
        for i in range(len(group))
    ]
    return sum(scores) / len(scores) if scores else 0.0
