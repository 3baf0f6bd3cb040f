"""DPO (Rafailov et al. 2023) from the SFT policy on the preference-language task.

Two steps (SFT, then DPO from its export):

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/dpo.py --workdir=runs/dpo

Reached (CPU, ~10 s of steps): held-out implicit-reward accuracy eval/accuracy 0.859 (against
gold: eval/gold_accuracy 0.90; 7% of the training labels disagree with gold); eval/reward/gold_mean
rises from 1.22 ± 0.04 (SFT samples, eval/ref_reward/gold_mean) to 1.75 ± 0.05 over 256 held-out
prompts, win rate 0.75 ± 0.03 against the SFT policy at eval/kl_mean 3.8. (With the earlier,
repeating evaluation prompts, beta=0.1 drifted 4x further, KL 16.8, for less: gold 1.51 ± 0.06.)
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("direct")
    config.init_from = "runs/sft/export"  # the SFT export of the first command
    config.num_steps = 200
    config.batch_size = 32
    config.eval_every = 100
    config.checkpoint_every = 100
    config.data.task = "preference"
    config.data.num_train = 4096  # preference pairs
    config.data.num_eval = 512
    config.data.max_length = 40
    config.optimizer.learning_rate = 1e-3
    config.direct.loss = "dpo"
    config.direct.beta = 0.5
    config.direct.beta_ann = 5.0  # annotator rationality: ~10% of labels disagree with gold
    config.direct.pairing = "same_prompt"
    return config
