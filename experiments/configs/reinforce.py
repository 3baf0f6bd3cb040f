"""REINFORCE on verifiable arithmetic with a moving-average baseline (in TrainState.extras).

    python -m experiments.run --config=experiments/configs/grpo.py:sft \
        --workdir=runs/arithmetic_sft   # stage 1, shared with grpo.py
    python -m experiments.run --config=experiments/configs/reinforce.py --workdir=runs/reinforce

Measured (CPU budget 10 min; takes ~40 s on 2 cores), on 256 held-out problems:
eval/reward/gold_mean = 0.672 ± 0.029 against the SFT reference's
eval/ref_reward/gold_mean = 0.359 ± 0.030.
"""

from experiments.configs import grpo


def get_config():
    config = grpo.rl_config()
    pg = config.policy_gradient
    pg.estimator = "reinforce"  # A = r − b, b a bias-corrected moving average of batch means
    pg.baseline_decay = 0.9
    config.sampling.group_size = 1
    config.batch_size = 128  # 128 responses per iteration, as GRPO's 16 × 8
    return config
