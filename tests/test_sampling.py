"""KV-cache sampler: HF greedy parity, log-probs, filtered frequencies, EOS, mesh, compiles."""

import jax
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from hf_utils import (
    gpt2_config,
    llama_config,
    make_model,
    mistral_config,
    padded_batch,
    qwen2_config,
    save,
)
from jax_utils import count_compiles

from irl_jax import sharding
from irl_jax.models import Transformer, preset, stack_layers
from irl_jax.models.hf import load_pretrained
from irl_jax.sampling import repeat_prompts, sample, teacher_forced_logprobs

FAMILIES = {
    "gpt2": (transformers.GPT2LMHeadModel, gpt2_config),
    "llama": (transformers.LlamaForCausalLM, llama_config),
    "qwen2": (transformers.Qwen2ForCausalLM, qwen2_config),
    "mistral": (transformers.MistralForCausalLM, mistral_config),
}
PAD = 0


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """``init_range -> (hf_model, config, params)`` for one family: tiny random HF models.

    A large init range (0.5) gives wide logit gaps, so greedy near-ties are rare; fp32 round-off
    grows with it (~1e-4 in log-probs at 0.5, for a full forward as much as for the cache path),
    so the log-prob tests use 0.1.
    """
    model_cls, config_fn = FAMILIES[request.param]
    built = {}

    def build(init_range: float):
        if init_range not in built:
            model = make_model(model_cls, config_fn(initializer_range=init_range))
            path = save(model, tmp_path_factory.mktemp(f"{request.param}_{init_range}"))
            built[init_range] = (model, *load_pretrained(path))
        return built[init_range]

    return build


def _prompts(seed=0, lengths=(9, 3, 6, 1, 8, 2, 5, 9)):
    return padded_batch(np.random.default_rng(seed), list(lengths), max(lengths), "left")


def _first_stop(ids: np.ndarray, eos_ids) -> np.ndarray:
    """Index of each row's first stop token (N if none)."""
    hit = np.isin(ids, eos_ids)
    return np.where(hit.any(-1), hit.argmax(-1), ids.shape[1])


def _hf_greedy(model, ids, mask, max_new_tokens, eos_ids):
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=PAD,
            eos_token_id=list(eos_ids),
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences.numpy()[:, ids.shape[1] :]
    top2 = np.sort(torch.stack(out.logits, 1).float().numpy(), axis=-1)[..., -2:]
    return tokens, top2[..., 1] - top2[..., 0]


