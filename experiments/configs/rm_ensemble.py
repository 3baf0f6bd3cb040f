"""A 4-head reward-model ensemble on one backbone, evaluated with uncertainty-weighted
aggregation (Coste et al. 2023): r = mean_k r_k − λ · var_k r_k.

    python -m experiments.run --config=experiments/configs/rm_ensemble.py --workdir=runs/rm_ensemble

Each head is trained with its own Bradley–Terry loss (heads differ by their init). Measured
(CPU, ~20 s): eval/gold_accuracy 0.831, eval/spearman 0.73 for the aggregated reward.
WORKDIR/export holds the 4 heads as a 4-label sequence classifier; RL scores with it through
``config.reward`` (``source="model"``, ``aggregation="uwo"``, ``uwo_penalty``).
"""

from experiments.configs import rm_bt


def get_config():
    config = rm_bt.get_config()
    config.reward_model.num_heads = 4
    config.reward_model.ensemble_aggregation = "uwo"
    config.reward_model.uwo_penalty = 1.0
    return config
