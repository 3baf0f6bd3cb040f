"""The embedded pipeline: SFT a tiny GPT-2 on synthetic demonstrations, scored against the truth.

    python -m experiments.run --config=experiments/configs/quickstart.py

Runs on CPU in a couple of minutes with no network. Expected: eval/nll_gap (eval NLL minus the
demonstrator's known entropy) below 0.1 nats/token; the final model is exported to
runs/quickstart/export as a Hugging Face directory.
"""

from experiments.configs import sft


def get_config():
    config = sft.get_config()
    config.num_steps = 300
    return config
