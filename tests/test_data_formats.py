"""Every format parses to a hand-written canonical batch (irl_jax.data.formats / load_and_tokenize).

The tokenizer is word-level with a fixed vocabulary, so expected ids are written by hand from the
vocabulary (``t("<s> what is two")``), never by calling the tokenizer under test.
"""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from irl_jax.data import DataError, detect_format, load_and_tokenize

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = "hello hi bye goodbye be nice what is two plus four five Human Assistant : good bad ok . "
WORDS += "three one"
VOCAB = {w: i for i, w in enumerate([*SPECIALS, *WORDS.split()])}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_tokenizer(bos: bool = True, pad_is_eos: bool = False, chat: bool = True):
    """Whitespace word-level tokenizer over ``VOCAB``; prepends ``<s>`` when ``bos``."""
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SPECIALS)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", VOCAB["<s>"])]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="</s>" if pad_is_eos else "<pad>",
    )
    if chat:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def t(text: str) -> list[int]:
    """Hand tokenization: ids of whitespace-separated vocabulary entries."""
    return [VOCAB[w] for w in text.split()]


def padded(ids: list[int], length: int, value: int = 0) -> list[int]:
    return ids + [value] * (length - len(ids))


def sequence(prompt: str, response: str, length: int, targets: list[int] | None = None):
    """Expected (ids, attention_mask, loss_mask) rows for a hand-split prompt and response."""
    p, r = t(prompt), t(response)
    loss = [0] * len(p) + (targets if targets is not None else [1] * len(r))
    return padded(p + r, length), padded([1] * (len(p) + len(r)), length), padded(loss, length)


def expect_sequences(arrays: dict, expected: list, prefix: str = "") -> None:
    ids, mask, loss = (np.array([row[i] for row in expected], np.int32) for i in range(3))
    np.testing.assert_array_equal(arrays[f"{prefix}input_ids"], ids)
    np.testing.assert_array_equal(arrays[f"{prefix}attention_mask"], mask)
    np.testing.assert_array_equal(arrays[f"{prefix}loss_mask"], loss)
    for name in ("input_ids", "attention_mask", "loss_mask"):
        assert arrays[f"{prefix}{name}"].dtype == np.int32


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


TOK = word_tokenizer()
ALIAS_COLUMNS = {"chosen_score": "score_chosen", "rejected_score": "score_rejected"}


@pytest.mark.parametrize(
    "columns, name",
    [
        (["prompt", "completion"], "prompt_completion"),
        (["prompt", "response"], "prompt_completion"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["prompt", "chosen", "rejected", "chosen_score", "rejected_score"], "preference"),
        (["chosen", "rejected"], "implicit_preference"),
        (["chosen_prompt", "chosen", "rejected_prompt", "rejected"], "cross_prompt_preference"),
        (["prompt", "completions"], "ranking"),
        (["prompt", "completion", "label"], "unpaired"),
        (["prompt", "completions", "labels"], "stepwise"),
        (["messages"], "messages"),
        (["text", "id"], "text"),
        (["prompt"], "prompt_only"),
    ],
)
def test_detect_format(columns, name):
    assert detect_format(columns).name == name


def test_detect_format_maps_source_columns_to_canonical_fields():
    ultrafeedback = ["prompt", "prompt_id", "chosen", "rejected", "messages"]
    fmt = detect_format([*ultrafeedback, "score_chosen", "score_rejected"])
    assert fmt.name == "preference"
    assert dict(fmt.fields) == {
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
        "chosen_score": "score_chosen",
        "rejected_score": "score_rejected",
    }
    assert detect_format(["prompt", "completions", "labels"]).fields == {
        "prompt": "prompt",
        "steps": "completions",
        "step_labels": "labels",
    }
    assert detect_format(ultrafeedback, "messages").fields == {"messages": "messages"}


def test_detect_format_errors_list_the_columns():
    with pytest.raises(DataError, match=r"unknown format: columns \['answer', 'question'\]"):
        detect_format(["question", "answer"])
    with pytest.raises(DataError, match="alternative names of the field 'response'"):
        detect_format(["prompt", "completion", "response"])
    with pytest.raises(DataError, match="format 'messages' needs columns"):
        detect_format(["prompt"], "messages")


def test_sft_prompt_completion():
    rows = [
        {"prompt": "what is two plus two", "completion": "four"},
        {"prompt": "hi", "completion": "hello hi"},
    ]
    arrays, stats = load_and_tokenize(rows, TOK, "sft", max_length=10)
    expect_sequences(
        arrays,
        [
            sequence("<s> what is two plus two", "four </s>", 10),
            sequence("<s> hi", "hello hi </s>", 10),
        ],
    )
    assert (stats.rows_in, stats.rows_kept, stats.rows_dropped) == (2, 2, 0)


