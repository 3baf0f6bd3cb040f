"""Alignment from demonstrations on ``preference_hetero``: ``afd.py``'s six stages with a
demonstrator whose style token ``indeed`` follows a rule on the prompt's distractor remark
(``indeed`` iff the remark's adjective is in a fixed half XOR its copula is ``was``:
``preference.RULE_PARTS``; gold ignores it), a feature of the demonstrations the SFT policy does
not reproduce (issue 19's testbed of demonstrator heterogeneity).

    python -m experiments.run --config=experiments/configs/afd_hetero.py --workdir=runs/afd_hetero
    python -m experiments.afd_best_of_n --task=preference_hetero --workdir=runs/afd_hetero \\
        --out=docs/afd_best_of_n_hetero

Measured (2 min 45 s, then 1 min, on 2 lightly loaded CPU cores): SFT eval/nll_gap 0.100 (its
samples follow the rule on 51 % of prompts with a remark, the demonstrations on 100 %); held-out
gold pair accuracy Init-Demo 0.768, SFT-Demo 0.527, Init-SFT 0.784 (closed form 0.820), BT
0.855; Best-of-16 (N = 1: 1.296 ± 0.005) Init-Demo 1.595 ± 0.019, SFT-Demo 1.156 ± 0.025,
Init-SFT 1.729 ± 0.015, closed form 1.859 ± 0.010, BT 2.082 ± 0.007. No reward rewards the rule:
the picks' rule agreement stays at 0.46–0.51. Discussion: the README's "Demonstrator
heterogeneity".
"""

from experiments.configs import afd

TASK = "preference_hetero"


def get_config():
    config = afd.get_config()
    for name in config.run:
        config.stages[name].data.task = TASK
    return config
