"""Length buckets keep fixed shapes per bucket (irl_jax.data.buckets)."""

import numpy as np
import pytest
from test_data_formats import TOK, t

from irl_jax.data import bucket_by_length, load_and_tokenize


def test_bucket_by_length_groups_rows_and_trims_padding():
    rows = [
        {"prompt": "hi", "completion": "hello"},
        {"prompt": "what is two plus two", "completion": "four five one"},
        {"prompt": "hi", "completion": "bye"},
    ]
    arrays, _ = load_and_tokenize(rows, TOK, "sft", max_length=12)
    buckets = bucket_by_length(arrays, [4, 8, 12])
    assert sorted(buckets) == [4, 12]
    np.testing.assert_array_equal(buckets[4]["input_ids"], arrays["input_ids"][[0, 2], :4])
    np.testing.assert_array_equal(buckets[12]["loss_mask"], arrays["loss_mask"][[1]])
    prompts, _ = load_and_tokenize(rows, TOK, "prompt", max_length=12)
    short = bucket_by_length(prompts, [2, 12])
    np.testing.assert_array_equal(short[2]["prompt_ids"], [t("<s> hi")] * 2)
    with pytest.raises(ValueError, match="exceeds every bucket"):
        bucket_by_length(arrays, [4])