def test_greedy_matches_transformers_generate(checkpoint):
    model, config, params = checkpoint(0.5)
    ids, mask = _prompts()
    n = 20
    free, _ = _hf_greedy(model, ids, mask, n, eos_ids=())
    # Two stop ids that the rows actually emit mid-way, so rows stop at different steps.
    eos_ids = (int(free[0, n // 3]), int(free[1, n // 2]))
    hf_tokens, hf_gap = _hf_greedy(model, ids, mask, n, eos_ids)
    out = jax.device_get(
        sample(config, params, ids, mask, max_new_tokens=n, greedy=True, eos_ids=eos_ids)
    )
    stop = _first_stop(hf_tokens, eos_ids)
    assert len(set(stop.tolist())) >= 3, stop  # rows stop independently
    hf_mask = (np.arange(n)[None] <= stop[:, None]).astype(np.int32)
    hf_ids = np.full((len(ids), n), PAD)
    generated = hf_tokens.shape[1]  # HF stops once every row has stopped
    hf_ids[:, :generated] = np.where(hf_mask[:, :generated], hf_tokens, PAD)

    # Compare up to the first live step where HF's own top-2 logit gap is a near-tie (rare).
    near_tie = (hf_gap < 1e-5) & hf_mask[:, :generated].astype(bool)
    assert near_tie.sum() <= 1, near_tie.sum()
    cut = np.where(near_tie.any(-1), near_tie.argmax(-1), n)
    for row in range(len(ids)):
        np.testing.assert_array_equal(out.response_ids[row, : cut[row]], hf_ids[row, : cut[row]])
        np.testing.assert_array_equal(out.response_mask[row, : cut[row]], hf_mask[row, : cut[row]])
    np.testing.assert_array_equal(out.sampling_logprobs, 0.0)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _filtered_logprobs(logits, temperature, top_k, top_p):
    """Exact log-probs ``[..., V]`` of the filtered sampling distribution (-inf = removed)."""
    logps = _log_softmax(logits.astype(np.float64) / temperature)
    flat = logps.reshape(-1, logps.shape[-1])
    out = np.full_like(flat, -np.inf)
    for row, lp in enumerate(flat):
        order = np.argsort(-lp, kind="stable")
        keep = order[: top_k or len(order)]
        probs = np.exp(lp[keep] - np.logaddexp.reduce(lp[keep]))
        keep = keep[: np.searchsorted(np.cumsum(probs), top_p) + 1]  # smallest set with mass ≥ p
        out[row, keep] = lp[keep] - np.logaddexp.reduce(lp[keep])
    return out.reshape(logps.shape)


def test_both_logprob_fields_equal_teacher_forced_forward(checkpoint):
    _, config, params = checkpoint(0.1)
    ids, mask = _prompts(seed=1)
    n, temperature, top_k, top_p = 12, 0.7, 10, 0.9
    out = jax.device_get(
        sample(
            config,
            params,
            ids,
            mask,
            rng=jax.random.key(3),
            max_new_tokens=n,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_ids=(),  # masks after a stop are tested in test_rows_stop_independently_at_any_eos
        )
    )
    real = out.response_mask.astype(bool)
    assert real.all()
    full_ids = np.concatenate([ids, out.response_ids], 1)
    full_mask = np.concatenate([mask, out.response_mask], 1)
    logits = np.asarray(Transformer(config).apply({"params": params}, full_ids, full_mask).logits)
    logits = logits[:, ids.shape[1] - 1 : -1]  # the logits that predict each response token
    tokens = out.response_ids[..., None]
    expected = np.take_along_axis(_log_softmax(logits / temperature), tokens, -1)[..., 0]
    np.testing.assert_allclose(out.response_logprobs[real], expected[real], atol=1e-5)
    filtered = _filtered_logprobs(logits, temperature, top_k, top_p)
    expected_sampling = np.take_along_axis(filtered, tokens, -1)[..., 0]
    np.testing.assert_allclose(out.sampling_logprobs[real], expected_sampling[real], atol=1e-5)
    assert np.all(out.sampling_logprobs[real] > out.response_logprobs[real] - 1e-6)
    scored = teacher_forced_logprobs(
        config, params, ids, mask, out.response_ids, out.response_mask, temperature=temperature
    )
    np.testing.assert_allclose(np.asarray(scored), out.response_logprobs, atol=1e-5)


@pytest.fixture(scope="module")
def small_vocab_model():
    """llama-tiny with 16 tokens; top token ~0.3, the rest spread (so filters cut real mass)."""
    config = preset("llama-tiny", vocab_size=16, eos_token_ids=(2,), pad_token_id=PAD)
    ids = np.array([[0, 7, 3], [4, 9, 11]], np.int32)
    mask = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
    params = sharding.unbox(Transformer(config).init(jax.random.key(0), ids, mask)["params"])
    params["embed"]["embedding"] = params["embed"]["embedding"] * 2.0
    return config, params, ids, mask


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.8, 8, 0.7)]
)
def test_token_frequencies_match_filtered_distribution(
    small_vocab_model, temperature, top_k, top_p
):
    config, params, ids, mask = small_vocab_model
    logits = Transformer(config).apply({"params": params}, ids, mask).logits[:, -1]
    expected_logps = _filtered_logprobs(np.asarray(logits), temperature, top_k, top_p)
    expected = np.exp(expected_logps)
    draws = 10_000
    group_ids, group_mask = repeat_prompts(ids, mask, draws)
    out = sample(
        config,
        params,
        group_ids,
        group_mask,
        rng=jax.random.key(0),
        max_new_tokens=1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    tokens = np.asarray(out.response_ids[:, 0]).reshape(2, draws)
    for row in range(2):
        support = expected[row] > 0
        assert 1 < support.sum() < (16 if top_k or top_p < 1 else 17)
        counts = np.bincount(tokens[row], minlength=16)
        assert counts[~support].sum() == 0  # nothing outside the filtered support
        result = scipy.stats.chisquare(counts[support], draws * expected[row][support])
        assert result.pvalue > 1e-3, (row, counts, draws * expected[row])
    # Log-probs are exact, per draw.
    flat_expected = np.repeat(expected_logps, draws, axis=0)
    picked = np.take_along_axis(flat_expected, tokens.reshape(-1, 1), -1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.sampling_logprobs[:, 0]), picked, atol=1e-5)


