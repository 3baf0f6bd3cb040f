"""Reward sources: one interface, jittable, with hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from jax_utils import count_compiles
from tokenizers import Tokenizer, models, pre_tokenizers

from irl_jax import rewards

PROMPT_IDS = jnp.array([[0, 3, 4], [5, 6, 7]])
PROMPT_MASK = jnp.array([[0, 1, 1], [1, 1, 1]])
RESPONSE_IDS = jnp.array([[4, 2, 0, 0], [3, 3, 3, 3]])
RESPONSE_MASK = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
BATCH = (PROMPT_IDS, PROMPT_MASK, RESPONSE_IDS, RESPONSE_MASK)


def tokenizer():
    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "a", "b", "c", "d", "e"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def test_length_overlong_and_weighted_sum():
    np.testing.assert_allclose(rewards.length_penalty(0.5)(*BATCH), [-1.0, -2.0])
    np.testing.assert_allclose(rewards.overlong(max_length=4, buffer=2)(*BATCH), [0.0, -1.0])
    combined = rewards.weighted_sum(
        [(2.0, rewards.length_penalty(1.0)), (1.0, rewards.overlong(4, 2))]
    )
    np.testing.assert_allclose(jax.jit(combined)(*BATCH), [-4.0, -9.0])


def test_verifier_runs_on_text_inside_jit():
    seen = []

    def check(prompts, responses):
        seen.append((prompts, responses))
        return [float(r == "b") for r in responses]

    fn = jax.jit(rewards.verifier(check, tokenizer()))
    np.testing.assert_allclose(fn(*BATCH), [1.0, 0.0])
    assert seen[-1] == (["a b", "c d e"], ["b", "a a a a"])


def test_reward_model_source_sees_prompt_then_response():
    def apply_fn(params, ids, mask):
        return params * jnp.sum(ids * mask, axis=-1).astype(jnp.float32)

    fn = rewards.reward_model(apply_fn, jnp.float32(0.5))
    np.testing.assert_allclose(fn(*BATCH), [0.5 * (3 + 4 + 4 + 2), 0.5 * (5 + 6 + 7 + 12)])
    ensemble = rewards.reward_model(
        lambda p, ids, mask: jnp.stack([apply_fn(p, ids, mask), -apply_fn(p, ids, mask)], -1),
        jnp.float32(1.0),
        aggregation="wco",
    )
    np.testing.assert_allclose(ensemble(*BATCH), [-13.0, -30.0])


def test_learned_reward_params_are_jit_arguments_not_constants():
    """A learned source passes through ``jit`` as a pytree: new params, same compiled function;
    a weighted sum keeps its learned term's params as leaves."""
    apply_fn = lambda p, ids, mask: p["w"] * jnp.sum(ids * mask, axis=-1).astype(jnp.float32)
    score = jax.jit(rewards.call)
    first = rewards.reward_model(apply_fn, {"w": jnp.float32(0.5)})
    np.testing.assert_allclose(score(first, *BATCH), [6.5, 15.0])
    with count_compiles() as compiles:
        second = rewards.reward_model(apply_fn, {"w": jnp.float32(2.0)})
        np.testing.assert_allclose(score(second, *BATCH), [26.0, 60.0])
    assert compiles == []
    mixed = rewards.weighted_sum([(1.0, second), (2.0, rewards.length_penalty(1.0))])
    assert len(jax.tree.leaves(mixed)) == 1  # the learned term's w; the penalty is static
    np.testing.assert_allclose(score(mixed, *BATCH), [26.0 - 4.0, 60.0 - 8.0])
    assert jax.tree.leaves(rewards.as_pytree(rewards.length_penalty(1.0))) == []


