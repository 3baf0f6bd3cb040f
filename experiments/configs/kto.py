"""KTO (Ethayarajh et al. 2024) from the SFT policy on unpaired desirable/undesirable labels
(P(desirable) = σ(β_ann (r* − 0.5)); 39% of the 4096 rows are desirable). The reference point z₀
comes from mismatched prompt/response pairs; the held-out evaluation uses preference pairs.

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/kto.py --workdir=runs/kto

Reached (CPU, ~1 min): implicit-reward accuracy on held-out pairs eval/accuracy 0.82
(eval/gold_accuracy 0.83); eval/reward/gold_mean from 1.30 ± 0.04 (SFT samples) to 1.65 ± 0.04
over 256 prompts, win rate 0.64 against the SFT policy, eval/kl_mean 0.7 (beta=0.1: the same
gold reward at KL 2.3).
"""

from experiments.configs import dpo


def get_config():
    config = dpo.get_config()
    config.direct.loss = "kto"
    config.direct.beta = 0.5
    config.direct.kto_desirable_weight = 1.0
    config.direct.kto_undesirable_weight = 1.0
    return config
