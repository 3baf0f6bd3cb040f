"""A corpus of malformed rows: each is rejected before tokenizing with a ``DataError`` naming the
file, row and field, raised from irl_jax.data (never a traceback from datasets/numpy/JAX)."""

import json
import os

import pytest
from test_data_formats import TOK, assistant, user

from irl_jax.data import DataError, load_and_tokenize

HH = "\n\nHuman: hi\n\nAssistant:"
SFT = {"prompt": "hi", "completion": "hello"}
PAIR = {"prompt": "hi", "chosen": "hello", "rejected": "bye"}
CHAT = [user("hi"), assistant("hello")]
UF = {"prompt": "hi", "chosen": CHAT, "rejected": [user("hi"), assistant("bye")]}
RANK = {"prompt": "hi", "completions": ["hello", "bye", "ok"]}
KTO = {"prompt": "hi", "completion": "hello", "label": True}
STEPS = {"prompt": "hi", "completions": ["one", "two"], "labels": [True, False]}
SYSTEM = {"role": "system", "content": "be nice"}


def case(name, kind, rows, row, field, fragment, **options):
    return pytest.param(kind, rows, row, field, fragment, options, id=name)


CORPUS = [
    case("prompt-null", "sft", [SFT, {**SFT, "prompt": None}], 1, "prompt", "got None"),
    case("prompt-empty", "sft", [SFT, SFT, {**SFT, "prompt": ""}], 2, "prompt", "got ''"),
    case("prompt-blank", "sft", [SFT, {**SFT, "prompt": "  \n"}], 1, "prompt", "non-empty"),
    case("response-int", "sft", [SFT, {**SFT, "completion": 5}], 1, "completion", "got int 5"),
    case("response-missing", "sft", [SFT, {"prompt": "hi"}], 1, "completion", "got None"),
    case("response-int-list", "sft", [SFT, {**SFT, "completion": [1]}], 1, "completion[0]", "dict"),
    case("text-null", "sft", [{"text": "hi"}, {"text": None}], 1, "text", "got None"),
    case("text-dict", "sft", [{"text": "hi"}, {"text": {"a": "b"}}], 1, "text", "got dict"),
    case("messages-str", "sft", [{"messages": CHAT}, {"messages": "hi"}], 1, "messages", "list"),
    case(
        "messages-empty",
        "sft",
        [{"messages": CHAT}, {"messages": []}],
        1,
        "messages",
        "got list []",
    ),
    case(
        "message-str", "sft", [{"messages": CHAT}, {"messages": ["hi"]}], 1, "messages[0]", "dict"
    ),
    case(
        "role-unknown",
        "sft",
        [{"messages": CHAT}, {"messages": [user("hi"), {"role": "bot", "content": "x"}]}],
        1,
        "messages[1].role",
        "got 'bot'",
    ),
    case(
        "role-missing",
        "sft",
        [{"messages": CHAT}, {"messages": [{"content": "hi"}, assistant("x")]}],
        1,
        "messages[0].role",
        "a role in",
    ),
    case(
        "content-missing",
        "sft",
        [{"messages": CHAT}, {"messages": [user("hi"), {"role": "assistant"}]}],
        1,
        "messages[1].content",
        "got None",
    ),
    case(
        "content-int",
        "sft",
        [{"messages": CHAT}, {"messages": [user("hi"), {"role": "assistant", "content": 7}]}],
        1,
        "messages[1].content",
        "got int 7",
    ),
    case(
        "no-assistant",
        "sft",
        [{"messages": CHAT}, {"messages": [SYSTEM, user("hi")]}],
        1,
        "messages",
        "an assistant turn",
    ),
    case(
        "assistant-first",
        "sft",
        [{"messages": CHAT}, {"messages": [assistant("hello"), user("hi"), assistant("x")]}],
        1,
        "messages[0].role",
        "system or user turn first",
    ),
    case(
        "ends-with-user",
        "sft",
        [{"messages": CHAT}, {"messages": [*CHAT, user("bye")]}],
        1,
        "messages[2].role",
        "must end with an assistant turn",
    ),
    case("chosen-null", "preference", [PAIR, {**PAIR, "chosen": None}], 1, "chosen", "None"),
    case("rejected-empty", "preference", [PAIR, {**PAIR, "rejected": ""}], 1, "rejected", "''"),
    case(
        "margin-str",
        "preference",
        [{**PAIR, "margin": 1}, {**PAIR, "margin": "big"}],
        1,
        "margin",
        "a finite number, got 'big'",
    ),
    case(
        "margin-bool",
        "preference",
        [{**PAIR, "margin": 1}, {**PAIR, "margin": True}],
        1,
        "margin",
        "got bool True",
    ),
    case(
        "margin-nan",
        "preference",
        [{**PAIR, "margin": 1.0}, {**PAIR, "margin": float("nan")}],
        1,
        "margin",
        "finite",
        memory=True,
    ),
    case(
        "score-str",
        "preference",
        [
            {**UF, "score_chosen": 1.0, "score_rejected": 0},
            {**UF, "score_chosen": "high", "score_rejected": 0},
        ],
        1,
        "score_chosen",
        "finite number",
        margin_from_scores=True,
    ),
    case(
        "uf-ends-with-user",
        "preference",
        [UF, {**UF, "chosen": [user("hi"), user("hello")]}],
        1,
        "chosen[1].role",
        "end with an assistant turn",
    ),
    case(
        "uf-prompts-differ",
        "preference",
        [UF, {**UF, "rejected": [user("bye"), assistant("bye")]}],
        1,
        "rejected",
        "the same prompt",
    ),
    case(
        "implicit-assistant-only",
        "preference",
        [{"chosen": CHAT, "rejected": CHAT}, {"chosen": [assistant("x")], "rejected": CHAT}],
        1,
        "chosen",
        "a full conversation",
    ),
    case(
        "conversational-bad-role",
        "preference",
        [{"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}] * 2
        + [{"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [{"role": "x"}]}],
        2,
        "rejected[0].role",
        "got 'x'",
    ),
    case(
        "hh-no-assistant-tag",
        "preference",
        [{"chosen": HH + " a", "rejected": HH + " b"}, {"chosen": "\n\nHuman: hi", "rejected": HH}],
        1,
        "chosen",
        "containing '\\n\\nAssistant:'",
    ),
    case(
        "hh-prompts-differ",
        "preference",
        [
            {"chosen": HH + " a", "rejected": HH + " b"},
            {"chosen": HH + " a", "rejected": "\n\nHuman: yo\n\nAssistant: b"},
        ],
        1,
        "rejected",
        "first difference at character 9",
    ),
    case(
        "hh-empty-response",
        "preference",
        [{"chosen": HH + " a", "rejected": HH + " b"}, {"chosen": HH + " a", "rejected": HH}],
        1,
        "rejected",
        "a non-empty response after the last",
    ),
    case(
        "hh-mixed-types",
        "preference",
        [{"chosen": HH + " a", "rejected": HH + " b"}, {"chosen": HH + " a", "rejected": CHAT}],
        1,
        "rejected",
        "expected a non-empty string, got list",
    ),
    case(
        "cross-prompt-null",
        "preference",
        [{"chosen_prompt": "a", "chosen": "b", "rejected_prompt": "c", "rejected": "d"}] * 3
        + [{"chosen_prompt": None, "chosen": "b", "rejected_prompt": "c", "rejected": "d"}],
        3,
        "chosen_prompt",
        "got None",
    ),
    case(
        "ranking-one",
        "ranking",
        [RANK, {"prompt": "hi", "completions": ["a"]}],
        1,
        "completions",
        "at least 2",
    ),
    case(
        "ranking-unequal",
        "ranking",
        [RANK, {"prompt": "hi", "completions": ["a", "b"]}],
        1,
        "completions",
        "3 responses like row 0",
    ),
    case(
        "ranking-null-item",
        "ranking",
        [RANK, {"prompt": "hi", "completions": ["a", None, "c"]}],
        1,
        "completions[1]",
        "got None",
    ),
    case(
        "ranking-str",
        "ranking",
        [RANK, {"prompt": "hi", "completions": "abc"}],
        1,
        "completions",
        "a list of at least 2",
    ),
    case("label-yes", "unpaired", [KTO, {**KTO, "label": "yes"}], 1, "label", "got 'yes'"),
    case("label-two", "unpaired", [KTO, {**KTO, "label": 2}], 1, "label", "got int 2"),
    case("label-null", "unpaired", [KTO, {**KTO, "label": None}], 1, "label", "a boolean"),
    case("label-float", "unpaired", [KTO, {**KTO, "label": 1.0}], 1, "label", "got float 1.0"),
    case(
        "steps-labels-length",
        "stepwise",
        [STEPS, {**STEPS, "labels": [True]}],
        1,
        "labels",
        "a list of 2 booleans (one per step), got 1 labels",
    ),
    case(
        "step-empty",
        "stepwise",
        [STEPS, {**STEPS, "completions": ["one", ""]}],
        1,
        "completions[1]",
        "non-empty string",
    ),
    case(
        "step-label-str",
        "stepwise",
        [STEPS, {**STEPS, "labels": ["yes", True]}],
        1,
        "labels[0]",
        "a boolean",
    ),
    case(
        "steps-empty",
        "stepwise",
        [STEPS, {**STEPS, "completions": [], "labels": []}],
        1,
        "completions",
        "a non-empty list of step strings",
    ),
    case(
        "step-labels-null",
        "stepwise",
        [STEPS, {**STEPS, "labels": None}],
        1,
        "labels",
        "one per step",
    ),
    case("prompt-only-int", "prompt", [{"prompt": "hi"}, {"prompt": 3}], 1, "prompt", "int 3"),
    case(
        "prompt-kind-assistant-only",
        "prompt",
        [{"messages": CHAT}, {"messages": [assistant("hi")]}],
        1,
        "messages",
        "a turn before the final assistant turn",
    ),
]


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize("kind, rows, row, field, fragment, options", CORPUS)
def test_malformed_rows_name_file_row_and_field(
    tmp_path, kind, rows, row, field, fragment, options
):
    assert len(CORPUS) >= 30
    source = rows
    if not options.pop("memory", False):
        source = str(tmp_path / "train.jsonl")
        _write_jsonl(source, rows)
    with pytest.raises(DataError) as info:
        load_and_tokenize(source, TOK, kind, max_length=16, **options)
    message = str(info.value)
    first_line = message.splitlines()[0]
    name = "train.jsonl" if isinstance(source, str) else "<in-memory dataset>"
    assert f"{name} row {row}, field '{field}': expected " in first_line, message
    assert fragment in first_line, message
    assert info.value.row == row
    assert info.value.__cause__ is None
    assert os.path.join("irl_jax", "data") in str(info.traceback[-1].path)


def test_every_row_is_checked_and_the_first_errors_listed():
    rows = [SFT] + [{**SFT, "completion": None}] * 7 + [{**SFT, "prompt": 1}]
    with pytest.raises(DataError) as info:
        load_and_tokenize(rows, TOK, "sft", max_length=8, max_errors=3)
    lines = str(info.value).splitlines()
    assert lines[:3] == [
        f"<in-memory dataset> row {i}, field 'completion': expected a non-empty string or a "
        "list of messages, got None"
        for i in (1, 2, 3)
    ]
    assert lines[3] == "... and 5 more invalid rows"
    assert info.value.row == 1


def test_renamed_columns_are_named_as_in_the_source(tmp_path):
    path = str(tmp_path / "qa.jsonl")
    _write_jsonl(path, [{"question": "hi", "answer": "hello"}, {"question": "hi", "answer": 4}])
    with pytest.raises(DataError) as info:
        load_and_tokenize(
            path, TOK, "sft", 8, column_map={"question": "prompt", "answer": "completion"}
        )
    assert "qa.jsonl row 1, field 'completion' (column 'answer' in the source): expected" in str(
        info.value
    )


def test_formats_that_do_not_fit_the_kind_are_rejected():
    with pytest.raises(DataError, match="format 'unpaired' .* cannot be used for kind 'sft'"):
        load_and_tokenize([KTO], TOK, "sft", max_length=8)
    with pytest.raises(DataError, match="margin_from_scores needs the columns"):
        load_and_tokenize([PAIR], TOK, "preference", max_length=8, margin_from_scores=True)
