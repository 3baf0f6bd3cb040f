"""PPO with a learned critic on the preference task, against the learned reward of ``rm_bt.py``.

The ``rlhf.py`` setting with PPO instead of GRPO: the policy and the critic start from the SFT
export, the reward is the Bradley–Terry reward model trained from the SFT export, 100
iterations of 128 prompts × 1 response (the same 12,800 sampled responses as ``rlhf.py``'s 100 ×
16 prompts × 8). Three commands (``quickstart.py`` trains the first two as its stages):

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/rm_bt.py --workdir=runs/rm \\
        --config.init_from=runs/sft/export
    python -m experiments.run --config=experiments/configs/ppo.py --workdir=runs/ppo

Reached (~3 min on 2 CPU cores; 256 held-out prompts): eval/reward/gold_mean from 1.22 ± 0.04
(SFT samples) to 1.92 ± 0.04, the learned reward from 2.39 to 6.09, eval/kl_mean 7.7, win rate
0.81 against the SFT policy. β = 0.5: gold 2.07 ± 0.02 at KL 1.7; β = 0.05 over-optimizes the
proxy: learned reward 8.3, gold 0.06 ± 0.11, KL 30.9.

Variants: ``ppo.py:gold`` optimizes the gold reward itself; ``ppo.py:adaptive`` adapts β towards
a sequence KL of ``kl_target`` nats (Ziegler et al.'s controller). With
``--config.ppo.kl_target=2 --config.ppo.kl_horizon=1000`` β goes 0.2 → 0.41 and the mean KL of
the last 20 % of iterations is 2.05 (gold 2.12 ± 0.02); with a target of 8, 0.2 → 0.21 and 8.02
(gold 1.95 ± 0.04).
"""

from irl_jax.algorithms import experiment_config


def rlhf_config():
    config = experiment_config("ppo")
    config.init_from = "runs/sft/export"
    config.num_steps = 100  # iterations
    config.batch_size = 128  # prompts per iteration, one response each
    config.eval_every = 50
    config.log_every = 10
    config.checkpoint_every = 50
    config.data.task = "preference"
    config.data.max_length = 40
    config.data.num_train = 8192
    config.data.num_eval = 256
    config.policy_eval.num_prompts = 256
    config.policy_eval.max_new_tokens = 24
    config.sampling.max_new_tokens = 24
    config.sampling.group_size = 1
    config.reward.source = "model"
    config.reward.model = "runs/rm/export"
    config.optimizer.learning_rate = 3e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 10
    ppo = config.ppo
    ppo.kl_coef = 0.2
    ppo.num_epochs = 2
    ppo.num_minibatches = 4
    ppo.critic.init = "policy"
    ppo.critic.optimizer.learning_rate = 1e-3
    ppo.critic.optimizer.schedule = "constant"
    return config


def get_config(variant: str = "rlhf"):
    """``rlhf`` (default: the learned reward), ``gold`` (the gold reward) or ``adaptive``
    (β adapted towards a 4-nat sequence KL; ``--config.ppo.kl_target`` changes it)."""
    config = rlhf_config()
    if variant == "gold":
        config.reward.source = "gold"
        config.reward.model = ""
    elif variant == "adaptive":
        config.ppo.kl_target = 4.0
        config.ppo.kl_horizon = 1000
    elif variant != "rlhf":
        raise ValueError(f"ppo.py:{variant}: expected 'rlhf', 'gold' or 'adaptive'")
    return config
