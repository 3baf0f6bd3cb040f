"""Pre-training the *initial policy* on the preference task's base corpus (``Task.base_corpus``:
generic reviews of the task's language, prompt and response, the loss on every token): the
model that SFT and alignment from demonstrations (``afd.py``) start from, in place of a
pre-trained LM.

    python -m experiments.run --config=experiments/configs/pretrain.py --workdir=runs/pretrain

Then SFT from it: ``--config=experiments/configs/sft.py --config.init_from=runs/pretrain/export``.
Measured (~2 min on 2 shared CPU cores): eval/nll 1.57 nats/token on held-out base-corpus text.
Its samples follow the base distribution (uniform adjectives, any topic's nouns; the style token
in 3 % of them), far from the demonstrator's (see the README's "Rewards from demonstrations").
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("sft")
    config.sft.corpus = "base_corpus"
    config.model = "gpt2-tiny"
    config.num_steps = 400
    config.batch_size = 32
    config.eval_every = 200
    config.checkpoint_every = 200
    config.data.task = "preference"
    config.data.num_train = 8192
    config.data.num_eval = 1024
    config.data.max_length = 40
    config.optimizer.learning_rate = 3e-3
    return config
