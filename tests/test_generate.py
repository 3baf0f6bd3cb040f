"""Sampling from a saved model: parity with ``sampling.sample``, gold rewards, CLI output."""

import json

import jax
import numpy as np
import pytest

from irl_jax import generate as gen
from irl_jax import sharding
from irl_jax.models import Transformer, preset
from irl_jax.models.hf import save_pretrained
from irl_jax.sampling import repeat_prompts, sample
from irl_jax.tasks import build_tokenizer, get_task

CONFIG = preset("gpt2-tiny", vocab_size=93, eos_token_ids=(2,), pad_token_id=0, bos_token_id=1)
TASK = get_task("preference")
PROMPTS = ["rate the travel", "describe the movie", "review my food"]
# Sampling settings shared by the parity tests (one compile for all of them).
SETTINGS = dict(max_new_tokens=24, temperature=0.8, top_k=40, top_p=0.95)
SEED = 3
NUM_SAMPLES = 2
FIELDS = {
    "prompt_index",
    "sample_index",
    "prompt",
    "response",
    "response_ids",
    "response_tokens",
    "stopped",
    "response_logprob",
    "reward/gold",
}


def _init(config, ids):
    params = jax.jit(Transformer(config).init)(jax.random.key(0), ids, ids)["params"]
    return sharding.unbox(params)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """``(export dir with the task tokenizer, export dir without a tokenizer, params)``."""
    ids = np.ones((1, 4), np.int32)
    params = _init(CONFIG, ids)
    root = tmp_path_factory.mktemp("models")
    with_tokenizer = save_pretrained(str(root / "policy"), CONFIG, params, build_tokenizer())
    bare = save_pretrained(str(root / "bare"), CONFIG, params)
    return with_tokenizer, bare, params


def _expected(params, prompts, *, num_samples, rng, greedy=False, **settings):
    """Left-padded prompts by hand, ``repeat_prompts``, ``sample``: real tokens per row."""
    tokenizer = build_tokenizer()
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    length = max(map(len, rows))
    ids = np.array([[0] * (length - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows], np.int32)
    ids, mask = repeat_prompts(ids, mask, num_samples)
    out = sample(CONFIG, params, ids, mask, rng=rng, greedy=greedy, **settings)
    response_ids, response_mask = np.asarray(out.response_ids), np.asarray(out.response_mask)
    tokens = [row[m > 0].tolist() for row, m in zip(response_ids, response_mask)]
    logprobs = np.asarray(out.response_logprobs).sum(-1)
    gold = np.asarray(TASK.gold_reward(ids, mask, out.response_ids, out.response_mask))
    return tokens, logprobs, gold


def _check_records(records, prompts, tokens, logprobs, gold):
    tokenizer = build_tokenizer()
    assert len(records) == len(prompts) * NUM_SAMPLES == len(tokens)
    assert [r["response_ids"] for r in records] == tokens  # token for token
    assert [(r["prompt_index"], r["sample_index"]) for r in records] == [
        (i, j) for i in range(len(prompts)) for j in range(NUM_SAMPLES)
    ]
    assert [r["prompt"] for r in records] == [p for p in prompts for _ in range(NUM_SAMPLES)]
    for record, row in zip(records, tokens):
        assert set(record) == FIELDS
        assert record["response_tokens"] == len(row)
        assert record["stopped"] == (row[-1] == 2)
        assert record["response"] == tokenizer.decode(row[:-1] if record["stopped"] else row)
    # Some rows stop at eos, some run to max_new_tokens (so both paths are exercised).
    assert {r["stopped"] for r in records} == {True, False}
    np.testing.assert_allclose([r["response_logprob"] for r in records], logprobs, rtol=1e-6)
    # The gold reward of the ids equals the task's reward of the texts.
    rewards = [r["reward/gold"] for r in records]
    np.testing.assert_allclose(rewards, gold, rtol=1e-6)
    texts = TASK.gold_reward_text([r["prompt"] for r in records], [r["response"] for r in records])
    np.testing.assert_allclose(rewards, texts, atol=1e-5)


def test_generate_reproduces_sample(model):
    model_dir, _, params = model
    records = gen.generate(
        model_dir,
        PROMPTS,
        num_samples=NUM_SAMPLES,
        seed=SEED,
        rewards={"gold": TASK.gold_reward},
        **SETTINGS,
    )
    expected = _expected(
        params, PROMPTS, num_samples=NUM_SAMPLES, rng=jax.random.key(SEED), **SETTINGS
    )
    _check_records(records, PROMPTS, *expected)


def test_cli_writes_jsonl(model, tmp_path, capsys):
    model_dir, _, params = model
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join([PROMPTS[0], "", *PROMPTS[1:]]) + "\n")  # blank skipped
    out = tmp_path / "out" / "samples.jsonl"
    flags = [f"--{k}={v}" for k, v in SETTINGS.items()]
    status = gen.main(
        [
            f"--model={model_dir}",
            f"--prompts={prompts_file}",
            f"--num_samples={NUM_SAMPLES}",
            f"--seed={SEED}",
            "--task=preference",
            f"--output={out}",
            *flags,
        ]
    )
    assert status == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = _expected(
        params, PROMPTS, num_samples=NUM_SAMPLES, rng=jax.random.key(SEED), **SETTINGS
    )
    _check_records(records, PROMPTS, *expected)
    summary = capsys.readouterr().out
    mean_gold = np.mean([r["reward/gold"] for r in records])
    assert f"wrote 6 samples to {out}" in summary
    assert f"reward/gold={mean_gold:.3f}" in summary

    # A JSONL file with a prompt column (and other columns) gives the same samples.
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS))
    )
    again = tmp_path / "again.jsonl"
    argv = [f"--model={model_dir}", f"--prompts={jsonl}", f"--num_samples={NUM_SAMPLES}"]
    argv += [f"--seed={SEED}", "--task=preference", f"--output={again}", *flags]
    assert gen.main(argv) == 0
    assert again.read_text() == out.read_text()