def test_sft_plain_text_trains_on_every_token_but_the_first():
    arrays, _ = load_and_tokenize([{"text": "hello hi bye"}], TOK, "sft", max_length=6)
    expect_sequences(arrays, [sequence("", "<s> hello hi bye </s>", 6, [0, 1, 1, 1, 1])])


MULTI_TURN = [
    {"role": "system", "content": "be nice"},
    user("hi"),
    assistant("hello"),
    user("bye"),
    assistant("goodbye"),
]


def test_sft_messages_mask_assistant_turns_only():
    arrays, _ = load_and_tokenize([{"messages": MULTI_TURN}], TOK, "sft", max_length=18)
    prompt = "<|system|> be nice <|end|> <|user|> hi <|end|> <|assistant|>"
    response = "hello <|end|> <|user|> bye <|end|> <|assistant|> goodbye <|end|>"
    targets = [1, 1, 0, 0, 0, 0, 1, 1]  # end-of-turn is a target; no eos is appended
    expect_sequences(arrays, [sequence(prompt, response, 18, targets)])


def test_conversational_prompt_completion_equals_messages():
    rows = [{"prompt": MULTI_TURN[:2], "completion": MULTI_TURN[2:]}]
    arrays, _ = load_and_tokenize(rows, TOK, "sft", max_length=18)
    expected, _ = load_and_tokenize([{"messages": MULTI_TURN}], TOK, "sft", max_length=18)
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name])


def test_preference_standard_with_margin():
    rows = [
        {"prompt": "what is two plus two", "chosen": "four", "rejected": "five", "margin": 2},
        {"prompt": "hi", "chosen": "hello", "rejected": "bye bye", "margin": 0.5},
    ]
    arrays, _ = load_and_tokenize(rows, TOK, "preference", max_length=9)
    expect_sequences(
        arrays,
        [
            sequence("<s> what is two plus two", "four </s>", 9),
            sequence("<s> hi", "hello </s>", 9),
        ],
        "chosen_",
    )
    expect_sequences(
        arrays,
        [
            sequence("<s> what is two plus two", "five </s>", 9),
            sequence("<s> hi", "bye bye </s>", 9),
        ],
        "rejected_",
    )
    np.testing.assert_array_equal(arrays["margin"], np.array([2.0, 0.5], np.float32))
    assert arrays["margin"].dtype == np.float32


def test_hh_rlhf_prompt_is_everything_up_to_the_last_assistant_tag():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is two plus two\n\nAssistant:"
    rows = [{"chosen": prompt + " four", "rejected": prompt + " five"}]
    arrays, _ = load_and_tokenize(rows, TOK, "preference", max_length=20)
    hand = "<s> Human : hi Assistant : hello Human : what is two plus two Assistant :"
    expect_sequences(arrays, [sequence(hand, "four </s>", 20)], "chosen_")
    expect_sequences(arrays, [sequence(hand, "five </s>", 20)], "rejected_")
    np.testing.assert_array_equal(arrays["margin"], [0.0])
    prompts, _ = load_and_tokenize(rows, TOK, "prompt", max_length=20)
    np.testing.assert_array_equal(prompts["prompt_ids"], [[0] * 4 + t(hand)])


ULTRAFEEDBACK = {
    "prompt": "hi",
    "prompt_id": "abc",
    "chosen": [user("hi"), assistant("hello")],
    "rejected": [user("hi"), assistant("bye")],
    "messages": [user("hi"), assistant("hello")],
    "score_chosen": 8.0,
    "score_rejected": 5.5,
}
CHAT_PROMPT = "<|user|> hi <|end|> <|assistant|>"


def test_ultrafeedback_binarized_chat_template_and_score_margin():
    arrays, _ = load_and_tokenize(
        [ULTRAFEEDBACK], TOK, "preference", max_length=8, margin_from_scores=True
    )
    expect_sequences(arrays, [sequence(CHAT_PROMPT, "hello <|end|>", 8)], "chosen_")
    expect_sequences(arrays, [sequence(CHAT_PROMPT, "bye <|end|>", 8)], "rejected_")
    np.testing.assert_array_equal(arrays["margin"], [2.5])
    plain, _ = load_and_tokenize([ULTRAFEEDBACK], TOK, "preference", max_length=8)
    np.testing.assert_array_equal(plain["margin"], [0.0])
    sft, _ = load_and_tokenize([ULTRAFEEDBACK], TOK, "sft", max_length=8, format="messages")
    expect_sequences(sft, [sequence(CHAT_PROMPT, "hello <|end|>", 8)])


