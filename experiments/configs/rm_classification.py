"""Classification reward model (Sun et al. 2024): each pair gives (x, y_w) → 1, (x, y_l) → 0.

    python -m experiments.run --config=experiments/configs/rm_classification.py \
        --workdir=runs/rm_classification

Same data and model as ``rm_bt.py`` (β_ann = 5). Measured (CPU, ~20 s): eval/gold_accuracy
0.821, eval/spearman 0.72, eval/bon_gain 0.98 of 1.12 — on par with
Bradley–Terry at this noise level (``experiments/noise_sweep.py`` compares them across noise
levels).
"""

from experiments.configs import rm_bt


def get_config():
    config = rm_bt.get_config()
    config.reward_model.loss = "classification"
    return config