def test_running_normalization_matches_numpy():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, n).astype(np.float32) for n in (5, 17, 8)]
    stats = rewards.RunningStats.create()
    for chunk in chunks:
        stats, normalized = rewards.normalize(stats, jnp.asarray(chunk))
    everything = np.concatenate(chunks)
    np.testing.assert_allclose(stats.count, 30)
    np.testing.assert_allclose(stats.mean, everything.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats.variance, everything.var(ddof=1), rtol=1e-4)
    np.testing.assert_allclose(
        normalized, (chunks[-1] - everything.mean()) / everything.std(ddof=1), rtol=1e-4
    )


def test_process_reward_reads_step_boundaries_not_the_eos():
    """A PRM scores a response by its step-boundary scores (token 9 closes a step): mean, min or
    last; a response without a boundary falls back to its last non-EOS token. The EOS score is
    never read."""
    scores = jnp.array([[0.5, -1.0, 2.0, 7.0, 9.0], [3.0, 4.0, 9.0, 9.0, 9.0]])
    ids = jnp.array([[5, 9, 6, 9, 2], [5, 6, 2, 0, 0]])  # row 1: no step boundary
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    step = lambda how: rewards.step_scores(
        scores, ids, mask, step_token_id=9, aggregation=how, eos_ids=(2,)
    )
    np.testing.assert_allclose(step("mean"), [3.0, 4.0])  # (−1 + 7) / 2; row 1: token 6
    np.testing.assert_allclose(step("min"), [-1.0, 4.0])
    np.testing.assert_allclose(step("last"), [7.0, 4.0])


def test_a_process_reward_model_export_is_loaded_as_a_step_scorer(tmp_path):
    """``load_reward_model`` on an export with the PRM marker returns a ``ProcessReward`` whose
    score equals ``step_scores`` of the PRM's token scores; without the marker the same weights
    are a sequence reward model (the score at the last token)."""
    import json

    from irl_jax import sharding
    from irl_jax.models import preset
    from irl_jax.models.heads import RewardModel, TokenRewardModel
    from irl_jax.models.hf import save_pretrained

    cfg = preset("llama-tiny", vocab_size=16, num_layers=1, pad_token_id=0, eos_token_ids=(2,))
    ids0 = jnp.zeros((1, 2), jnp.int32)
    params = sharding.unbox(TokenRewardModel(cfg).init(jax.random.key(0), ids0, ids0 + 1)["params"])
    path = str(tmp_path / "prm")
    save_pretrained(path, cfg, params)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    prompt_ids, prompt_mask = jnp.array([[3, 4]]), jnp.array([[1, 1]])
    response_ids, response_mask = jnp.array([[5, 9, 6, 9, 2]]), jnp.ones((1, 5), jnp.int32)
    batch = (prompt_ids, prompt_mask, response_ids, response_mask)
    plain = rewards.load_reward_model(path, mesh=mesh, vocab_size=16)
    assert isinstance(plain, rewards.LearnedReward)
    ids = jnp.concatenate([prompt_ids, response_ids], 1)
    last = RewardModel(cfg).apply({"params": params}, ids, jnp.ones_like(ids))
    np.testing.assert_allclose(plain(*batch), last, rtol=1e-5)
    with open(f"{path}/{rewards.PROCESS_MARKER}", "w") as f:
        json.dump({"kind": "process", "step_token_id": 9}, f)
    prm = rewards.load_reward_model(path, mesh=mesh, vocab_size=16, step_aggregation="min")
    assert isinstance(prm, rewards.ProcessReward)
    token_scores = TokenRewardModel(cfg).apply({"params": params}, ids, jnp.ones_like(ids))[:, 2:]
    expected = rewards.step_scores(
        token_scores, response_ids, response_mask, step_token_id=9, aggregation="min", eos_ids=(2,)
    )
    np.testing.assert_allclose(jax.jit(rewards.call)(prm, *batch), expected, rtol=1e-5)
    assert float(expected[0]) == float(jnp.minimum(token_scores[0, 1], token_scores[0, 3]))
    assert not np.isclose(float(expected[0]), float(last[0]))  # not the EOS score