def test_rows_stop_independently_at_any_eos(small_vocab_model):
    config, params, ids, mask = small_vocab_model
    ids, mask = repeat_prompts(ids, mask, 4)  # 8 rows
    kwargs = dict(rng=jax.random.key(7), max_new_tokens=10, temperature=1.0)
    free = jax.device_get(sample(config, params, ids, mask, eos_ids=(), **kwargs))
    assert free.response_mask.all()
    # Two stop ids that occur mid-way; rows then stop at their first occurrence of either.
    eos_ids = (int(free.response_ids[0, 3]), int(free.response_ids[1, 5]))
    stop = _first_stop(free.response_ids, eos_ids)
    assert len(set(stop.tolist())) >= 3 and stop.min() < 10, stop
    out = jax.device_get(sample(config, params, ids, mask, eos_ids=eos_ids, **kwargs))
    expected_mask = (np.arange(10)[None] <= stop[:, None]).astype(np.int32)
    np.testing.assert_array_equal(out.response_mask, expected_mask)
    real = expected_mask.astype(bool)
    np.testing.assert_array_equal(out.response_ids[real], free.response_ids[real])
    np.testing.assert_array_equal(out.response_ids[~real], PAD)
    np.testing.assert_array_equal(out.response_logprobs[real], free.response_logprobs[real])
    np.testing.assert_array_equal(out.response_logprobs[~real], 0.0)
    # Every token a stop token: every row stops after one token (and the loop exits early).
    everything = tuple(range(16))
    first = jax.device_get(sample(config, params, ids, mask, eos_ids=everything, **kwargs))
    np.testing.assert_array_equal(first.response_mask, np.eye(1, 10, dtype=np.int32).repeat(8, 0))
    np.testing.assert_array_equal(first.response_ids[:, 0], free.response_ids[:, 0])
    # Default stop ids come from the config (eos_token_ids=(2,)).
    default = jax.device_get(sample(config, params, ids, mask, **kwargs))
    np.testing.assert_array_equal(
        default.response_mask,
        (np.arange(10)[None] <= _first_stop(free.response_ids, (2,))[:, None]),
    )


