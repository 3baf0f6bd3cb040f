"""Alignment from demonstrations (AfD, Sun & van der Schaar 2024) end to end on the
preference-language task: the initial policy, SFT, the three demonstration-only reward models
and, for comparison, the preference-trained Bradley–Terry reward model.

    python -m experiments.run --config=experiments/configs/afd.py --workdir=runs/afd
    python -m experiments.afd_best_of_n --workdir=runs/afd    # the Best-of-N comparison

Stages (``runs/afd/<stage>``): ``init`` (``pretrain.py``: the base corpus), ``sft`` (from
``init``), the classifiers ``init_demo`` (demonstrations vs initial-policy samples),
``sft_demo`` (demonstrations vs SFT samples) and ``init_sft`` (SFT samples vs initial-policy
samples; it also scores the closed-form log π_SFT − log π_init on the same held-out data, as
``eval/log_ratio/...``), each started from the SFT export; ``rm_bt`` (``rm_bt.py`` from the
SFT export).

Measured (16 min on 2 CPU cores shared with other jobs): held-out gold pair accuracy Init-Demo
0.717, SFT-Demo 0.453, Init-SFT 0.746 (its closed form log π_SFT − log π_init: 0.784), BT 0.847;
Best-of-16 from the SFT policy (gold 1.312 ± 0.006 at N = 1): Init-Demo 1.735 ± 0.012,
SFT-Demo 0.762 ± 0.016, Init-SFT 1.871 ± 0.010, closed form 1.861 ± 0.010, BT 2.048 ± 0.008.
Tables and discussion: the README's "Rewards from demonstrations".
"""

from experiments.configs import pretrain, rm_bt, sft
from irl_jax.algorithms import experiment_config
from irl_jax.algorithms.pipeline import pipeline_config

DEMONSTRATIONS = "demonstrations"


def classifier(positive: str, negative: str):
    config = experiment_config("afd")
    config.init_from = "@sft"
    config.num_steps = 300
    config.batch_size = 32
    config.eval_every = 100
    config.data.task = "preference"
    config.data.num_train = 4096  # demonstration prompts, one response of each side
    config.data.num_eval = 512
    config.data.max_length = 40
    config.sampling.max_new_tokens = 24
    config.optimizer.learning_rate = 1e-3
    config.afd.positive = positive
    config.afd.negative = negative
    return config


def get_config():
    policy = sft.get_config()
    policy.init_from = "@init"
    reward_model = rm_bt.get_config()
    reward_model.init_from = "@sft"
    return pipeline_config(
        {
            "init": pretrain.get_config(),
            "sft": policy,
            "init_demo": classifier(DEMONSTRATIONS, "@init"),
            "sft_demo": classifier(DEMONSTRATIONS, "@sft"),
            "init_sft": classifier("@sft", "@init"),
            "rm_bt": reward_model,
        }
    )
