"""Loading local files, saved datasets and in-memory datasets; unreadable sources raise a
``DataError`` naming the file (irl_jax.data.loading)."""

import json
import os

import datasets
import numpy as np
import pandas as pd
import pytest
from test_data_formats import TOK, assistant, user

from irl_jax.data import DataError, load_and_tokenize, load_rows

PAIRS = [
    {"prompt": "what is two plus two", "chosen": "four", "rejected": "five", "margin": 1.5},
    {"prompt": "hi", "chosen": "hello", "rejected": "bye", "margin": 0.0},
]


def _write(path, rows):
    """Writes ``rows`` in the format named by ``path``'s extension or as a saved dataset."""
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    elif path.endswith(".json"):
        with open(path, "w") as f:
            json.dump(rows, f)
    elif path.endswith(".parquet"):
        pd.DataFrame(rows).to_parquet(path)
    elif path.endswith(".csv"):
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.endswith("dict"):
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(path)
    return path


def _assert_same(arrays, expected):
    assert arrays.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name], err_msg=name)


@pytest.mark.parametrize("name", ["a.json", "a.jsonl", "a.parquet", "a.csv", "saved", "saved_dict"])
def test_every_source_type_gives_the_same_arrays(tmp_path, name):
    expected, _ = load_and_tokenize(PAIRS, TOK, "preference", max_length=9)
    path = _write(tmp_path / name, PAIRS)
    arrays, stats = load_and_tokenize(path, TOK, "preference", max_length=9)
    _assert_same(arrays, expected)
    assert stats.rows_kept == 2
    in_memory, _ = load_and_tokenize(datasets.Dataset.from_list(PAIRS), TOK, "preference", 9)
    _assert_same(in_memory, expected)


@pytest.mark.parametrize("name", ["a.jsonl", "a.parquet", "saved"])
def test_conversations_survive_file_round_trips(tmp_path, name):
    # Parquet/Arrow give every message every key ("name": None here); None keys are dropped.
    rows = [
        {"messages": [user("hi"), assistant("hello")]},
        {"messages": [{"role": "user", "content": "bye", "name": "bob"}, assistant("goodbye")]},
    ]
    expected, _ = load_and_tokenize(rows, TOK, "sft", max_length=8)
    arrays, _ = load_and_tokenize(_write(tmp_path / name, rows), TOK, "sft", max_length=8)
    _assert_same(arrays, expected)


def test_column_map_renames_before_detection(tmp_path):
    path = _write(tmp_path / "qa.csv", [{"question": "hi", "answer": "hello", "id": 3}])
    raw = load_rows(path, {"question": "prompt", "answer": "completion"})
    assert raw.columns == ("prompt", "completion", "id")
    assert raw.rows == [{"prompt": "hi", "completion": "hello", "id": 3}]
    assert raw.original == {"prompt": "question", "completion": "answer"}
    arrays, _ = load_and_tokenize(
        path, TOK, "sft", 5, column_map={"question": "prompt", "answer": "completion"}
    )
    expected, _ = load_and_tokenize([{"prompt": "hi", "completion": "hello"}], TOK, "sft", 5)
    _assert_same(arrays, expected)


def test_synthetic_task_style_datasets_tokenize_for_their_kinds():
    sources = {
        "sft": {"prompt": ["hi"], "completion": ["hello"]},
        "preference": {
            "prompt": ["hi"],
            "chosen": ["hello"],
            "rejected": ["bye"],
            "chosen_score": [1.0],
            "rejected_score": [0.5],
        },
        "ranking": {"prompt": ["hi"], "completions": [["hello", "ok", "bye"]]},
        "unpaired": {"prompt": ["hi"], "completion": ["bye"], "label": [False]},
        "stepwise": {"prompt": ["hi"], "completions": [["one", "two"]], "labels": [[True, False]]},
    }
    shapes = {"sft": (1, 6), "preference": (1, 6), "ranking": (1, 3, 6), "unpaired": (1, 6)}
    for kind, columns in sources.items():
        arrays, _ = load_and_tokenize(datasets.Dataset.from_dict(columns), TOK, kind, 6)
        name = "chosen_input_ids" if kind == "preference" else "input_ids"
        assert arrays[name].shape == shapes.get(kind, (1, 6)), kind
    cross = {
        "chosen_prompt": ["hi"],
        "chosen": ["ok"],
        "rejected_prompt": ["bye"],
        "rejected": ["x"],
    }
    arrays, _ = load_and_tokenize(datasets.Dataset.from_dict(cross), TOK, "preference", 6)
    assert arrays["rejected_input_ids"].shape == (1, 6)
    scored, _ = load_and_tokenize(
        datasets.Dataset.from_dict(sources["preference"]), TOK, "preference", 6,
        margin_from_scores=True,
    )  # fmt: skip
    np.testing.assert_array_equal(scored["margin"], [0.5])


