"""IPO (Azar et al. 2023) from the SFT policy: the log-ratio margin regressed to 1/(2β), here on
per-token averaged log-ratios (the IPO authors' convention; ipo_average=False sums them).

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/ipo.py --workdir=runs/ipo

Reached (CPU, ~25 s): eval/accuracy 0.856 (eval/gold_accuracy 0.89; both from the same averaged
log-ratios the loss trains); eval/reward/gold_mean from 1.22 ± 0.04 (SFT samples) to 1.61 ± 0.06
over 256 held-out prompts, win rate 0.68 against the SFT policy, eval/kl_mean 5.3. (With the
earlier, repeating evaluation prompts: summed log-ratios, ipo_average=False, with beta=0.1
(target margin 5 nats) gave gold 1.64 ± 0.05 at KL 4.6; with beta=0.5 (target 1 nat) the policy
barely moved, KL 0.7.)
"""

from experiments.configs import dpo


def get_config():
    config = dpo.get_config()
    config.direct.loss = "ipo"
    config.direct.beta = 0.5  # τ: target per-token log-ratio margin 1/(2τ) = 1
    config.direct.ipo_average = True
    return config