def test_trl_conversational_preference_with_explicit_prompt():
    rows = [{"prompt": [user("hi")], "chosen": [assistant("hello")], "rejected": "bye"}]
    arrays, _ = load_and_tokenize(rows, TOK, "preference", max_length=8)
    expect_sequences(arrays, [sequence(CHAT_PROMPT, "hello <|end|>", 8)], "chosen_")
    expect_sequences(arrays, [sequence(CHAT_PROMPT, "bye <|end|>", 8)], "rejected_")


def test_cross_prompt_pairs_use_their_own_prompts():
    rows = [{"chosen_prompt": "hi", "chosen": "hello", "rejected_prompt": "bye", "rejected": "ok"}]
    arrays, _ = load_and_tokenize(rows, TOK, "preference", max_length=5)
    expect_sequences(arrays, [sequence("<s> hi", "hello </s>", 5)], "chosen_")
    expect_sequences(arrays, [sequence("<s> bye", "ok </s>", 5)], "rejected_")


def test_ranking_is_n_k_t_most_preferred_first():
    rows = [{"prompt": "two plus two", "completions": ["four", "five", "three one"]}]
    arrays, _ = load_and_tokenize(rows, TOK, "ranking", max_length=7)
    expected = [
        sequence("<s> two plus two", "four </s>", 7),
        sequence("<s> two plus two", "five </s>", 7),
        sequence("<s> two plus two", "three one </s>", 7),
    ]
    for i, name in enumerate(("input_ids", "attention_mask", "loss_mask")):
        np.testing.assert_array_equal(arrays[name], [[row[i] for row in expected]])
    pairs, _ = load_and_tokenize(
        [{"prompt": "two plus two", "chosen": "four", "rejected": "five"}], TOK, "ranking", 7
    )
    np.testing.assert_array_equal(pairs["input_ids"], arrays["input_ids"][:, :2])


def test_unpaired_labels():
    rows = [
        {"prompt": "hi", "completion": "hello", "label": True},
        {"prompt": "hi", "completion": "bye", "label": 0},
    ]
    arrays, _ = load_and_tokenize(rows, TOK, "unpaired", max_length=5)
    expect_sequences(
        arrays, [sequence("<s> hi", "hello </s>", 5), sequence("<s> hi", "bye </s>", 5)]
    )
    np.testing.assert_array_equal(arrays["label"], [True, False])
    assert arrays["label"].dtype == np.bool_


def test_prompt_only_is_left_padded_and_templated_for_conversations():
    rows = [{"prompt": "what is two plus two"}, {"prompt": "hi"}]
    arrays, _ = load_and_tokenize(rows, TOK, "prompt", max_length=12, max_prompt_length=7)
    np.testing.assert_array_equal(
        arrays["prompt_ids"], [[0] + t("<s> what is two plus two"), [0] * 5 + t("<s> hi")]
    )
    np.testing.assert_array_equal(arrays["prompt_mask"], [[0] + [1] * 6, [0] * 5 + [1] * 2])
    for source in ([ULTRAFEEDBACK], [{"messages": [user("hi"), assistant("hello")]}]):
        chat, _ = load_and_tokenize(source, TOK, "prompt", max_length=6)
        np.testing.assert_array_equal(chat["prompt_ids"], [[0, 0] + t(CHAT_PROMPT)])
        np.testing.assert_array_equal(chat["prompt_mask"], [[0, 0, 1, 1, 1, 1]])


def test_stepwise_labels_sit_on_each_steps_boundary_token():
    rows = [{"prompt": "two plus two", "completions": ["two plus two", "four"], "labels": [1, 0]}]
    arrays, _ = load_and_tokenize(rows, TOK, "stepwise", max_length=12, step_separator=" .")
    expect_sequences(arrays, [sequence("<s> two plus two", "two plus two . four . </s>", 12)])
    np.testing.assert_array_equal(arrays["step_mask"], [[0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0]])
    np.testing.assert_array_equal(arrays["step_labels"], [[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]])
    assert arrays["step_labels"].dtype == np.float32
    # The default separator "\n" has no tokens here: the boundary is each step's last word.
    arrays, _ = load_and_tokenize(rows, TOK, "stepwise", max_length=9)
    np.testing.assert_array_equal(arrays["step_mask"], [[0, 0, 0, 0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(arrays["step_labels"], [[0, 0, 0, 0, 0, 0, 1, 0, 0]])
