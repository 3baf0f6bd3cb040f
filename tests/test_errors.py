"""Clear one-line errors and "silent garbage in" checks: bad ``--config.FIELD`` overrides
(experiments/run.py), corrupt checkpoint files (irl_jax.models.hf), text a tokenizer does not
know, and preference pairs / rankings whose sequences are identical (irl_jax.data)."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_data_formats import TOK, padded, t, word_tokenizer

from irl_jax import sharding, tasks
from irl_jax.data import DataError, load_and_tokenize
from irl_jax.models import Transformer, preset
from irl_jax.models.hf import load_pretrained, save_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- command line


def run_cli(*flags: str) -> subprocess.CompletedProcess:
    """experiments.run with ``--only_check_args``: parses the flags and exits before main."""
    command = [sys.executable, "-m", "experiments.run", *flags, "--only_check_args"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.num_step=5", "unknown config field 'num_step'; did you mean 'num_steps'?"),
        (
            "--config.optimizer.learning_rat=0.1",
            "unknown config field 'optimizer.learning_rat'; did you mean "
            "'optimizer.learning_rate'?",
        ),
        (
            "--config.optimizr.learning_rate=0.1",
            "unknown config field 'optimizr.learning_rate'; did you mean "
            "'optimizer.learning_rate'?",
        ),
        ("--config.optimizer.zzz=1", "unknown config field 'optimizer.zzz'; config.optimizer has:"),
        (  # --flag VALUE, as well as --flag=VALUE
            "--config.optimizer.learning_rate fast",
            "config field 'optimizer.learning_rate' expects float, got 'fast'",
        ),
    ],
)
def test_bad_config_override_is_one_line_naming_the_field(override, message):
    result = run_cli("--config=experiments/configs/sft.py", "--config.seed=1", *override.split())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_valid_overrides_and_missing_config_file():
    result = run_cli("--config=experiments/configs/sft.py", "--config.optimizer.learning_rate=0.1")
    assert result.returncode == 0, result.stderr
    result = run_cli("--config=experiments/configs/nope.py", "--config.num_steps=1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "FATAL Flags parsing error: --config=experiments/configs/nope.py: no such config file"
    ]


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny GPT-2 checkpoint directory (config.json + model.safetensors)."""
    config = preset("gpt2-tiny")
    ids = jnp.zeros((1, 4), jnp.int32)
    params = Transformer(config).init(jax.random.key(0), ids, jnp.ones_like(ids))["params"]
    path = str(tmp_path_factory.mktemp("hf") / "export")
    return save_pretrained(path, config, sharding.unbox(params))


@pytest.fixture
def checkpoint(export, tmp_path):
    """A fresh copy of ``export`` to corrupt."""
    path = tmp_path / "export"
    shutil.copytree(export, path)
    load_pretrained(str(path))  # intact: loads
    return path


def one_line_error(error_type, path, match: str):
    """``pytest.raises`` for a one-line message that starts with ``path``."""
    return pytest.raises(error_type, match=rf"^{re.escape(str(path))}[^\n]*{match}[^\n]*$")


def test_corrupt_config_json_names_the_file(checkpoint):
    file = checkpoint / "config.json"
    text = file.read_text()
    file.write_text(text[: len(text) // 2])
    invalid = r"not valid JSON \(truncated or corrupt\? .*: line \d+, column \d+\)"
    with one_line_error(ValueError, file, invalid):
        load_pretrained(str(checkpoint))
    file.write_bytes(b"\xff\xfe\x00garbage")
    with one_line_error(ValueError, file, "not a UTF-8 text file"):
        load_pretrained(str(checkpoint))
    file.write_text("[1, 2]")
    with one_line_error(ValueError, file, "expected a JSON object, got a list"):
        load_pretrained(str(checkpoint))
    file.write_text(json.dumps({k: v for k, v in json.loads(text).items() if k != "n_embd"}))
    with one_line_error(ValueError, checkpoint, "config.json lacks 'n_embd'.*GPT2LMHeadModel"):
        load_pretrained(str(checkpoint))


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_safetensors_names_the_file(checkpoint, keep):
    file = checkpoint / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep])
    size = len(data[:keep])
    with one_line_error(
        ValueError, file, rf"not a readable safetensors file \(truncated or corrupt\? {size} bytes"
    ):
        load_pretrained(str(checkpoint))


def test_sharded_checkpoint_errors_name_the_file(checkpoint):
    single = checkpoint / "model.safetensors"
    tensors = load_file(str(single))
    names = sorted(tensors)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(checkpoint / shard))
    index = checkpoint / "model.safetensors.index.json"
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    index.write_text(json.dumps({"weight_map": weight_map}))
    single.unlink()
    load_pretrained(str(checkpoint))  # the sharded copy loads

    shard_b = checkpoint / "b.safetensors"
    data = shard_b.read_bytes()
    shard_b.write_bytes(data[: len(data) - 10])
    with one_line_error(ValueError, shard_b, "not a readable safetensors file"):
        load_pretrained(str(checkpoint))
    shard_b.unlink()
    with one_line_error(FileNotFoundError, shard_b, "no such safetensors file"):
        load_pretrained(str(checkpoint))
    first_of_b, *rest_of_b = shards["b.safetensors"]
    save_file({n: tensors[n] for n in rest_of_b}, str(shard_b))
    with one_line_error(ValueError, shard_b, re.escape(f"lacks tensors ['{first_of_b}']")):
        load_pretrained(str(checkpoint))
    index.write_text('{"weight_map": {')
    with one_line_error(ValueError, index, "not valid JSON"):
        load_pretrained(str(checkpoint))
    index.write_text('{"metadata": {}}')
    with one_line_error(ValueError, index, "expected a 'weight_map' object"):
        load_pretrained(str(checkpoint))


