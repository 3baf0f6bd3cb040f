"""Bradley–Terry reward model on the preference-language task (β_ann = 5: ≈ 7% flipped labels).

    python -m experiments.run --config=experiments/configs/rm_bt.py --workdir=runs/rm_bt

Measured (CPU, ~20 s; gpt2-tiny from scratch, 300 steps): eval/gold_accuracy 0.837 on
held-out same-prompt pairs (eval/accuracy 0.803 against their noisy labels,
eval/calibration_error 0.02), eval/spearman 0.73 per prompt and eval/bon_gain 0.99 of an oracle
1.12 (Best-of-4) on 256 held-out candidate sets. WORKDIR/export is a
``GPT2ForSequenceClassification`` directory. Starting from an SFT policy is much better: after
``sft.py``, ``--config.init_from=runs/sft/export`` (its params minus ``lm_head``, plus a fresh
score head) reaches eval/gold_accuracy 0.907.
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("reward_model")
    config.model = "gpt2-tiny"
    config.num_steps = 300
    config.batch_size = 32
    config.eval_every = 100
    config.data.task = "preference"
    config.data.num_train = 4096
    config.data.num_eval = 512
    config.data.max_length = 32
    config.optimizer.learning_rate = 1e-3
    config.reward_model.loss = "bradley_terry"
    config.reward_model.beta_ann = 5.0
    config.reward_model.pairing = "same_prompt"
    config.reward_model.num_eval_prompts = 256
    return config
