"""The bring-your-own-task example (``examples/``) end to end in a reduced size: its data and
model are written, SFT trains on the demonstrations, and GRPO scores with the example's reward
functions on the prompt file's ``answer`` column, through the same configs as its README."""

import importlib.util
import json
import os

from irl_jax import generate
from irl_jax.algorithms import policy_gradient, sft, validate_config
from irl_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", f"{ROOT}/examples/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_sft_then_grpo_with_user_rewards(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name examples/rewards.py relative to the root
    data = tmp_path / "data"
    load("make_task").main([f"--out={data}", "--num_train=64", "--num_eval=16"])
    rows = [json.loads(line) for line in (data / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and set(rows[0]) == {"prompt", "answer"}
    example = load("config")

    config = example.get_config("sft")
    config.model = str(data / "model")
    config.data.path = str(data / "sft.jsonl")
    config.num_steps, config.eval_every, config.batch_size = 10, 0, 16
    validate_config(config)
    sft.train(config, str(tmp_path / "sft"))

    config = example.get_config("grpo")
    config.model = str(data / "model")
    config.init_from = str(tmp_path / "sft" / "export")
    config.data.path = str(data / "prompts.jsonl")
    config.data.eval_path = str(data / "eval_prompts.jsonl")
    config.data.num_train = 64
    config.num_steps, config.eval_every, config.checkpoint_every = 3, 0, 0
    config.batch_size, config.log_every = 8, 1
    config.policy_eval.num_prompts = config.policy_eval.batch_size = 8
    validate_config(config)
    final = policy_gradient.train(config, str(tmp_path / "grpo"))
    assert 0.0 <= final["eval/reward/user_mean"] <= 1.1
    logged = [r for r in read_metrics(str(tmp_path / "grpo")) if "train/loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    for r in logged:
        assert 0.0 <= r["train/reward/exact_match_mean"] <= 1.0
        assert 0.0 <= r["train/reward/is_number_mean"] <= 1.0
    assert os.path.isfile(tmp_path / "grpo" / "export" / "model.safetensors")

    # Its samples with each function's reward, as examples/README.md's step 4 prints them.
    out = tmp_path / "samples.jsonl"
    status = generate.main(
        [
            f"--model={tmp_path / 'grpo' / 'export'}",
            f"--prompts={data / 'eval_prompts.jsonl'}",
            "--max_new_tokens=4",
            f"--output={out}",
            "--reward_functions=examples/rewards.py:exact_match,examples/rewards.py:is_number",
            "--reward_weights=1.0,0.1",
        ]
    )
    assert status == 0
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in (data / "eval_prompts.jsonl").open()]
    assert len(samples) == len(answers) == 16
    for sample, answer in zip(samples, answers):
        assert sample["reward/exact_match"] == float(sample["response"].strip() == answer)
        assert sample["reward/is_number"] == float(sample["response"].strip().isdigit())
        expected = sample["reward/exact_match"] + 0.1 * sample["reward/is_number"]
        assert abs(sample["reward/user"] - expected) < 1e-6
