"""Tokenization rules: separate prompt/response tokenization, masks from lengths, truncation and
drop counts, chat-template turn masking, buckets (irl_jax.data.tokenize)."""

import logging

import numpy as np
import pytest
from test_data_formats import TOK, VOCAB, assistant, padded, t, user, word_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from irl_jax.data import DataError, load_and_tokenize


def bpe_tokenizer():
    """A BPE trained in a moment on text where "abc" becomes one token."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=40, special_tokens=["<pad>", "<unk>", "</s>"])
    tokenizer.train_from_iterator(["abc abc abc abc ab ab x y c"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>")


def test_bpe_merge_across_the_boundary_does_not_shift_the_mask():
    tok = bpe_tokenizer()
    prompt, response = "x ab", "c y"
    joint = tok(prompt + response, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(joint) == ["x", "abc", "y"]  # the merge straddles
    arrays, _ = load_and_tokenize([{"prompt": prompt, "completion": response}], tok, "sft", 8)
    ids, loss = arrays["input_ids"][0], arrays["loss_mask"][0]
    assert tok.convert_ids_to_tokens(ids[:5].tolist()) == ["x", "ab", "c", "y", "</s>"]
    np.testing.assert_array_equal(loss, [0, 0, 1, 1, 1, 0, 0, 0])
    assert tok.decode(ids[loss == 1][:-1]) == "c y"


def test_pad_equal_to_eos_masks_come_from_lengths():
    tok = word_tokenizer(bos=False, pad_is_eos=True)
    eos = VOCAB["</s>"]
    assert tok.pad_token_id == tok.eos_token_id == eos
    arrays, _ = load_and_tokenize([{"prompt": "hi", "completion": "hello"}], tok, "sft", 6)
    np.testing.assert_array_equal(arrays["input_ids"], [t("hi hello") + [eos] * 4])
    np.testing.assert_array_equal(arrays["attention_mask"], [[1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["loss_mask"], [[0, 1, 1, 0, 0, 0]])
    text, _ = load_and_tokenize([{"text": "hello hi"}], tok, "sft", 4)
    np.testing.assert_array_equal(text["loss_mask"], [[0, 1, 1, 0]])  # nothing predicts token 0


def test_truncation_keeps_the_prompt_end_and_cuts_the_response_right():
    rows = [
        {"prompt": "hi hi", "completion": "hello bye"},  # fits: 3 + 3
        {"prompt": "what is two plus two", "completion": "four"},  # prompt 6 -> last 4
        {"prompt": "hi", "completion": "one two three four five one two"},  # response 8 -> 6
        {"prompt": "what is two plus two", "completion": "one two three four five"},  # both
    ]
    arrays, stats = load_and_tokenize(rows, TOK, "sft", max_length=8, max_prompt_length=4)
    assert (stats.rows_in, stats.rows_kept, stats.rows_dropped) == (4, 4, 0)
    assert (stats.prompts_truncated, stats.responses_truncated) == (2, 2)
    expected = [
        padded(t("<s> hi hi hello bye </s>"), 8),
        padded(t("is two plus two four </s>"), 8),
        t("<s> hi one two three four five one"),  # no eos: the response was cut
        t("is two plus two one two three four"),
    ]
    np.testing.assert_array_equal(arrays["input_ids"], expected)
    np.testing.assert_array_equal(
        arrays["loss_mask"],
        [
            [0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
    )
    np.testing.assert_array_equal(arrays["attention_mask"].sum(1), [6, 6, 8, 8])


def test_rows_whose_response_is_cut_to_nothing_are_dropped_and_counted(caplog):
    long_prompt = "what is two plus two plus two plus two"  # 10 tokens with <s>
    rows = [
        {"prompt": "hi", "chosen": "hello", "rejected": "bye"},
        {"prompt": long_prompt, "chosen": "four", "rejected": "five"},  # no room: dropped
        {"prompt": "what is two", "chosen": "four", "rejected": "one two three four"},
        {"prompt": "two plus two plus two plus", "chosen": "one", "rejected": "five"},  # 7 + 1
    ]
    with caplog.at_level(logging.INFO):
        arrays, stats = load_and_tokenize(rows, TOK, "preference", max_length=8)
    assert (stats.rows_in, stats.rows_kept, stats.rows_dropped) == (4, 3, 1)
    # Row 2: the rejected side is cut (a row counts once); row 3: the eos of both is cut.
    assert (stats.prompts_truncated, stats.responses_truncated) == (0, 2)
    assert arrays["chosen_input_ids"].shape == (3, 8)
    np.testing.assert_array_equal(
        arrays["chosen_input_ids"][2], t("<s> two plus two plus two plus one")
    )
    assert "dropped 1 of 4 rows" in caplog.text
    assert "4 rows in, 3 kept, 0 prompts truncated on the left, 2 responses cut" in caplog.text


def test_prompt_kind_truncates_from_the_left_and_counts():
    rows = [{"prompt": "what is two plus two"}, {"prompt": "hi"}]
    arrays, stats = load_and_tokenize(rows, TOK, "prompt", max_length=8, max_prompt_length=3)
    np.testing.assert_array_equal(arrays["prompt_ids"], [t("two plus two"), t("<pad> <s> hi")])
    assert (stats.rows_kept, stats.prompts_truncated, stats.rows_dropped) == (2, 1, 0)


def test_stepwise_truncation_keeps_surviving_step_boundaries_only():
    rows = [
        {"prompt": "hi", "completions": ["one two", "three four"], "labels": [True, True]},
        {"prompt": "what is two plus two", "completions": ["one two three"], "labels": [True]},
    ]
    arrays, stats = load_and_tokenize(rows, TOK, "stepwise", max_length=5, step_separator=" .")
    # Row 0: <s> hi one two . | three four . </s> -> only step 0's boundary survives.
    np.testing.assert_array_equal(arrays["input_ids"], [t("<s> hi one two .")])
    np.testing.assert_array_equal(arrays["step_mask"], [[0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(arrays["step_labels"], [[0, 0, 0, 0, 1]])
    assert (stats.rows_kept, stats.rows_dropped, stats.responses_truncated) == (1, 1, 1)


def test_turn_by_turn_chat_tokens_equal_tokenizing_the_whole_rendering():
    messages = [user("hi"), assistant("hello"), user("bye"), assistant("goodbye")]
    arrays, _ = load_and_tokenize([{"messages": messages}], TOK, "sft", max_length=12)
    whole = TOK(TOK.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    n = int(arrays["attention_mask"].sum())
    assert arrays["input_ids"][0, :n].tolist() == whole["input_ids"]


def test_template_that_rewrites_earlier_turns_is_rejected():
    tok = word_tokenizer()
    tok.chat_template = "{{ messages | length }} " + tok.chat_template
    with pytest.raises(DataError, match=r"<in-memory dataset> row 0: the chat template rejected"):
        load_and_tokenize([{"messages": [user("hi"), assistant("hello")]}], tok, "sft", 12)


def test_template_errors_and_missing_templates_name_the_row():
    tok = word_tokenizer()
    tok.chat_template = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
        + tok.chat_template
    )
    rows = [
        {"messages": [user("hi"), assistant("hello")]},
        {"messages": [{"role": "system", "content": "be nice"}, user("hi"), assistant("ok")]},
    ]
    with pytest.raises(DataError, match="row 1: the chat template rejected .*no system turns"):
        load_and_tokenize(rows, tok, "sft", 12)
    with pytest.raises(DataError, match="row 0: conversational rows need a tokenizer with a chat"):
        load_and_tokenize(rows, word_tokenizer(chat=False), "sft", 12)


def test_invalid_lengths_and_kinds_are_rejected():
    rows = [{"prompt": "hi", "completion": "hello"}]
    with pytest.raises(ValueError, match="leaves no room for a response"):
        load_and_tokenize(rows, TOK, "sft", max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="unknown kind 'dpo'"):
        load_and_tokenize(rows, TOK, "dpo", max_length=8)
    with pytest.raises(DataError, match="all 1 rows were dropped"):
        load_and_tokenize([{"prompt": "hi hi hi", "completion": "hello"}], TOK, "sft", 4)
    steps = [{"prompt": "hi", "completions": ["one"], "labels": [True]}]
    tok = word_tokenizer()
    tok.unk_token = "<pad>"  # the WordLevel model maps unknown words to <pad>
    with pytest.raises(ValueError, match="tokenizes to the unknown token"):
        load_and_tokenize(steps, tok, "stepwise", 8, step_separator=" zzz")
