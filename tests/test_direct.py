"""Direct alignment wiring: one concatenated forward, both reference modes, KTO's mismatched
pairs, mesh equality, no recompiles, config errors, and DPO beating its SFT policy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles

from irl_jax import algorithms, sharding
from irl_jax.algorithms import direct
from irl_jax.algorithms.implicit_reward import PAIR, add_reference_logps, pair_logps
from irl_jax.config import ConfigError
from irl_jax.data.sequences import cyclic_partners, mismatched_pairs
from irl_jax.metrics import read_metrics
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.objectives import direct as objectives
from irl_jax.tasks import build_tokenizer
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step

TOKENIZER = build_tokenizer()


def model_config(config):
    return model_source.resolve_config(config.model, tokenizer=TOKENIZER)


def small_config(loss="dpo", **section):
    config = algorithms.experiment_config("direct")
    config.data.num_train = 64
    config.data.num_eval = 16
    config.data.max_length = 40
    config.direct.loss = loss
    for key, value in section.items():
        config.direct[key] = value
    return config


def build(config, mesh, on_the_fly):
    """Random-init policy state with its frozen reference copy, tokenized data, the jitted
    step."""
    cfg = model_config(config)
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=3e-2, warmup_steps=0)
    policy = create_model(model_source.init_fn(Transformer(cfg), 0), optimizer, mesh)
    reference = (policy[0].params, policy[1].params)
    state, shardings = create_state(
        mesh, seed=0, models={"policy": policy}, frozen={"reference": reference}
    )
    arrays, _ = direct.load_data(config, TOKENIZER)
    if not on_the_fly:
        prefixes = ("", "kl_") if config.direct.loss == "kto" else PAIR
        ref_params = state.frozen["reference"]
        arrays = add_reference_logps(cfg, ref_params, arrays, prefixes, 16, mesh)
    loss_fn = direct.make_loss_fn(cfg, config.direct, on_the_fly=on_the_fly)
    step = supervised_step(loss_fn, optimizer, shardings, mesh)
    return cfg, state, arrays, step


def run_steps(mesh, state, arrays, step, n, batch_size=16):
    data = sharding.batch_sharding(mesh)
    losses = []
    for i in range(n):
        batch = {
            k: jax.device_put(v[i * batch_size : (i + 1) * batch_size], data)
            for k, v in arrays.items()
        }
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


def one_device():
    return sharding.make_mesh({"data": 1}, jax.devices()[:1])


def logps_by_hand(model, params, batch, side):
    """Σ over response tokens of log softmax(logits)[next token], from a forward of one side."""
    ids = batch[side + "input_ids"]
    logits = model.apply({"params": params}, ids, batch[side + "attention_mask"]).logits
    logps = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logps, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * batch[side + "loss_mask"][:, 1:], axis=-1)


def random_params(model, seed):
    ids = jnp.zeros((1, 2), jnp.int32)
    return sharding.unbox(model.init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"])


def test_concatenated_forward_equals_two_forwards():
    config = small_config()
    model = Transformer(model_config(config))
    arrays, _ = direct.load_data(config, TOKENIZER)
    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    params = random_params(model, 1)
    chosen, rejected = pair_logps(model, params, batch)
    np.testing.assert_allclose(chosen, logps_by_hand(model, params, batch, "chosen_"), rtol=1e-5)
    np.testing.assert_allclose(
        rejected, logps_by_hand(model, params, batch, "rejected_"), rtol=1e-5
    )
    assert np.all(np.asarray(chosen) < 0) and not np.allclose(chosen, rejected)


@pytest.mark.parametrize(
    "loss, options",
    [
        ("dpo", {}),
        ("dpo", {"label_smoothing": 0.2}),
        ("robust_dpo", {"label_smoothing": 0.2}),
        ("ipo", {"beta": 0.5, "ipo_average": False}),
        ("ipo", {"beta": 0.5, "ipo_average": True}),
        ("hinge", {}),
        ("simpo", {"beta": 2.0, "simpo_gamma": 1.0}),
        ("orpo", {"orpo_lambda": 0.5}),
        ("kto", {"kto_desirable_weight": 1.5, "kto_undesirable_weight": 0.5}),
    ],
)
def test_loss_fn_equals_the_objective_on_separate_forwards(loss, options):
    """The wired loss (one interleaved forward, frozen reference) equals the objective applied
    to log-probs of separate forwards of the policy and the reference (policy ≠ reference)."""
    config = small_config(loss, **options)
    section = config.direct
    model = Transformer(model_config(config))
    arrays, _ = direct.load_data(config, TOKENIZER)
    batch = {k: jnp.asarray(v[:16]) for k, v in arrays.items()}
    policy, reference = random_params(model, 1), random_params(model, 0)
    loss_fn = direct.make_loss_fn(model.config, section, on_the_fly=True)
    result, metrics = jax.jit(loss_fn)(policy, batch, None, {"reference": reference})
    value = result.total / result.count
    hand = lambda params, side: logps_by_hand(model, params, batch, side)
    if loss == "kto":
        z0 = max(0.0, float(jnp.mean(hand(policy, "kl_") - hand(reference, "kl_"))))
        losses, _ = objectives.kto(
            hand(policy, ""),
            hand(reference, ""),
            batch["label"],
            jnp.float32(z0),
            beta=section.beta,
            desirable_weight=1.5,
            undesirable_weight=0.5,
        )
        np.testing.assert_allclose(metrics["reference_point"], z0, rtol=1e-5, atol=1e-6)
    else:
        logps = [hand(policy, side) for side in PAIR]
        ref = [hand(reference, side) for side in PAIR]
        tokens = [batch[side + "loss_mask"].sum(-1) for side in PAIR]
        if loss == "simpo":
            losses, _ = objectives.simpo(*logps, *tokens, beta=2.0, gamma=1.0)
        elif loss == "orpo":
            losses, _ = objectives.orpo(*logps, *tokens, lam=0.5)
        elif loss == "ipo":
            averaged = dict(chosen_tokens=tokens[0], rejected_tokens=tokens[1])
            kwargs = averaged if section.ipo_average else {}
            losses, _ = objectives.ipo(*logps, *ref, beta=0.5, **kwargs)
        elif loss == "hinge":
            losses, _ = objectives.hinge(*logps, *ref, beta=section.beta)
        else:
            fn = objectives.dpo if loss == "dpo" else objectives.robust_dpo
            smoothing = options.get("label_smoothing", 0.0)
            losses, _ = fn(*logps, *ref, beta=section.beta, label_smoothing=smoothing)
    np.testing.assert_allclose(value, losses.mean(), rtol=1e-5)


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_precomputed_and_frozen_reference_agree(loss):
    """The first step (policy = reference) has the closed-form loss — DPO log 2, KTO with z₀ = 0
    λ·(1 − σ(0)) per row — and precomputed reference columns give the same losses as the frozen
    reference forward over the next steps too (policy ≠ reference)."""
    config = small_config(loss, kto_desirable_weight=1.5)
    mesh = one_device()
    _, state, arrays, step = build(config, mesh, on_the_fly=True)
    assert not {"ref_chosen_logps", "ref_kl_logps"} & set(arrays)
    _, on_the_fly = run_steps(mesh, state, arrays, step, 3)
    _, state, arrays, step = build(config, mesh, on_the_fly=False)
    assert {"ref_chosen_logps", "ref_kl_logps"} & set(arrays)
    _, precomputed = run_steps(mesh, state, arrays, step, 3)
    if loss == "dpo":
        first = math.log(2.0)
    else:
        first = float(np.mean(np.where(arrays["label"][:16], 1.5, 1.0) * 0.5))
    np.testing.assert_allclose(on_the_fly[0], first, rtol=1e-5)
    np.testing.assert_allclose(precomputed, on_the_fly, rtol=1e-5)
    assert abs(on_the_fly[2] - on_the_fly[0]) > 1e-3  # the policy moved away from the reference


def test_mismatched_pairs_join_each_prompt_to_another_rows_response():
    # (prompt, response + eos 2) of lengths (2, 3), (3, 2), (1, 4); pad 0; T = 6.
    rows = [([5, 6], [7, 8, 2]), ([9, 10, 11], [12, 2]), ([13], [14, 15, 16, 2])]
    ids, mask, loss = (np.zeros((3, 6), np.int32) for _ in range(3))
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt + response)
        ids[i, :n], mask[i, :n], loss[i, len(prompt) : n] = prompt + response, 1, 1
    arrays = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}
    kl = mismatched_pairs(arrays, np.array([1, 2, 0]), pad_id=0)
    # Row 1: prompt 1 + response 2 has 7 tokens and is cut at T = 6 (no eos left).
    np.testing.assert_array_equal(
        kl["kl_input_ids"], [[5, 6, 12, 2, 0, 0], [9, 10, 11, 14, 15, 16], [13, 7, 8, 2, 0, 0]]
    )
    np.testing.assert_array_equal(
        kl["kl_attention_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        kl["kl_loss_mask"], [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
    )
    for seed in range(5):
        partner = cyclic_partners(7, seed)
        assert np.all(partner != np.arange(7))
        visited, i = [], 0
        for _ in range(7):
            visited, i = visited + [i], partner[i]
        assert sorted(visited) == list(range(7))  # one cycle through every row


def test_eight_devices_equal_one_device():
    config = small_config("dpo", beta=0.5)
    mesh1 = one_device()
    _, state, arrays, step = build(config, mesh1, on_the_fly=True)
    _, losses1 = run_steps(mesh1, state, arrays, step, 3)
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh8):
        _, state, arrays, step = build(config, mesh8, on_the_fly=True)
        state, losses8 = run_steps(mesh8, state, arrays, step, 3)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert abs(losses1[2] - losses1[0]) > 1e-3


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_one_compile_per_shape(loss):
    config = small_config(loss)
    mesh = sharding.make_mesh({"data": -1})
    _, state, arrays, step = build(config, mesh, on_the_fly=True)
    state, _ = run_steps(mesh, state, arrays, step, 1)
    with count_compiles() as compiles:
        run_steps(mesh, state, {k: v[16:] for k, v in arrays.items()}, step, 3)
    assert compiles == []


def test_config_errors_name_the_field(tmp_path):
    cases = [
        (dict(loss="dpop"), "config.direct.loss: 'dpop' is not one of"),
        (dict(beta=0.0), "config.direct.beta: must be positive"),
        (dict(loss="ipo", label_smoothing=0.1), "config.direct.label_smoothing: applies to"),
        (dict(label_smoothing=0.5), r"config.direct.label_smoothing: must be in \[0, 0.5\)"),
        (dict(pairing="random"), "config.direct.pairing: 'random'"),
        (dict(pairing="cross_prompt"), "config.direct.pairing: cross-prompt pairs .* log Z"),
        (dict(kto_undesirable_weight=0.0), "config.direct.kto_undesirable_weight"),
        (dict(beta_ann=-1.0), "config.direct.beta_ann"),
        (dict(loss="simpo", simpo_gamma=-0.5), "config.direct.simpo_gamma: must be >= 0"),
    ]
    for section, message in cases:
        config = small_config(**section)
        config.init_from = str(tmp_path)
        with pytest.raises(ConfigError, match=message):
            algorithms.run(config, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="config.init_from: .* starts from an SFT policy"):
        algorithms.run(small_config(), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_cross_prompt_pair_file_is_refused(tmp_path):
    """A file of cross-prompt pairs (chosen_prompt / rejected_prompt columns) is refused for the
    DPO family, naming the file; the same-prompt format is accepted."""
    import json

    rows = [
        {"chosen_prompt": "rate the food", "chosen": "the soup was great .",
         "rejected_prompt": "rate the movie", "rejected": "the plot was dull ."},
    ] * 4  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = small_config()
    config.data.path = str(path)
    with pytest.raises(ConfigError, match="config.data.path: .*pairs.jsonl.* log Z"):
        direct.load_data(config, TOKENIZER)
    same = [{"prompt": "rate the food", "chosen": "the soup was great .",
             "rejected": "the soup was dull ."}] * 4  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in same))
    train, evaluation = direct.load_data(config, TOKENIZER)
    assert len(train["chosen_input_ids"]) == 4 and evaluation is not None


# ----------------------------------------------------------------------------- the outcome


def test_dpo_beats_the_sft_policy(preference_sft, tmp_path):
    config = algorithms.experiment_config("direct")
    config.init_from = preference_sft
    config.num_steps = 150
    config.batch_size = 32
    config.eval_every = 0
    config.log_every = 50
    config.data.num_train = 4096
    config.data.num_eval = 256
    config.data.max_length = 40
    config.optimizer.learning_rate = 1e-3
    config.direct.beta = 0.5
    config.export = False
    metrics = direct.train(config, str(tmp_path))
    assert metrics["eval/num_samples"] >= 256
    assert metrics["eval/accuracy"] >= 0.7, metrics
    gain = metrics["eval/reward/gold_mean"] - metrics["eval/ref_reward/gold_mean"]
    stderr = math.hypot(metrics["eval/reward/gold_stderr"], metrics["eval/ref_reward/gold_stderr"])
    assert gain > 2 * stderr, metrics
    assert metrics["eval/win_rate"] > 0.5 and metrics["eval/kl_mean"] > 0
    logged = read_metrics(str(tmp_path))[-1]
    assert logged["eval/accuracy"] == pytest.approx(metrics["eval/accuracy"])
    assert logged["step"] == 150
