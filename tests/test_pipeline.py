"""Pipelines: SFT → reward model → RL against the learned reward, stages wired by ``@stage``
references; validation before anything runs; finished stages are skipped on a re-run."""

import json
import os

import numpy as np
import pytest

from irl_jax import algorithms
from irl_jax.algorithms import experiment_config, pipeline, validate_config
from irl_jax.config import ConfigError
from irl_jax.metrics import read_metrics


def tiny(algorithm, **fields):
    config = experiment_config(algorithm)
    config.num_steps = 4
    config.batch_size = 8
    config.eval_every = 0
    config.log_every = 2
    config.data.num_train = 64
    config.data.num_eval = 16
    config.data.max_length = 32
    config.policy_eval.num_prompts = 8
    config.policy_eval.max_new_tokens = 6
    for key, value in fields.items():
        config[key] = value
    return config


def stages():
    sft = tiny("sft")
    reward_model = tiny("reward_model", init_from="@sft")
    reward_model.reward_model.num_eval_prompts = 8
    rlhf = tiny("policy_gradient", init_from="@sft", num_steps=2)
    rlhf.reward.update(source="model", model="@reward_model")
    rlhf.sampling.update(group_size=2, max_new_tokens=6)
    return {"sft": sft, "reward_model": reward_model, "rlhf": rlhf}


def test_references_resolve_to_earlier_exports():
    config = pipeline.pipeline_config(stages())
    resolved = pipeline.resolve(config.stages.rlhf, "/runs/p")
    assert resolved.init_from == "/runs/p/sft/export"
    assert resolved.reward.model == "/runs/p/reward_model/export"
    assert config.stages.rlhf.init_from == "@sft"  # the pipeline config is left as it was


def test_validation_names_the_stage_and_field():
    validate_config(pipeline.pipeline_config(stages()))
    cases = []
    config = pipeline.pipeline_config(stages())
    config.run = ("sft", "rlhf", "reward_model")
    cases.append((config, r"config.stages.rlhf.reward.model: @reward_model is "
                  r"not an earlier stage \(earlier: \['sft'\]\)"))  # fmt: skip
    config = pipeline.pipeline_config(stages())
    config.stages.sft.export = False
    cases.append((config, "config.stages.reward_model.init_from: stage 'sft' does not export"))
    config = pipeline.pipeline_config(stages())
    config.stages.reward_model.num_steps = 0
    cases.append((config, "stage 'reward_model': config.num_steps: must be positive"))
    config = pipeline.pipeline_config(stages())
    config.stages.rlhf.reward.aggregation = "median"
    cases.append((config, "stage 'rlhf': config.reward.aggregation: 'median'"))
    config = pipeline.pipeline_config(stages())
    config.run = ("sft", "dpo")
    cases.append((config, r"config.run: 'dpo' is not a stage"))
    config = pipeline.pipeline_config({"inner": pipeline.pipeline_config(stages())})
    cases.append((config, "config.stages.inner.algorithm: 'pipeline' is not a single algorithm"))
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(config)
    # Outside a pipeline, a learned reward must exist before anything runs.
    alone = stages()["rlhf"]
    alone.init_from, alone.reward.model = "", "/nonexistent/rm"
    with pytest.raises(ConfigError, match="config.reward.model: '/nonexistent"):
        validate_config(alone)


def test_sft_reward_model_rlhf_pipeline(tmp_path):
    config = pipeline.pipeline_config(stages())
    metrics = algorithms.run(config, str(tmp_path))
    for name in ("sft", "reward_model", "rlhf"):
        assert os.path.isfile(tmp_path / name / "export" / "config.json"), name
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert list(summary) == ["sft", "reward_model", "rlhf"]
    accuracy = summary["reward_model"]["eval/gold_accuracy"]
    assert metrics["reward_model/eval/gold_accuracy"] == accuracy
    rlhf = summary["rlhf"]
    # RL optimized the learned reward: it is scored on the policy's and the SFT policy's samples.
    for key in ("eval/reward/model_mean", "eval/ref_reward/model_mean", "eval/reward/gold_mean"):
        assert key in rlhf, key
    with open(tmp_path / "rlhf" / "export" / "config.json") as f:
        assert json.load(f)["architectures"] == ["GPT2LMHeadModel"]
    with open(tmp_path / "reward_model" / "export" / "config.json") as f:
        assert json.load(f)["architectures"] == ["GPT2ForSequenceClassification"]
    logged = [r for r in read_metrics(str(tmp_path / "rlhf")) if "train/reward_mean" in r]
    assert [r["step"] for r in logged] == [2]
    # A re-run finds every stage finished and runs nothing.
    lines = len(read_metrics(str(tmp_path / "rlhf")))
    # (NaN-aware: a metric such as eval/demo/reverse_kl_in_support is NaN with no sample on
    # the demonstrator's support)
    np.testing.assert_equal(algorithms.run(config, str(tmp_path)), metrics)
    assert len(read_metrics(str(tmp_path / "rlhf"))) == lines
