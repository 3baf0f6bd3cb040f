"""Hugging Face checkpoint I/O: export round trips, sharded files, old configs, clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_utils import (
    gpt2_config,
    hf_logits,
    llama_config,
    make_model,
    mistral_config,
    padded_batch,
    positions,
    qwen2_config,
    save,
)
from safetensors.numpy import load_file, save_file

from irl_jax.models import Transformer, preset
from irl_jax.models.heads import RewardModel
from irl_jax.models.hf import load_pretrained, load_tokenizer, save_pretrained

CAUSAL = {
    "gpt2": (transformers.GPT2LMHeadModel, gpt2_config),
    "llama": (transformers.LlamaForCausalLM, llama_config),
    "qwen2": (transformers.Qwen2ForCausalLM, qwen2_config),
    "mistral": (transformers.MistralForCausalLM, mistral_config),
}


def _init(model, config, ids, mask, seed=0):
    params = model.init(jax.random.key(seed), ids, mask)["params"]
    # Perturb every leaf so that norms and biases are not the trivial 1 / 0.
    leaves, tree = jax.tree.flatten(
        jax.tree.map(lambda x: x.unbox(), params, is_leaf=lambda x: hasattr(x, "unbox"))
    )
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("family", sorted(CAUSAL))
def test_causal_lm_export_round_trip(tmp_path, family):
    model_cls, config_fn = CAUSAL[family]
    config, _ = load_pretrained(save(make_model(model_cls, config_fn()), tmp_path / "src"))
    ids, mask = padded_batch(np.random.default_rng(0), [17, 9], 17, "left")
    params = _init(Transformer(config), config, ids, mask, seed=3)
    out = save_pretrained(str(tmp_path / "ours"), config, params)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert type(loaded).__name__ == type(make_model(model_cls, config_fn())).__name__
    ours = Transformer(config).apply({"params": params}, ids, mask).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(
        hf_logits(loaded, ids, mask)[real], np.asarray(ours)[real], atol=1e-4, rtol=0
    )
    # And back: our loader reads what we wrote, bit for bit.
    _, params_back = load_pretrained(out)
    jax.tree.map(np.testing.assert_array_equal, params_back, params)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reward_model_export_round_trip(tmp_path, family):
    config = preset(
        "llama-tiny",
        architecture=family,
        vocab_size=97,
        qkv_bias=family == "qwen2",
        pad_token_id=0,
        eos_token_ids=(2,),
    )
    ids, mask = padded_batch(np.random.default_rng(1), [12, 7, 2], 12, "right")
    params = _init(RewardModel(config), config, ids, mask)
    out = save_pretrained(str(tmp_path / "rm"), config, params)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="eager"
    )
    assert type(loaded).__name__.endswith("ForSequenceClassification")
    with torch.no_grad():
        expected = (
            loaded(
                input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions(mask), dtype=torch.long),
            )
            .logits[:, 0]
            .numpy()
        )
    rewards = RewardModel(config).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(expected, rewards, atol=1e-4, rtol=0)


@pytest.mark.parametrize("heads", [2, 3])
def test_ensemble_reward_model_reloads_with_its_head_count(tmp_path, heads):
    config = preset("llama-tiny", vocab_size=97)
    ids, mask = padded_batch(np.random.default_rng(2), [6, 3], 6, "right")
    params = _init(RewardModel(config, num_heads=heads), config, ids, mask)
    out = save_pretrained(str(tmp_path / "rm"), config, params)
    _, loaded = load_pretrained(out)
    assert loaded["score"]["kernel"].shape == (config.hidden_size, heads)
    np.testing.assert_array_equal(loaded["score"]["kernel"], params["score"]["kernel"])


def test_export_saves_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "a", "b"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    config = preset("gpt2-tiny", vocab_size=5)
    ids = jnp.zeros((1, 2), jnp.int32)
    params = _init(Transformer(config), config, ids, jnp.ones_like(ids))
    out = save_pretrained(str(tmp_path / "lm"), config, params, tokenizer=tok)
    assert load_tokenizer(out)("a b")["input_ids"] == [3, 4]


def test_sharded_index_and_scan_layers(tmp_path):
    model = make_model(transformers.LlamaForCausalLM, llama_config())
    path = save(model, tmp_path / "single")
    tensors = load_file(os.path.join(path, "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    index = {"weight_map": {n: f for f, part in shards.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "config.json").write_text((tmp_path / "single" / "config.json").read_text())

    config, params = load_pretrained(path)
    config_s, params_s = load_pretrained(str(sharded), scan_layers=True)
    assert config_s.scan_layers and params_s["layers"]["attn"]["q"]["kernel"].shape[0] == 2
    ids, mask = padded_batch(np.random.default_rng(2), [10, 4], 10, "left")
    np.testing.assert_allclose(
        Transformer(config_s).apply({"params": params_s}, ids, mask).logits,
        Transformer(config).apply({"params": params}, ids, mask).logits,
        atol=1e-5,
    )


def test_old_style_rope_config_and_unprefixed_gpt2(tmp_path):
    path = save(make_model(transformers.LlamaForCausalLM, llama_config()), tmp_path / "llama")
    config_new, _ = load_pretrained(path)
    hf = json.loads((tmp_path / "llama" / "config.json").read_text())
    rope = hf.pop("rope_parameters")
    hf["rope_theta"] = rope.pop("rope_theta")
    hf["rope_scaling"] = {**rope, "type": rope.pop("rope_type")}
    (tmp_path / "llama" / "config.json").write_text(json.dumps(hf))
    config_old, _ = load_pretrained(path)
    assert config_old == config_new

    path = save(make_model(transformers.GPT2LMHeadModel, gpt2_config()), tmp_path / "gpt2")
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    save_file(
        {k.removeprefix("transformer."): v for k, v in tensors.items()},
        file,
        metadata={"format": "pt"},
    )
    _, params = load_pretrained(path)
    np.testing.assert_array_equal(params["embed"]["embedding"], tensors["transformer.wte.weight"])


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(str(tmp_path))
    path = save(make_model(transformers.LlamaForCausalLM, llama_config()), tmp_path / "m")
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**hf, "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match="unsupported architecture.*BertModel"):
        load_pretrained(path)
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf))
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_pretrained(path)
    save(make_model(transformers.LlamaForCausalLM, llama_config()), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**hf, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="'model.layers.0.mlp.gate_proj.weight'.*shape"):
        load_pretrained(path)
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        (tmp_path / "m" / "config.json").write_text(
            json.dumps(
                {**hf, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}
            )
        )
        load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        load_tokenizer(str(tmp_path / "nope"))
