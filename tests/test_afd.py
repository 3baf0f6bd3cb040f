"""AfD: the closed-form log-ratio reward equals the difference of two models' sequence
log-probs; the base-corpus pre-training data; the two response sets, a trained classifier and
its export as a reward source, end to end on tiny random policies; config errors; the style toggle
the Best-of-N comparison uses (``tasks.preference.toggle_style``: tests import no experiment
script, whose absl flags would collide with ``experiments.run``'s in one process)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_jax import rewards, sharding
from irl_jax.algorithms import afd, experiment_config, sft, validate_config
from irl_jax.algorithms import setup as setup_lib
from irl_jax.config import ConfigError
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.policy_rewards import LogRatio
from irl_jax.tasks import STYLE_TOKEN, build_tokenizer

TOKENIZER = build_tokenizer()


def random_params(cfg, seed):
    ids = jnp.zeros((1, 2), jnp.int32)
    init = Transformer(cfg).init(jax.random.key(seed), ids, jnp.ones_like(ids))
    return sharding.unbox(init["params"])


def sequence_logp(cfg, params, prompt_ids, prompt_mask, response_ids, response_mask):
    """Σ log softmax(logits)[next token] over the response, from one forward, by hand."""
    ids = jnp.concatenate([prompt_ids, response_ids], 1)
    mask = jnp.concatenate([prompt_mask, response_mask], 1)
    logits = Transformer(cfg).apply({"params": params}, ids, mask).logits
    logps = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logps, ids[:, 1:, None], axis=-1)[..., 0]
    target = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], 1)[:, 1:]
    return jnp.sum(picked * target, axis=-1)


def test_log_ratio_is_the_difference_of_sequence_logprobs():
    cfg = model_source.resolve_config("gpt2-tiny", tokenizer=TOKENIZER)
    sft_params, init_params = random_params(cfg, 0), random_params(cfg, 1)
    config = experiment_config("sft")
    config.data.max_length = 40
    prompts = setup_lib.prompt_arrays(config, TOKENIZER, 6, 0)
    rng = np.random.default_rng(0)
    response_ids = jnp.asarray(rng.integers(5, 60, (6, 7)), jnp.int32)
    response_mask = jnp.asarray([[1] * k + [0] * (7 - k) for k in (7, 5, 3, 1, 6, 2)])
    rows = (prompts["prompt_ids"], prompts["prompt_mask"], response_ids, response_mask)
    source = rewards.as_pytree(LogRatio(sft_params, init_params, cfg, cfg))
    assert isinstance(source, LogRatio)  # a pytree: the params are arguments of the jit
    reward = jax.jit(rewards.call)(source, *rows)
    expected = sequence_logp(cfg, sft_params, *rows) - sequence_logp(cfg, init_params, *rows)
    np.testing.assert_allclose(reward, expected, rtol=1e-5, atol=1e-5)
    assert np.std(np.asarray(expected)) > 0.1  # the two models differ
    half = LogRatio(sft_params, init_params, cfg, cfg, beta=0.5)
    np.testing.assert_allclose(half(*rows), 0.5 * reward, rtol=1e-5, atol=1e-5)


def test_base_corpus_pretraining_data():
    config = experiment_config("sft")
    config.sft.corpus = "base_corpus"
    config.data.num_train, config.data.num_eval, config.data.max_length = 32, 8, 40
    validate_config(config)
    train, held_out = sft.load_data(config, TOKENIZER)
    assert len(train["input_ids"]) == 32 and len(held_out["input_ids"]) == 8
    ids, mask, loss = (train[k][0] for k in ("input_ids", "attention_mask", "loss_mask"))
    prompt = setup_lib.task_of(config).prompts(1, config.data.seed)[0]
    assert TOKENIZER.decode(ids[mask > 0]).startswith(prompt + " ")  # prompt, then a response
    # The loss covers every token (prompt text included) but the first, which nothing predicts.
    np.testing.assert_array_equal(loss[1:], mask[1:])
    assert loss[0] == 0
    config.data.task, config.data.path = "", "somewhere.jsonl"
    with pytest.raises(ConfigError, match="sft.corpus: base_corpus needs a synthetic task"):
        sft.validate(config)


def export_random_policy(path, seed):
    cfg = model_source.resolve_config("gpt2-tiny", tokenizer=TOKENIZER)
    mesh = sharding.make_mesh({"data": -1})
    params = jax.device_put(random_params(cfg, seed), sharding.replicated(mesh))
    setup_lib.export_model(str(path), cfg, params, TOKENIZER)
    return str(path)


def afd_config(positive, negative, init_from=""):
    config = experiment_config("afd")
    config.init_from = init_from
    config.num_steps = 3
    config.batch_size = 16
    config.eval_every = 0
    config.log_every = 1
    config.data.num_train = 32
    config.data.num_eval = 32
    config.data.max_length = 40
    config.sampling.max_new_tokens = 16
    config.afd.update(positive=positive, negative=negative, num_eval_prompts=16, k=2)
    return config


def test_init_sft_end_to_end_on_random_policies(tmp_path):
    init = export_random_policy(tmp_path / "init", 1)
    policy = export_random_policy(tmp_path / "sft", 2)
    config = afd_config(policy, init, init_from=policy)
    validate_config(config)
    setup = setup_lib.setup(config)
    pairs = afd.training_pairs(setup)
    # The prompts padded to their longest (not to the 40-token budget), then 16 new tokens.
    width = setup_lib.prompt_arrays(config, TOKENIZER, 32, config.data.seed)["prompt_ids"].shape[1]
    assert width < 40 and pairs["chosen_input_ids"].shape == (32, width + 16)
    # Both sides: the same left-padded prompt, then the response.
    np.testing.assert_array_equal(
        pairs["chosen_input_ids"][:, :width], pairs["rejected_input_ids"][:, :width]
    )
    assert np.all(pairs["chosen_loss_mask"][:, :width] == 0)
    metrics = afd.train(config, str(tmp_path / "run"))
    for key in ("eval/gold_accuracy", "eval/bon_gain", "eval/style_effect"):
        assert np.isfinite(metrics[key]), key
    assert "eval/log_ratio/gold_accuracy" in metrics
    # The export is a reward source like any reward model's.
    source = rewards.load_reward_model(
        str(tmp_path / "run" / "export"), mesh=setup.mesh, vocab_size=setup.model_config.vocab_size
    )
    prompts = setup_lib.prompt_arrays(config, TOKENIZER, 4, 0)
    scores = source(
        prompts["prompt_ids"], prompts["prompt_mask"], prompts["prompt_ids"], prompts["prompt_mask"]
    )
    assert scores.shape == (4,) and np.all(np.isfinite(scores))


def test_demonstration_side_matches_the_task(tmp_path):
    config = afd_config("demonstrations", "unused")
    responses = afd.demonstration_responses(config, TOKENIZER, 8, config.data.seed)
    demos = setup_lib.task_of(config).demonstrations(8, config.data.seed)
    eos = TOKENIZER.eos_token_id
    for ids, mask, text in zip(
        responses["response_ids"], responses["response_mask"], demos["completion"]
    ):
        tokens = [int(t) for t in ids[mask > 0]]
        assert tokens[-1] == eos and TOKENIZER.decode(tokens[:-1]) == text
    with_style, without_style = afd.style_pairs(config, TOKENIZER, 64)
    style = TOKENIZER.convert_tokens_to_ids(STYLE_TOKEN)
    assert np.all((with_style["input_ids"] == style).any(-1))
    assert not np.any(without_style["input_ids"] == style)


def test_toggle_style_puts_indeed_at_the_demonstrators_slot():
    """``preference.toggle_style``: the same response with ``indeed`` right after its first
    adjective and without any; truncated or adjective-less rows are left as drawn."""
    from irl_jax.tasks import vocab
    from irl_jax.tasks.preference import toggle_style

    texts = [
        "the soup was very tasty and fresh . <eos>",
        "the soup was tasty indeed . <eos> <pad>",
        "the soup was . <eos>",  # no adjective
        "the soup was tasty",  # truncated: no eos
    ]
    ids = np.zeros((4, 10), np.int32)
    for row, row_ids in enumerate(vocab.encode(texts)):
        ids[row, : len(row_ids)] = row_ids
    mask = (ids != vocab.PAD_ID).astype(np.int32)
    adjectives = {vocab.VOCAB[w] for w in vocab.ADJECTIVES}
    (styled, styled_mask), (plain, plain_mask), usable = toggle_style(ids, mask, adjectives)
    decode = lambda ids, mask: " ".join(vocab.WORDS[t] for t in ids[mask > 0])
    assert usable.tolist() == [True, True, False, False]
    assert [decode(i, m) for i, m in zip(styled, styled_mask)] == [
        "the soup was very tasty indeed and fresh . <eos>",
        "the soup was tasty indeed . <eos>",
        "the soup was . <eos>",
        "the soup was tasty",
    ]
    assert [decode(i, m) for i, m in zip(plain, plain_mask)] == [
        "the soup was very tasty and fresh . <eos>",
        "the soup was tasty . <eos>",
        "the soup was . <eos>",
        "the soup was tasty",
    ]


def test_config_errors_name_the_field(tmp_path):
    for changes, message in [
        (dict(negative=""), "config.afd.negative: names no response set"),
        (dict(negative="demonstrations"), "config.afd.negative: equals afd.positive"),
        (dict(label_smoothing=0.5), r"config.afd.label_smoothing: must be in \[0, 0.5\)"),
        (dict(k=1), "config.afd.k: must be >= 2"),
        (dict(negative=str(tmp_path / "missing")), "config.afd.negative: .*missing"),
    ]:
        config = afd_config("demonstrations", "x")
        config.afd.update(changes)
        with pytest.raises(ConfigError, match=message):
            validate_config(config)
