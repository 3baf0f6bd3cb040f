"""Test setup: 8 fake CPU devices (set before jax is imported), offline hubs."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def preference_sft(tmp_path_factory):
    """A gpt2-tiny SFT'd on the preference task's demonstrations for 800 steps (~25 s), shared
    by the tests that start from an SFT policy (DPO, PPO). An under-trained policy (e.g. 300
    steps) generalizes poorly to the held-out prompts' distractor remarks: DPO from it drifts
    far (KL ≈ 30) and a critic on it learns slowly."""
    from irl_jax.algorithms import experiment_config, sft

    workdir = tmp_path_factory.mktemp("preference_sft")
    config = experiment_config("sft")
    config.num_steps = 800
    config.eval_every = 0
    config.log_every = 100
    config.data.num_train = 4096
    config.data.num_eval = 64
    config.data.max_length = 40
    config.optimizer.learning_rate = 3e-3
    sft.train(config, str(workdir))
    return str(workdir / "export")