# ----------------------------------------------------------------------------- unknown tokens

TASK_TOKENIZER = tasks.build_tokenizer()
# "the movie was" is task vocabulary; of "absolutely wonderful and charming" only "and" is.
ENGLISH = {"prompt": "the movie was", "completion": "absolutely wonderful and charming"}


def test_text_the_tokenizer_does_not_know_is_an_error(tmp_path, caplog):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ENGLISH) + "\n")
    with pytest.raises(DataError) as error:
        load_and_tokenize(str(path), TASK_TOKENIZER, "sft", 16)
    assert str(error.value) == (
        f"{path}: 42.9% of tokens (3 of 7) are <unk> under tokenizer TokenizersBackend "
        "(93 tokens) (max_unk_rate=1%): the tokenizer does not fit this text; set "
        "config.tokenizer to the model's tokenizer"
    )
    assert error.value.source == str(path)
    # A looser limit, or none, lets it through and still reports the rate.
    with caplog.at_level(logging.WARNING):
        _, stats = load_and_tokenize(str(path), TASK_TOKENIZER, "sft", 16, max_unk_rate=0.5)
    assert (stats.unk_tokens, stats.text_tokens) == (3, 7)
    assert stats.unk_rate == pytest.approx(3 / 7)
    assert "42.9% of tokens (3 of 7) are <unk>" in caplog.text
    _, stats = load_and_tokenize(str(path), TASK_TOKENIZER, "sft", 16, max_unk_rate=None)
    assert stats.unk_tokens == 3


def test_in_vocabulary_text_has_no_unknown_tokens():
    demonstrations = tasks.get_task("preference").demonstrations(64, 0)
    _, stats = load_and_tokenize(demonstrations, TASK_TOKENIZER, "sft", 48)
    assert stats.text_tokens > 64 and stats.unk_tokens == 0


def test_unknown_token_that_is_also_eos_is_not_counted():
    # GPT-2's unk_token is its eos; the eos that ends every response (and any eos a chat
    # template writes) is not unknown text.
    tok = word_tokenizer()
    tok.unk_token = "</s>"
    rows = [{"prompt": "hi", "completion": "hello </s>"}]
    arrays, stats = load_and_tokenize(rows, tok, "sft", 8)
    assert (stats.unk_tokens, stats.text_tokens) == (0, 0)
    np.testing.assert_array_equal(arrays["input_ids"], [padded(t("<s> hi hello </s> </s>"), 8)])


# ----------------------------------------------------------------------------- identical pairs


def test_identical_preference_pairs_are_dropped_and_counted(caplog):
    rows = [
        {"prompt": "hi", "chosen": "hello", "rejected": "hello"},  # same text
        {"prompt": "hi", "chosen": "hello bye", "rejected": "bye"},
        {"prompt": "hi", "chosen": "one two three four", "rejected": "one two three five"},
    ]
    with caplog.at_level(logging.WARNING):
        arrays, stats = load_and_tokenize(rows, TOK, "preference", max_length=5)
    # Row 2 differs only beyond max_length: both sides are "<s> hi one two three".
    assert (stats.rows_in, stats.rows_kept, stats.rows_identical) == (3, 1, 2)
    np.testing.assert_array_equal(arrays["chosen_input_ids"], [t("<s> hi hello bye </s>")])
    np.testing.assert_array_equal(arrays["rejected_input_ids"], [padded(t("<s> hi bye </s>"), 5)])
    assert "dropped 2 of 3 pairs whose sequences are not all distinct" in caplog.text
    kept, stats = load_and_tokenize(rows, TOK, "preference", max_length=5, drop_identical=False)
    assert (stats.rows_kept, stats.rows_identical) == (3, 0)
    assert kept["chosen_input_ids"].shape == (3, 5)
    with pytest.raises(DataError, match=r"all 1 rows were dropped \(1 have identical sequences"):
        load_and_tokenize(rows[:1], TOK, "preference", max_length=5)


def test_cross_prompt_pair_with_equal_ids_but_different_targets_is_kept():
    row = {"chosen_prompt": "hi hello", "chosen": "bye"}
    row.update(rejected_prompt="hi", rejected="hello bye")
    arrays, stats = load_and_tokenize([row], TOK, "preference", max_length=6)
    assert stats.rows_identical == 0
    np.testing.assert_array_equal(arrays["chosen_input_ids"], arrays["rejected_input_ids"])
    np.testing.assert_array_equal(arrays["chosen_loss_mask"], [[0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(arrays["rejected_loss_mask"], [[0, 0, 1, 1, 1, 0]])


def test_rankings_with_repeated_sequences_are_dropped_and_counted(caplog):
    rows = [
        {"prompt": "hi", "completions": ["hello", "bye", "hello"]},
        {"prompt": "hi", "completions": ["hello", "bye", "goodbye"]},
    ]
    with caplog.at_level(logging.WARNING):
        arrays, stats = load_and_tokenize(rows, TOK, "ranking", max_length=5)
    assert (stats.rows_kept, stats.rows_identical) == (1, 1)
    expected = [padded(t(f"<s> hi {w} </s>"), 5) for w in ("hello", "bye", "goodbye")]
    np.testing.assert_array_equal(arrays["input_ids"][0], expected)
    assert "dropped 1 of 2 rankings" in caplog.text
    arrays, stats = load_and_tokenize(rows, TOK, "ranking", max_length=5, drop_identical=False)
    assert arrays["input_ids"].shape == (2, 3, 5) and stats.rows_identical == 0
