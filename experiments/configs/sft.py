"""SFT (behaviour cloning) on the preference-language task's demonstrations.

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft

Expected (CPU, ~20 s): eval/nll within 0.1 nats/token of eval/demonstrator_entropy (1.04),
i.e. eval/nll_gap < 0.1 after 400 steps (measured 0.030 on held-out prompts).
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("sft")
    config.model = "gpt2-tiny"
    config.num_steps = 400
    config.batch_size = 32
    config.eval_every = 100
    config.checkpoint_every = 200
    config.data.task = "preference"
    config.data.num_train = 8192
    config.data.num_eval = 1024
    config.data.max_length = 40
    config.optimizer.learning_rate = 3e-3
    return config
