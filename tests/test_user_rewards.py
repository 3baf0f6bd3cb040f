"""User reward functions from the config: weights and None combine as documented, row columns
reach the functions, errors name the function and the row (and leave the checkpoints intact),
and a user module drives GRPO on a prompt-only JSONL file."""

import json
import random
import textwrap

import jax
import numpy as np
import pytest

from irl_jax import user_rewards
from irl_jax.algorithms import experiment_config, policy_gradient, validate_config
from irl_jax.algorithms import setup as setup_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.data import load_and_tokenize
from irl_jax.metrics import read_metrics
from irl_jax.tasks import build_tokenizer

# A user's module: `answer` is the data file's reference-answer column.
MODULE = '''
import os


def _sum(prompt):
    a, b = prompt.replace("=", "").split("+")
    return int("".join(a.split())) + int("".join(b.split()))


def first_digit(prompts, responses, answer):
    """1 if the response starts with the answer's first digit (checks that `answer` is this
    prompt's row)."""
    out = []
    for prompt, response, ref in zip(prompts, responses, answer):
        assert " ".join(str(_sum(prompt))) == ref, (prompt, ref)
        out.append(float(response.split()[:1] == ref.split()[:1]))
    return out


def digits(prompts, responses, **row_columns):
    """The fraction of digit words; None for an empty response."""
    words = [r.split() for r in responses]
    return [sum(w.isdigit() for w in ws) / len(ws) if ws else None for ws in words]


def length(prompt_ids, prompt_mask, response_ids, response_mask):
    """Jittable: the number of response tokens."""
    return response_mask.sum(-1)


CALLS = []


def raises_later(prompts, responses):
    """0, but raises on the rows whose sum is odd after $USER_REWARD_FAIL_AFTER calls."""
    CALLS.append(len(prompts))
    after = os.environ.get("USER_REWARD_FAIL_AFTER")
    if after and len(CALLS) > int(after) and any(_sum(p) % 2 for p in prompts):
        raise ValueError("odd sum")
    return [0.0] * len(prompts)


def never(prompts, responses):
    return [None] * len(prompts)


def _fail_on(prompts):
    """Misbehave on the prompt that has the marker's text, once the marker file exists."""
    marker = os.environ.get("USER_REWARD_MARKER", "")
    return [os.path.exists(marker) and p == open(marker).read() for p in prompts]


def raises(prompts, responses):
    if any(_fail_on(prompts)):
        raise ZeroDivisionError("division by zero")
    return [0.0] * len(prompts)


def wrong_length(prompts, responses):
    return [0.0] * (len(prompts) - any(_fail_on(prompts)))


def not_a_number(prompts, responses):
    return ["abc" if bad else 0.0 for bad in _fail_on(prompts)]
'''


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A user module ``my_rewards.py`` and ``train.jsonl``: 256 addition prompts with a
    reference-answer column (the synthetic tasks' digit-per-token language)."""
    path = tmp_path_factory.mktemp("user_task")
    (path / "my_rewards.py").write_text(textwrap.dedent(MODULE))
    rng = random.Random(0)
    with open(path / "train.jsonl", "w") as f:
        for _ in range(256):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            prompt = f"{' '.join(str(a))} + {' '.join(str(b))} ="
            f.write(json.dumps({"prompt": prompt, "answer": " ".join(str(a + b))}) + "\n")
    return path


def spec(task_dir, name):
    return f"{task_dir / 'my_rewards.py'}:{name}"


def batch(task_dir, responses):
    """The first ``len(responses)`` prompts of train.jsonl with the given response texts."""
    tokenizer = build_tokenizer()
    arrays, _ = load_and_tokenize(str(task_dir / "train.jsonl"), tokenizer, "prompt", 16, 8)
    n = len(responses)
    response_ids = np.zeros((n, 4), np.int32)
    response_mask = np.zeros((n, 4), np.int32)
    for row, text in enumerate(responses):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        response_ids[row, : len(ids)], response_mask[row, : len(ids)] = ids, 1
    prompts = [
        tokenizer.decode(i[m > 0]) for i, m in zip(arrays["prompt_ids"], arrays["prompt_mask"])
    ]
    return (
        arrays["prompt_ids"][:n],
        arrays["prompt_mask"][:n],
        response_ids,
        response_mask,
    ), prompts


def source(task_dir, names, **options):
    tokenizer = build_tokenizer()
    table = user_rewards.row_columns([str(task_dir / "train.jsonl")], tokenizer, 16, 8)
    specs = [spec(task_dir, n) for n in names]
    return user_rewards.user_rewards(specs, tokenizer, table=table, **options)


def test_weights_and_none_combine_as_documented(task_dir):
    """r = Σ_k w_k r_k over the functions that returned a number: rows are (first digit right,
    digit fraction, length) = (1, 1, 2), (0, ½, 2), (0, None, 0) → 2·r₁ + 0.5·r₂ − 0.25·r₃."""
    rows, prompts = batch(task_dir, ["", "", ""])
    answers = [str(sum(int("".join(s.split())) for s in p[:-1].split("+"))) for p in prompts[:3]]
    responses = [" ".join(answers[0]), "indeed " + answers[1][0], ""]
    rows, _ = batch(task_dir, responses)
    rewards = source(task_dir, ["first_digit", "digits", "length"], weights=[2.0, 0.5, -0.25])
    total, parts = jax.jit(lambda s, *r: s.scores_and_parts(*r))(rewards, *rows)
    lengths = rows[3].sum(-1)
    np.testing.assert_allclose(parts["first_digit"], [1, 0, 0])
    np.testing.assert_allclose(parts["digits"], [1, 0.5, np.nan])
    np.testing.assert_allclose(parts["length"], lengths)
    expected = [2 + 0.5 - 0.25 * lengths[0], 0.25 - 0.25 * lengths[1], 0.0]
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert rewards.names == ("first_digit", "digits", "length")
    # In a process pool of 2 workers (each takes half the rows): the same rewards.
    pooled = source(task_dir, ["first_digit", "digits"], weights=[2.0, 0.5], num_workers=2)
    try:
        np.testing.assert_allclose(pooled(*rows), [2.5, 0.25, 0.0])
    finally:
        pooled.host.close()


@pytest.mark.parametrize(
    "name, message",
    [
        ("raises", r"'raises' raised ZeroDivisionError: division by zero on row 1 of the batch"),
        ("wrong_length", r"'wrong_length' returned 2 values for 3 rows"),
        ("not_a_number", r"'not_a_number' returned 'abc' \(str\) for row 1 of the batch"),
        ("never", r"every reward function \(never\) returned None for row 0 of the batch"),
    ],
)
def test_errors_name_the_function_and_the_row(task_dir, tmp_path, monkeypatch, name, message):
    rows, prompts = batch(task_dir, ["1", "2", "3"])
    marker = tmp_path / "marker"
    marker.write_text(prompts[1])
    monkeypatch.setenv("USER_REWARD_MARKER", str(marker))
    rewards = source(task_dir, [name])
    score = user_rewards.checked(jax.jit(lambda s, *r: s(*r)))  # as steps are run
    with pytest.raises(user_rewards.UserRewardError, match=message) as error:
        score(rewards, *rows)
    if name not in ("wrong_length", "never"):  # the data file's row and the prompt are named
        assert f"row 1 of {task_dir / 'train.jsonl'}, prompt {prompts[1]!r}" in str(error.value)


def test_timeout_names_the_function(tmp_path):
    (tmp_path / "slow.py").write_text(
        "import time\ndef slow(prompts, responses):\n    time.sleep(5)\n    return [0.0]\n"
    )
    rewards = user_rewards.user_rewards(
        [f"{tmp_path}/slow.py:slow"], build_tokenizer(), timeout=0.2
    )
    rows = (np.ones((1, 2), np.int32),) * 4
    with pytest.raises(
        user_rewards.UserRewardError, match=r"'slow' took longer than reward.timeout=0.2 s"
    ):
        rewards.host.scores(*rows)


def grpo_config(task_dir, functions, weights=""):
    config = experiment_config("policy_gradient")
    config.model = "gpt2-tiny"
    config.data.path = str(task_dir / "train.jsonl")
    config.data.max_length = 16
    config.data.max_prompt_length = 8
    config.data.num_train = 256
    config.reward.source = "functions"
    config.reward.functions = ",".join(spec(task_dir, f) for f in functions)
    config.reward.weights = weights
    config.num_steps = 30
    config.batch_size = 8  # prompts per iteration
    config.log_every = 1
    config.eval_every = 0
    config.export = False
    config.sampling.group_size = 8
    config.sampling.max_new_tokens = 4
    config.policy_eval.num_prompts = 8
    config.policy_eval.max_new_tokens = 4
    config.optimizer.learning_rate = 1e-2
    config.optimizer.warmup_steps = 0
    config.optimizer.schedule = "constant"
    config.policy_gradient.kl_coef = 0.0
    return config


def test_user_module_drives_grpo_on_a_prompt_file(task_dir, tmp_path, monkeypatch):
    """GRPO on ``train.jsonl`` scored by ``first_digit + 0.5 · digits (+ raises_later)``. The
    run first stops at iteration 11, where ``raises_later`` raises: the error names the function
    and the row, and the checkpoint of iteration 10 reads back; rerun, it resumes there (the
    same compiled step) and the mean reward of iterations 26–30 beats that of 1–5 by 2 stderr."""
    config = grpo_config(task_dir, ["first_digit", "digits", "raises_later"], "1.0,0.5,1.0")
    config.checkpoint_every = 10
    validate_config(config)
    built = policy_gradient.build(config)

    def run():
        return setup_lib.run(
            built.setup,
            str(tmp_path),
            state=built.state,
            shardings=built.shardings,
            step=built.step,
            data=built.data,
            evaluate=None,  # the example's test evaluates with user functions
            description="grpo",
        )

    monkeypatch.setenv("USER_REWARD_FAIL_AFTER", "10")  # calls: one per iteration
    with pytest.raises(user_rewards.UserRewardError, match="'raises_later' raised ValueError") as e:
        run()
    assert "odd sum on row" in str(e.value)
    assert "of the batch, row" in str(e.value)
    assert f"of {task_dir / 'train.jsonl'}, prompt '" in str(e.value)
    checkpoints = CheckpointManager(str(tmp_path))
    assert checkpoints.latest_step() == 10
    assert int(checkpoints.read(10)["step"]) == 10  # it reads back
    checkpoints.close()
    monkeypatch.delenv("USER_REWARD_FAIL_AFTER")
    run()

    rows = {r["step"]: r for r in read_metrics(str(tmp_path)) if "train/loss" in r}
    assert sorted(rows) == list(range(1, 31))
    rewards = np.array([rows[step]["train/reward_mean"] for step in range(1, 31)])
    first, last = rewards[:5], rewards[25:30]
    stderr = np.sqrt(first.var(ddof=1) / 5 + last.var(ddof=1) / 5)
    assert last.mean() > first.mean() + 2 * stderr, rewards
    # Each function's mean is logged under its own name; they combine with the weights (digits
    # averages over the responses where it is not None).
    for r in rows.values():
        parts = [r[f"train/reward/{name}_mean"] for name in ("first_digit", "digits")]
        assert r["train/reward/raises_later_mean"] == 0.0
        assert r["train/reward_mean"] <= parts[0] + 0.5 * parts[1] + 1e-5


def test_config_errors_name_the_field(task_dir):
    config = grpo_config(task_dir, ["first_digit"])
    validate_config(config)
    config.reward.source = "gold"
    with pytest.raises(ConfigError, match="config.reward.source: 'gold' needs a synthetic task"):
        validate_config(config)
    config.data.path = ""
    with pytest.raises(ConfigError, match="config.reward.functions: is set but reward.source"):
        validate_config(config)
    config.reward.source = "functions"
    config.reward.functions = "no_such_module:f"
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        validate_config(config)
    config.reward.functions = spec(task_dir, "missing")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        validate_config(config)
    config.reward.functions = spec(task_dir, "digits")
    config.reward.weights = "1,2"
    with pytest.raises(ConfigError, match="config.reward.weights: 2 reward weights for 1"):
        validate_config(config)
