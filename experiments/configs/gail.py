"""GAIL (Jensen–Shannon, r = softplus(h) = −log(1 − D)) in ``airl.py``'s setting: the same weak
BC start, the same 128 demonstrations, the same discriminator and GRPO update.

    python -m experiments.run --config=experiments/configs/gail.py --workdir=runs/gail \\
        --config.init_from=runs/imitation_compare/bc_start/export

Reached (35 s on 2 idle CPU cores; see the README's "Adversarial IRL from demonstrations"):
gold −0.28 ± 0.04, reverse KL 20.88 ± 0.51, forward KL 9.03 ± 0.36,
91 % off support (start: 0.55, 14.73, 5.18, 69 %).
"""

from experiments.configs.airl import adversarial_config


def get_config():
    return adversarial_config("gail")
