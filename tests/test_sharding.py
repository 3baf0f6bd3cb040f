"""Meshes, logical axis rules, and sharded forward passes equal to one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from hf_utils import make_model, padded_batch, qwen2_config, save
from jax.sharding import PartitionSpec as P

from irl_jax import sharding
from irl_jax.models import Transformer, preset
from irl_jax.models.hf import load_pretrained


def test_make_mesh_shapes_and_errors():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert dict(sharding.make_mesh({"data": -1}).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        sharding.make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="unknown axis \\['model'\\]"):
        sharding.make_mesh({"model": 2})
    with pytest.raises(ValueError, match="not divisible"):
        sharding.make_mesh({"data": -1, "tensor": 3})


def test_logical_to_spec_replicates_what_does_not_divide():
    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh_shape) == P(
        "fsdp", "tensor"
    )
    # One KV head over tensor=2: replicated instead of an error.
    assert sharding.logical_to_spec(
        ("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh_shape
    ) == P("fsdp")
    assert sharding.logical_to_spec(("act_batch", "act_length"), (8, 5), mesh_shape) == P(
        ("data", "fsdp")
    )
    assert sharding.logical_to_spec(("act_batch",), (2,), mesh_shape) == P()
    # Size-1 mesh axes are dropped from specs.
    assert sharding.logical_to_spec(("act_batch",), (8,), {"data": 8}) == P("data")


def _sharded_forward(config, params_fn, ids, mask):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params, shardings = params_fn(mesh)
    data = sharding.batch_sharding(mesh)
    forward = jax.jit(
        lambda p, i, m: Transformer(config).apply({"params": p}, i, m).logits,
        in_shardings=(shardings, data, data),
    )
    with jax.set_mesh(mesh):
        logits = forward(params, jax.device_put(ids, data), jax.device_put(mask, data))
    return params, logits


@pytest.mark.parametrize("name,kv_heads", [("llama-tiny", 1), ("llama-tiny", 2), ("gpt2-tiny", 4)])
def test_forward_on_222_mesh_equals_one_device(name, kv_heads):
    config = preset(name, num_kv_heads=kv_heads)
    ids, mask = padded_batch(np.random.default_rng(0), [9, 4, 7, 1], 9, "left", vocab=500)
    model = Transformer(config)
    init = lambda: model.init(jax.random.key(0), ids, mask)["params"]
    params, logits = _sharded_forward(
        config, lambda mesh: sharding.init_sharded(init, mesh), ids, mask
    )
    host_params = jax.device_get(params)
    expected = model.apply({"params": host_params}, ids, mask).logits
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=1e-5)
    assert logits.sharding.spec[0] == ("data", "fsdp")

    embed = params["embed"]["embedding"]
    assert embed.sharding.spec == P("tensor", "fsdp")
    assert embed.addressable_shards[0].data.shape == (256, 32)  # [512 / tensor, 64 / fsdp]
    if config.is_gpt2:
        assert params["layer_0"]["attn"]["qkv"]["kernel"].sharding.spec == P("fsdp", None, "tensor")
    else:
        assert params["layer_0"]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor")
        kv_spec = P("fsdp") if kv_heads == 1 else P("fsdp", "tensor")
        assert params["layer_0"]["attn"]["k"]["kernel"].sharding.spec == kv_spec
        assert params["layer_0"]["mlp"]["down"]["kernel"].sharding.spec == P("tensor", "fsdp")


def test_load_pretrained_directly_into_shardings(tmp_path):
    model = make_model(transformers.Qwen2ForCausalLM, qwen2_config())  # kv=1, tied, q/k/v bias
    path = save(model, tmp_path / "qwen2")
    config, host_params = load_pretrained(path)
    ids, mask = padded_batch(np.random.default_rng(1), [12, 5, 8, 3], 12, "right")
    params, logits = _sharded_forward(
        config,
        lambda mesh: (
            load_pretrained(path, mesh=mesh)[1],
            sharding.tree_shardings(
                jax.eval_shape(lambda: Transformer(config).init(jax.random.key(0), ids, mask))[
                    "params"
                ],
                mesh,
            ),
        ),
        ids,
        mask,
    )
    assert params["layer_1"]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert params["layer_1"]["attn"]["k"]["bias"].sharding.spec == P()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), host_params)
    expected = Transformer(config).apply({"params": host_params}, ids, mask).logits
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_constrain_is_a_no_op_without_mesh():
    x = jnp.ones((4, 3))
    assert sharding.constrain(x, ("act_batch", None)) is x
