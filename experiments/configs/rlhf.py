"""RLHF with a learned reward: GRPO against a Bradley–Terry reward model, scored by the gold reward.

The inverse-RL loop on the preference-language task: the reward is *learned* from noisy
preferences, then optimized under a KL leash; the gold reward tells whether optimizing the proxy
helped. Three commands (``quickstart.py`` runs them all as one pipeline):

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/rm_bt.py --workdir=runs/rm \
        --config.init_from=runs/sft/export
    python -m experiments.run --config=experiments/configs/rlhf.py --workdir=runs/rlhf

Reached (CPU, ~45 s for 100 iterations of 16 prompts × 8 responses; 256 held-out prompts): the
learned reward of samples rises from 2.39 (SFT policy, eval/ref_reward/model_mean) to 5.94 and
the gold reward from 1.22 ± 0.04 to 1.98 ± 0.06 (eval/reward/gold_mean), win rate 0.77 ± 0.03
against the SFT policy at eval/kl_mean 16.3 — above DPO's 1.75 on the same preferences
(``dpo.py``). The KL coefficient sets where on the over-optimization curve the policy lands:

    kl_coef   learned reward   gold reward    KL    win rate
    0.5            4.40        2.03 ± 0.04    3.7     0.82
    0.2            5.94        1.98 ± 0.06   16.3     0.77
    0.05           8.18        0.63 ± 0.10   50.1     0.37

At 0.05 the policy exploits the proxy (the highest learned reward, a gold reward below the SFT
policy's: long responses piling up praise words, "the soup was great indeed very great indeed
soulful …").
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("policy_gradient")
    config.init_from = "runs/sft/export"
    config.num_steps = 100  # iterations
    config.batch_size = 16  # prompts per iteration
    config.eval_every = 50
    config.log_every = 10
    config.checkpoint_every = 50
    config.data.task = "preference"
    config.data.max_length = 40
    config.data.num_train = 4096
    config.data.num_eval = 256
    config.policy_eval.num_prompts = 256
    config.policy_eval.max_new_tokens = 24
    config.reward.source = "model"
    config.reward.model = "runs/rm/export"
    config.sampling.group_size = 8
    config.sampling.max_new_tokens = 24
    config.optimizer.learning_rate = 3e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 10
    pg = config.policy_gradient
    pg.estimator = "grpo"
    pg.kl_coef = 0.2
    pg.kl_estimator = "k3"
    return config
