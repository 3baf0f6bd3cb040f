"""Embedding reward models: 8 MLP heads (vmapped seeds) on a frozen backbone's cached embeddings.

    python -m experiments.run --config=experiments/configs/rm_embedding.py \
        --workdir=runs/rm_embedding

The backbone defaults to a randomly initialized gpt2-tiny (no prior stage needed); an SFT policy
is the better backbone:

    python -m experiments.run --config=experiments/configs/sft.py --workdir=runs/sft
    python -m experiments.run --config=experiments/configs/rm_embedding.py \
        --workdir=runs/rm_embedding_sft --config.init_from=runs/sft/export

Embeddings (last-token hidden states) are computed once and cached in WORKDIR/embedding_cache
(``--config.embedding_rm.cache_dir`` shares a cache across runs; a rerun, another β_ann or
another loss on the same sequences reuses it). Measured (CPU, ~15 s, of which ~3 s train the 8
heads; β_ann = 5): eval/gold_accuracy 0.698 ± 0.011 (mean ± std over the 8 seeds; their uniform
ensemble eval/ensemble_gold_accuracy 0.697) with the random backbone, 0.700 ± 0.006 with the SFT
backbone (a fine-tuned decoder RM reaches 0.84 from scratch and 0.91 from the SFT policy:
rm_bt.py). With the earlier, repeating evaluation prompts (no distractor remarks) the SFT
backbone gave 0.78 ± 0.005.
"""

from irl_jax.algorithms import experiment_config


def get_config():
    config = experiment_config("embedding_rm")
    config.model = "gpt2-tiny"
    config.num_steps = 400
    config.batch_size = 64
    config.eval_every = 0
    config.data.task = "preference"
    config.data.num_train = 4096
    config.data.num_eval = 512
    config.data.max_length = 32
    config.optimizer.learning_rate = 1e-3
    config.embedding_rm.loss = "bradley_terry"
    config.embedding_rm.beta_ann = 5.0
    config.embedding_rm.head_hidden = 64
    config.embedding_rm.num_seeds = 8
    config.embedding_rm.num_eval_prompts = 256
    return config
