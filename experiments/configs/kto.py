"""KTO (Ethayarajh et al. 2024) from the SFT policy on unpaired desirable/undesirable labels
(P(desirable) = σ(β_ann (r* − 0.5)); 39% of the 4096 rows are desirable). The reference point z₀
comes from mismatched prompt/response pairs; the held-out evaluation uses preference pairs.

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/kto.py --workdir=runs/kto

Reached (CPU, ~20 s): implicit-reward accuracy on held-out pairs eval/accuracy 0.773
(eval/gold_accuracy 0.81); eval/reward/gold_mean from 1.22 ± 0.04 (SFT samples) to 1.57 ± 0.04
over 256 held-out prompts, win rate 0.68 against the SFT policy, eval/kl_mean 0.8.
"""

from experiments.configs import dpo


def get_config():
    config = dpo.get_config()
    config.direct.loss = "kto"
    config.direct.beta = 0.5
    config.direct.kto_desirable_weight = 1.0
    config.direct.kto_undesirable_weight = 1.0
    return config