def test_sharded_greedy_equals_one_device_and_compiles_once():
    config = preset("llama-tiny", num_kv_heads=2, eos_token_ids=(), pad_token_id=PAD)
    ids, mask = padded_batch(np.random.default_rng(0), [9, 4, 7, 1, 3, 8, 2, 6], 9, "left", 500)
    model = Transformer(config)
    init = lambda: model.init(jax.random.key(0), ids, mask)["params"]
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params, _ = sharding.init_sharded(init, mesh)
    params = jax.tree.map(lambda x: x * 20.0 if x.ndim > 1 else x, params)  # wide logit gaps
    host_params = jax.device_get(params)
    kwargs = dict(max_new_tokens=8, greedy=True)
    expected = sample(config, host_params, ids, mask, **kwargs)
    data = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        out = sample(
            config, params, jax.device_put(ids, data), jax.device_put(mask, data), **kwargs
        )
        assert out.response_ids.sharding.spec[0] == ("data", "fsdp")
        other_ids = jax.device_put(np.roll(ids, 1, axis=0), data)
        other_mask = jax.device_put(np.roll(mask, 1, axis=0), data)
        with count_compiles() as compiles:
            again = sample(config, params, other_ids, other_mask, **kwargs)
            jax.block_until_ready(again)
    assert not compiles, "sampling recompiled for new data of the same shape"
    np.testing.assert_array_equal(np.asarray(out.response_ids), np.asarray(expected.response_ids))
    # Sharded reductions sum in another order; logits here are ~10x those of the parity tests.
    np.testing.assert_allclose(
        np.asarray(out.response_logprobs), np.asarray(expected.response_logprobs), atol=1e-4
    )
    np.testing.assert_array_equal(
        np.asarray(again.response_ids), np.roll(expected.response_ids, 1, 0)
    )


def test_temperature_and_top_p_changes_do_not_recompile(small_vocab_model):
    config, params, ids, mask = small_vocab_model
    kwargs = dict(rng=jax.random.key(1), max_new_tokens=4, top_k=4)
    sample(config, params, ids, mask, temperature=0.5, top_p=0.9, **kwargs)
    with count_compiles() as compiles:
        jax.block_until_ready(
            sample(config, params, ids, mask, temperature=2.0, top_p=0.3, **kwargs)
        )
        jax.block_until_ready(
            sample(config, params, ids + 1, mask, temperature=1.0, top_p=0.6, **kwargs)
        )
    assert not compiles


def test_repeat_prompts_groups_rows_consecutively():
    ids = np.array([[0, 5], [6, 7]])
    mask = np.array([[0, 1], [1, 1]])
    group_ids, group_mask = repeat_prompts(ids, mask, 3)
    np.testing.assert_array_equal(group_ids, [[0, 5]] * 3 + [[6, 7]] * 3)
    np.testing.assert_array_equal(group_mask, [[0, 1]] * 3 + [[1, 1]] * 3)
    with pytest.raises(ValueError, match="group_size"):
        repeat_prompts(ids, mask, 0)


def test_invalid_settings_raise(small_vocab_model):
    config, params, ids, mask = small_vocab_model
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="top_p"):
        sample(config, params, ids, mask, rng=key, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="rng"):
        sample(config, params, ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="greedy=True"):
        sample(config, params, ids, mask, rng=key, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="left-padded"):
        sample(config, params, ids, mask[:, ::-1], rng=key, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(config, params, ids, mask, rng=key, max_new_tokens=0)
    gpt2 = preset("gpt2-tiny", max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sample(gpt2, params, ids, mask, rng=key, max_new_tokens=7)


def test_scanned_layers_and_bf16_sample(small_vocab_model):
    config, params, ids, mask = small_vocab_model
    kwargs = dict(max_new_tokens=6, greedy=True, eos_ids=())
    unrolled = sample(config, params, ids, mask, **kwargs)
    scanned = sample(
        config.replace(scan_layers=True),
        stack_layers(params, config.num_layers),
        ids,
        mask,
        **kwargs,
    )
    np.testing.assert_array_equal(
        np.asarray(scanned.response_ids), np.asarray(unrolled.response_ids)
    )
    np.testing.assert_allclose(
        np.asarray(scanned.response_logprobs), np.asarray(unrolled.response_logprobs), atol=1e-6
    )
    bf16 = sample(config.replace(dtype="bfloat16"), params, ids, mask, **kwargs)
    assert bf16.response_logprobs.dtype == np.float32
    assert np.all(np.asarray(bf16.response_logprobs) <= 0.0)
