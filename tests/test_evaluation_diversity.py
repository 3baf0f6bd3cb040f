"""distinct-n and self-BLEU against hand-computed values."""

import math

import pytest

from irl_jax.evaluation import diversity


def test_distinct_n():
    # Bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3): 3 distinct of 5.
    assert diversity.distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    assert diversity.distinct_n([[1, 2, 3]], 1) == 1.0
    assert diversity.distinct_n([[1]], 2) == 0.0


def test_sentence_bleu_by_hand():
    hyp, ref = [1, 2, 3, 4], [1, 2, 3, 5]
    # Unigrams 3/4; bigrams (2 + 1)/(3 + 1) with add-one smoothing; same length: no penalty.
    expected = math.exp(0.5 * math.log(3 / 4) + 0.5 * math.log(3 / 4))
    assert diversity.sentence_bleu(hyp, [ref], max_n=2) == pytest.approx(expected)
    assert diversity.sentence_bleu(hyp, [hyp], max_n=4) == pytest.approx(1.0)
    # A shorter hypothesis is penalized: exp(1 − 4/2).
    assert diversity.sentence_bleu([1, 2], [[1, 2, 3, 4]], max_n=1) == pytest.approx(math.exp(-1))


def test_self_bleu():
    same = [[[1, 2, 3], [1, 2, 3]]]
    assert diversity.self_bleu(same) == pytest.approx(1.0)
    different = [[[1, 2, 3], [4, 5, 6]], [[7]]]  # the singleton group is skipped
    assert diversity.self_bleu(different) == 0.0