def test_cli_prints_with_the_task_tokenizer_fallback(model, capsys):
    _, bare_dir, params = model
    argv = [f"--model={bare_dir}", "--prompt=review the soup", "--greedy", "--max_new_tokens=6"]
    assert gen.main(argv) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tokens, _, _ = _expected(
        params, ["review the soup"], num_samples=1, rng=None, greedy=True, max_new_tokens=6
    )
    assert record["response_ids"] == tokens[0]
    assert record["prompt"] == "review the soup"
    assert "reward/gold" not in record


def test_batches_fold_the_seed_in(model):
    model_dir, _, params = model
    policy = gen.load_policy(model_dir)
    settings = dict(max_new_tokens=5, temperature=1.0)
    records = gen.generate(policy, PROMPTS, num_samples=2, seed=1, batch_size=4, **settings)
    assert len(records) == 6
    # Batch 0 = rows 0-3 with fold_in(key, 0); batch 1 = rows 4-5, padded to 4 rows, fold_in 1.
    key = jax.random.key(1)
    first, _, _ = _expected(
        params, PROMPTS[:2], num_samples=2, rng=jax.random.fold_in(key, 0), **settings
    )
    padded = [PROMPTS[2]] * 2
    second, _, _ = _expected(
        params, padded, num_samples=2, rng=jax.random.fold_in(key, 1), **settings
    )
    assert [r["response_ids"] for r in records] == first + second[:2]


def test_tokenize_prompts_left_pads_to_the_longest_and_renders_chats():
    tokenizer = build_tokenizer()
    chat = [{"role": "user", "content": "review the food"}]
    prompts, ids, mask = gen.tokenize_prompts(
        [{"prompt": "rate the travel"}, {"prompt": chat}], tokenizer
    )
    assert prompts == ["rate the travel", chat]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    chat_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    plain_ids = tokenizer("rate the travel")["input_ids"]
    assert ids.shape == mask.shape == (2, len(chat_ids))
    assert ids[1].tolist() == chat_ids and mask[1].all()
    pad = len(chat_ids) - len(plain_ids)
    assert ids[0].tolist() == [0] * pad + plain_ids
    assert mask[0].tolist() == [0] * pad + [1] * len(plain_ids)
    # A long prompt keeps its last max_prompt_length tokens.
    _, ids, _ = gen.tokenize_prompts(["rate the travel"], tokenizer, max_prompt_length=2)
    assert ids.tolist() == [plain_ids[-2:]]


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    small = CONFIG.replace(vocab_size=50)
    ids = np.ones((1, 2), np.int32)
    params = _init(small, ids)
    path = save_pretrained(str(tmp_path / "small"), small, params, build_tokenizer())
    with pytest.raises(ValueError, match="93 tokens but the model's vocabulary only 50"):
        gen.load_policy(path)


def test_cli_reports_unusable_inputs(model, tmp_path, capsys):
    model_dir, _, _ = model
    assert gen.main([f"--model={tmp_path / 'missing'}", "--prompt=rate the food"]) == 1
    assert "no config.json" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": ""}) + "\n")
    assert gen.main([f"--model={model_dir}", f"--prompts={empty}"]) == 1
    assert "empty.jsonl row 0, field 'prompt'" in capsys.readouterr().err
