"""Decoder family: logits parity with `transformers`, padding, bf16, scan, compiles, gradients."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from hf_utils import (
    gpt2_config,
    hf_logits,
    llama_config,
    make_model,
    mistral_config,
    padded_batch,
    qwen2_config,
    save,
)

from irl_jax.models import Transformer, preset, stack_layers
from irl_jax.models.hf import load_pretrained
from irl_jax.models.transformer import rope_inv_freq, rope_tables

FAMILIES = {
    "gpt2": (transformers.GPT2LMHeadModel, gpt2_config),
    "llama": (transformers.LlamaForCausalLM, llama_config),
    "qwen2": (transformers.Qwen2ForCausalLM, qwen2_config),
    "mistral": (transformers.MistralForCausalLM, mistral_config),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    model_cls, config_fn = FAMILIES[request.param]
    model = make_model(model_cls, config_fn())
    return request.param, model, save(model, tmp_path_factory.mktemp(request.param))


def _forward(config, params, ids, mask):
    return Transformer(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers(checkpoint, side):
    name, model, path = checkpoint
    config, params = load_pretrained(path)
    assert config.architecture == name
    ids, mask = padded_batch(np.random.default_rng(1), [40, 23, 9, 1], 40, side)
    expected = hf_logits(model, ids, mask)
    logits = np.asarray(_forward(config, params, ids, mask).logits)
    assert logits.dtype == np.float32
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=0)


def test_llama_config_features_are_exercised(checkpoint):
    name, _, path = checkpoint
    config, params = load_pretrained(path)
    if name == "llama":
        assert config.num_kv_heads < config.num_heads and not config.tie_word_embeddings
        assert config.rope_theta == 500000.0 and config.rope_scaling.rope_type == "llama3"
        # Some frequencies lie in llama3's smoothed band (between high and low wavelengths).
        wavelen = 2 * np.pi / rope_inv_freq(config.replace(rope_scaling=None))
        assert np.any((wavelen > 32 / 4) & (wavelen < 32 / 1))
        assert "lm_head" in params
    if name == "gpt2":
        assert config.tie_word_embeddings and "lm_head" not in params
        assert params["layer_0"]["attn"]["qkv"]["kernel"].shape == (32, 3, 4, 8)


def test_padding_side_does_not_change_real_tokens(checkpoint):
    _, _, path = checkpoint
    config, params = load_pretrained(path)
    rng = np.random.default_rng(2)
    right_ids, right_mask = padded_batch(rng, [11, 5], 16, "right")
    left_ids, left_mask = np.zeros_like(right_ids), np.zeros_like(right_mask)
    for row in range(2):
        n = right_mask[row].sum()
        left_ids[row, 16 - n :], left_mask[row, 16 - n :] = right_ids[row, :n], 1
    right = np.asarray(_forward(config, params, right_ids, right_mask).logits)
    left = np.asarray(_forward(config, params, left_ids, left_mask).logits)
    for row in range(2):
        n = right_mask[row].sum()
        np.testing.assert_allclose(right[row, :n], left[row, 16 - n :], atol=1e-5)


def test_bf16_checkpoint_loads_and_runs_close_to_fp32(tmp_path):
    model = make_model(transformers.LlamaForCausalLM, llama_config())
    fp32_path = save(model, tmp_path / "fp32")
    bf16_path = save(model.to(transformers.modeling_utils.torch.bfloat16), tmp_path / "bf16")
    config32, params32 = load_pretrained(fp32_path)
    config16, params16 = load_pretrained(bf16_path, dtype="bfloat16", param_dtype="bfloat16")
    leaves = jax.tree.leaves(params16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
    # Stored bf16 values are exactly the bf16 rounding of the fp32 weights.
    np.testing.assert_array_equal(
        np.asarray(params16["embed"]["embedding"]),
        np.asarray(params32["embed"]["embedding"]).astype(jnp.bfloat16),
    )
    ids, mask = padded_batch(np.random.default_rng(3), [30, 12], 30, "left")
    lp32 = jax.nn.log_softmax(_forward(config32, params32, ids, mask).logits)
    out16 = _forward(config16, params16, ids, mask)
    assert out16.logits.dtype == jnp.float32 and out16.hidden_states.dtype == jnp.bfloat16
    lp16 = jax.nn.log_softmax(out16.logits)
    real = mask.astype(bool)
    # Stated tolerance: bf16 compute keeps log-probs within 0.1 nats (max) / 0.02 (mean) of fp32.
    diff = np.abs(np.asarray(lp16) - np.asarray(lp32))[real]
    assert diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_scan_layers_equals_unrolled(name):
    config = preset(name, num_layers=3)
    ids, mask = padded_batch(np.random.default_rng(4), [9, 4], 9, "left", vocab=500)
    params = Transformer(config).init(jax.random.key(0), ids, mask)["params"]
    params = jax.tree.map(
        lambda x: x.unbox() if hasattr(x, "unbox") else x,
        params,
        is_leaf=lambda x: hasattr(x, "unbox"),
    )
    scanned = config.replace(scan_layers=True)
    stacked = stack_layers(params, config.num_layers)
    assert stacked["layers"]["mlp_norm"]["scale"].shape[0] == 3
    unrolled = _forward(config, params, ids, mask)
    out = _forward(scanned, stacked, ids, mask)
    np.testing.assert_allclose(out.logits, unrolled.logits, atol=1e-6)
    # A scanned model initializes with stacked, logically annotated params.
    boxed = Transformer(scanned).init(jax.random.key(0), ids, mask)["params"]
    assert boxed["layers"]["attn"]["o"]["kernel"].names == ("layers", "heads", "head_dim", "embed")


def test_one_compile_per_shape():
    config = preset("llama-tiny")
    ids, mask = padded_batch(np.random.default_rng(5), [8, 3], 8, "left", vocab=500)
    params = Transformer(config).init(jax.random.key(0), ids, mask)["params"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, ids, mask):
        return Transformer(config).apply({"params": params}, ids, mask).logits

    for seed in range(3):
        ids, mask = padded_batch(np.random.default_rng(seed), [8, 2 + seed], 8, "left", vocab=500)
        forward(params, ids, mask).block_until_ready()


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_gradients_finite_with_fully_padded_row(name):
    config = preset(name)
    ids, mask = padded_batch(np.random.default_rng(6), [7, 0, 3], 7, "right", vocab=500)
    assert mask[1].sum() == 0
    params = Transformer(config).init(jax.random.key(0), ids, mask)["params"]

    def loss(params):
        logits = Transformer(config).apply({"params": params}, ids, mask).logits
        logp = jax.nn.log_softmax(logits)
        return -(jnp.take_along_axis(logp, ids[..., None], -1)[..., 0] * mask).sum()

    value, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(value)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_rope_tables_gathered_equal_direct_and_computed_once():
    """RoPE's cos / sin gathered from ``[num_positions, hd]`` tables are the directly computed
    values; a position past the tables reads NaN; and in a compiled gradient the cos runs on
    the table only, not once per head and layer inside the attention fusions."""
    config = preset("llama-tiny")
    positions = jnp.asarray([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    direct = rope_tables(config, positions)
    gathered = rope_tables(config, positions, num_positions=5)
    for a, b in zip(direct, gathered, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    past = rope_tables(config, positions, num_positions=4)[0]
    assert np.isnan(np.asarray(past)[1, 4]).all() and np.isfinite(np.asarray(past)[0]).all()

    ids, mask = padded_batch(np.random.default_rng(7), [6, 4], 6, "left", vocab=500)
    params = Transformer(config).init(jax.random.key(0), ids, mask)["params"]
    grad = jax.jit(
        jax.grad(lambda p: Transformer(config).apply({"params": p}, ids, mask).logits.sum())
    )
    hlo = grad.lower(params).compile().as_text()
    shapes = re.findall(r"= (f32\[[\d,]*\])\S* cosine\(", hlo)
    assert shapes == [f"f32[6,{config.head_dim}]"], shapes
