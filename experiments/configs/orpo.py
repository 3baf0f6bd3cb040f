"""ORPO (Hong et al. 2024) from the SFT policy: NLL of the chosen response plus λ times the
odds-ratio loss, reference-free.

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/orpo.py --workdir=runs/orpo

Reached (CPU, ~20 s): eval/accuracy 0.822 (eval/gold_accuracy 0.85); eval/reward/gold_mean from
1.22 ± 0.04 (SFT samples) to 1.49 ± 0.04 over 256 held-out prompts, win rate 0.62 against the
SFT policy, eval/kl_mean 0.9. With the paper's λ = 0.1 the NLL term dominates: the policy
imitates the chosen responses, which here are mostly base-distribution candidates worse than
the demonstrator (measured with the earlier, repeating evaluation prompts: the gold reward fell
to 0.67 ± 0.05, win rate 0.29).
"""

from experiments.configs import dpo


def get_config():
    config = dpo.get_config()
    config.direct.loss = "orpo"
    config.direct.orpo_lambda = 5.0
    config.optimizer.learning_rate = 3e-4
    return config