def _bad_source(tmp_path, case):
    """(source, expected message fragment) for one unreadable-source case."""
    if case == "missing":
        return str(tmp_path / "nope.jsonl"), "file or directory not found"
    if case == "extension":
        (tmp_path / "data.txt").write_text("hi")
        return str(tmp_path / "data.txt"), "unsupported file extension '.txt'"
    if case == "empty-file":
        (tmp_path / "data.jsonl").write_text("")
        return str(tmp_path / "data.jsonl"), "the file is empty"
    if case == "broken-json":
        (tmp_path / "data.jsonl").write_text('{"prompt": "hi"}\n{"prompt": \n')
        return str(tmp_path / "data.jsonl"), "row 1 (line 2): invalid JSON (Expecting value"
    if case == "broken-json-array":
        (tmp_path / "data.json").write_text('[{"prompt": "hi"},\n')
        return str(tmp_path / "data.json"), "line 2: invalid JSON"
    if case == "not-utf8":
        (tmp_path / "data.jsonl").write_bytes(b'{"prompt": "\xff\xfe"}\n')
        return str(tmp_path / "data.jsonl"), "UnicodeDecodeError"
    if case == "corrupt-parquet":
        (tmp_path / "data.parquet").write_bytes(b"not parquet at all")
        return str(tmp_path / "data.parquet"), "cannot be read as PARQUET"
    if case == "not-a-saved-dataset":
        (tmp_path / "dir").mkdir()
        return str(tmp_path / "dir"), "cannot be read as a directory saved by datasets"
    if case == "missing-split":
        return _write(tmp_path / "saved_dict", PAIRS), "has no split 'test'"
    if case == "empty-json-array":
        (tmp_path / "data.json").write_text("[]")
        return str(tmp_path / "data.json"), "the file holds no rows"
    if case == "unknown-format":
        return _write(tmp_path / "data.jsonl", [{"question": "q"}]), "unknown format"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "extension",
        "empty-file",
        "broken-json",
        "broken-json-array",
        "not-utf8",
        "corrupt-parquet",
        "not-a-saved-dataset",
        "missing-split",
        "empty-json-array",
        "unknown-format",
    ],
)
def test_unreadable_sources_name_the_file(tmp_path, case):
    source, fragment = _bad_source(tmp_path, case)
    with pytest.raises(DataError) as info:
        load_and_tokenize(source, TOK, "sft", max_length=8, split="test")
    assert str(info.value).startswith(source), str(info.value)
    assert fragment in str(info.value), str(info.value)
    assert info.value.__cause__ is None
    assert os.path.join("irl_jax", "data") in str(info.traceback[-1].path)


@pytest.mark.parametrize(
    "source, column_map, fragment",
    [
        ([], None, "the dataset is empty"),
        ([{"prompt": "hi"}, "hi"], None, "row 1: expected a dict of columns, got str"),
        ([{"prompt": "hi"}], {"question": "prompt"}, "renames column 'question', which is not"),
        ([{"prompt": "a", "completion": "b", "answer": "c"}], {"answer": "completion"},
         "renames 'answer' to 'completion', which already exists"),
        (42, None, "expected a datasets.Dataset, DatasetDict, path or list of row dicts"),
    ],
)  # fmt: skip
def test_bad_in_memory_sources_and_column_maps(source, column_map, fragment):
    with pytest.raises(DataError, match="<in-memory dataset>") as info:
        load_rows(source, column_map)
    assert fragment in str(info.value)
