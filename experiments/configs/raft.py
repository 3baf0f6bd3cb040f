"""ReST-style rejection-sampling fine-tuning (RAFT, Dong et al. 2023; ReST, Gulcehre et al.
2023) of the SFT policy against the Bradley–Terry reward model, scored by the gold reward.

Rounds of 50 steps sample from the round's first iterate; each step draws 8 responses for each
of 16 prompts, keeps each prompt's best under the reward model and takes one SFT step on the
kept 16 (``raft.min_reward`` adds ReST's threshold). Needs the quickstart's SFT policy and
reward model:

    python -m experiments.run --config=experiments/configs/quickstart.py
    python -m experiments.run --config=experiments/configs/raft.py --workdir=runs/raft

Measured (~55 s on 2 shared CPU cores, 4 rounds; 256 held-out prompts, the SFT policy's
samples at gold 1.22 ± 0.04): eval/reward/gold_mean 1.84 ± 0.05 at eval/kl_mean 8.9, win rate
0.75 ± 0.03 against the SFT policy, learned reward 2.39 → 5.46. Along the way (eval_every=50):
gold 1.84 (KL 0.8), 1.99 (KL 2.2), 2.02 (KL 4.4), then 1.84 (KL 8.9) at step 200 — no KL leash,
so the last round starts over-optimizing the proxy (longer responses).

Fails with ``raft.steps_per_round=1`` (RAFT's per-batch stages: each step samples from the
current policy, so the selection compounds every step): by step 40 the kept responses fill the
24-token budget and at step 200 the policy writes "great great great …" — learned reward 9.98,
gold −2.01 ± 0.13, KL 178 (gold 1.81 ± 0.06 at step 100, KL 78; with learning_rate=1e-4:
1.77 ± 0.08 at KL 64).
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("raft")
    config.init_from = "runs/quickstart/sft/export"
    config.reward.source = "model"
    config.reward.model = "runs/quickstart/reward_model/export"
    config.num_steps = 200
    config.batch_size = 16  # prompts per step
    config.eval_every = 100
    config.checkpoint_every = 100
    config.data.task = "preference"
    config.data.max_length = 40
    config.data.num_train = 4096
    config.policy_eval.num_prompts = 256
    config.sampling.group_size = 8  # N responses per prompt
    config.sampling.max_new_tokens = 24
    config.optimizer.learning_rate = 3e-4
    config.optimizer.schedule = "constant"
    config.raft.keep_top_k = 1
    config.raft.steps_per_round = 50  # ReST's rounds: sample from the round's first iterate
    return config
