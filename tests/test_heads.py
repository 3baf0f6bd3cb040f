"""Reward / value heads: last-token selection and sequence-classification parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_utils import llama_config, make_model, padded_batch, positions, qwen2_config, save

from irl_jax.models import preset
from irl_jax.models.heads import RewardModel, ValueModel, gather_last, last_token_index
from irl_jax.models.hf import load_pretrained


def test_last_token_index_left_right_and_empty():
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 0, 0])
    hidden = jnp.arange(4 * 5 * 2, dtype=jnp.float32).reshape(4, 5, 2)
    np.testing.assert_array_equal(gather_last(hidden, mask), hidden[jnp.arange(4), [2, 4, 0, 0]])


@pytest.mark.parametrize(
    "model_cls,config_fn",
    [
        (transformers.LlamaForSequenceClassification, llama_config),
        (transformers.Qwen2ForSequenceClassification, qwen2_config),
    ],
    ids=["llama", "qwen2"],
)
@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_classification_reward_parity(tmp_path, model_cls, config_fn, side):
    model = make_model(model_cls, config_fn(num_labels=1))
    config, params = load_pretrained(save(model, tmp_path / "rm"))
    assert set(params) == {"transformer", "score"}
    ids, mask = padded_batch(np.random.default_rng(0), [20, 13, 5, 1], 20, side)
    with torch.no_grad():
        expected = (
            model(
                input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions(mask), dtype=torch.long),
            )
            .logits[:, 0]
            .numpy()
        )
    rewards = RewardModel(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert rewards.shape == (4,) and rewards.dtype == jnp.float32
    np.testing.assert_allclose(rewards, expected, atol=1e-4, rtol=0)
    assert np.std(expected) > 1e-2  # rewards differ across rows: the test can fail


def test_ensemble_and_value_heads():
    config = preset("llama-tiny")
    ids, mask = padded_batch(np.random.default_rng(1), [6, 3], 6, "left", vocab=500)
    ensemble = RewardModel(config, num_heads=4)
    variables = ensemble.init(jax.random.key(0), ids, mask)
    rewards = ensemble.apply(variables, ids, mask)
    assert rewards.shape == (2, 4)
    assert variables["params"]["score"]["kernel"].names == ("embed", "reward_heads")
    assert len(np.unique(np.round(np.asarray(rewards[0]), 6))) == 4  # members differ
    # The ensemble reads the same backbone: member k equals a scalar head with column k.
    single = dict(variables["params"])
    single["score"] = {"kernel": variables["params"]["score"]["kernel"].unbox()[:, 2:3]}
    np.testing.assert_allclose(
        RewardModel(config).apply({"params": single}, ids, mask), rewards[:, 2], atol=1e-6
    )
    values = ValueModel(config)
    variables = values.init(jax.random.key(0), ids, mask)
    assert values.apply(variables, ids, mask).shape == (2, 6)
