"""DAPO on verifiable arithmetic: clip-higher, token-level loss, no KL, dynamic sampling,
over-long penalty (Yu et al. 2025).

    python -m experiments.run --config=experiments/configs/grpo.py:sft \
        --workdir=runs/arithmetic_sft   # stage 1, shared with grpo.py
    python -m experiments.run --config=experiments/configs/dapo.py --workdir=runs/dapo

Expected (CPU budget 10 min; takes ~50 s on 2 cores), on 256 held-out prompts:
eval/reward/gold_mean ≈ 0.68 (measured 0.680 ± 0.029) against the SFT reference's
eval/ref_reward/gold_mean = 0.277 ± 0.028.
train/kept_with_variance stays 1 while train/groups_with_variance falls (0.82 → 0.70) as
the policy gets more prompts always right.
"""

from experiments.configs import grpo


def get_config():
    config = grpo.rl_config()
    pg = config.policy_gradient
    pg.clip_eps_low, pg.clip_eps_high = 0.2, 0.28
    pg.aggregation = "token_mean"
    pg.kl_coef = 0.0
    pg.dynamic_sampling = True
    pg.max_sampling_rounds = 3  # draw 16 groups at a time until 16 have reward variance
    pg.overlong_buffer = 2  # budget 6 tokens: 5 costs −0.5, 6 (truncated) −1
    pg.num_minibatches = 2  # two updates per rollout, so the second one is off-policy
    return config
