"""SimPO (Meng et al. 2024) from the SFT policy: reference-free, length-normalized rewards
β/|y| log π(y) with target margin γ.

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/simpo.py --workdir=runs/simpo

Reached (CPU, ~20 s): eval/accuracy 0.810 (eval/gold_accuracy 0.84), but no gain in the gold
reward of samples on held-out prompts: eval/reward/gold_mean 1.24 ± 0.06 against 1.22 ± 0.04
for the SFT samples, win rate 0.54, eval/kl_mean 3.9 (with the earlier, repeating evaluation
prompts: 1.30 → 1.57). Nothing anchors SimPO to the SFT policy: at learning_rate=1e-3 the KL
reached 57, responses grew from 8 to 14 tokens and the gold reward fell to 0.99 ± 0.16.
"""

from experiments.configs import dpo


def get_config():
    config = dpo.get_config()
    config.direct.loss = "simpo"
    config.direct.beta = 2.0
    config.direct.simpo_gamma = 1.0  # γ/β = 0.5, as in the SimPO paper
    config.optimizer.learning_rate = 1e-4
    return config
