"""Decoder reward models: the preference-task outcome, export round trip, initialization from
SFT / sequence-classification exports, loss wiring, ensembles, PRM alignment, 8 devices = 1."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax_utils import count_compiles

from irl_jax import algorithms, sharding
from irl_jax.algorithms import reward_model
from irl_jax.algorithms.setup import setup
from irl_jax.config import ConfigError
from irl_jax.data import load_and_tokenize
from irl_jax.models import Transformer, preset
from irl_jax.models import source as model_source
from irl_jax.models.heads import RewardModel, TokenRewardModel
from irl_jax.models.hf import load_pretrained, save_pretrained
from irl_jax.objectives import reward as objectives
from irl_jax.tasks import build_tokenizer, get_task
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step

TOKENIZER = build_tokenizer()
LLAMA = preset("llama-tiny", vocab_size=len(TOKENIZER), num_layers=1, pad_token_id=0)
BETA_ANN = 5.0  # annotation noise of the outcome test: ≈ 7% of the labels disagree with gold


def rm_config(**changes):
    config = algorithms.experiment_config("reward_model")
    config.model = "gpt2-tiny"
    config.num_steps = 300
    config.batch_size = 32
    config.eval_every = 0
    config.log_every = 50
    config.data.num_train = 4096
    config.data.num_eval = 512
    config.data.max_length = 32
    config.optimizer.learning_rate = 1e-3
    config.reward_model.beta_ann = BETA_ANN
    config.reward_model.num_eval_prompts = 128
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (config[section] if section else config)[field] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bt")
    config = rm_config()
    start = time.perf_counter()
    metrics = reward_model.train(config, str(workdir))
    return config, workdir, metrics, time.perf_counter() - start


def test_bradley_terry_rm_reaches_gold_accuracy(trained):
    _, _, metrics, seconds = trained
    print(
        f"BT RM (gpt2-tiny from scratch, 300 steps, β_ann={BETA_ANN}): {seconds:.1f} s, {metrics}"
    )
    assert 0.05 < metrics["eval/train_flip_rate"] < 0.1
    assert metrics["eval/gold_accuracy"] >= 0.75
    assert metrics["eval/spearman"] > 0.4
    gain, oracle = metrics["eval/bon_gain"], metrics["eval/bon_oracle_gain"]
    assert 0.5 * oracle < gain < oracle


def test_export_round_trip_keeps_the_trained_rewards(trained):
    config, workdir, metrics, _ = trained
    export = str(workdir / "export")
    cfg, params = load_pretrained(export)
    # The exported params reproduce every evaluation metric of the trained model.
    mesh = sharding.make_mesh(dict(config.mesh_shape))
    model = reward_model.build_model(cfg, config.reward_model)
    data = reward_model.load_data(config, TOKENIZER)
    evaluate = reward_model.make_evaluator(config, model, data, TOKENIZER, mesh)
    replayed = evaluate(params)
    for name in ("gold_accuracy", "accuracy", "spearman", "bon_gain"):
        assert replayed[name] == pytest.approx(metrics[f"eval/{name}"], abs=1e-6), name
    # transformers loads it as a sequence classifier with the same rewards.
    ids = data.eval["chosen_input_ids"][:8]
    mask = data.eval["chosen_attention_mask"][:8]
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(export)
    with torch.no_grad():
        expected = hf_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits[:, 0]
    rewards = RewardModel(cfg).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(rewards, expected.numpy(), atol=1e-4)
    assert np.std(rewards) > 0.1


def test_init_from_causal_lm_and_sequence_classifier(tmp_path):
    untied = LLAMA.replace(tie_word_embeddings=False)
    ids = jnp.zeros((1, 2), jnp.int32)
    lm_params = Transformer(untied).init(jax.random.key(3), ids, jnp.ones_like(ids))["params"]
    lm_params = sharding.unbox(lm_params)
    save_pretrained(str(tmp_path / "sft"), untied, lm_params, tokenizer=TOKENIZER)
    config = rm_config(init_from=str(tmp_path / "sft"), reward_model__num_heads=3)
    cfg = setup(config).model_config
    model = reward_model.build_model(cfg, config.reward_model)
    _, params = reward_model.initial_params(setup(config), model)
    assert "lm_head" in lm_params and "lm_head" not in params["transformer"]
    jax.tree.map(
        np.testing.assert_array_equal,
        params["transformer"],
        {k: v for k, v in lm_params.items() if k != "lm_head"},
    )
    assert params["score"]["kernel"].shape == (untied.hidden_size, 3)
    # A sequence classifier supplies the head too; its head count must match.
    save_pretrained(str(tmp_path / "rm"), cfg, params, tokenizer=TOKENIZER)
    config = rm_config(init_from=str(tmp_path / "rm"), reward_model__num_heads=3)
    _, loaded = reward_model.initial_params(setup(config), model)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    config = rm_config(init_from=str(tmp_path / "rm"))
    model = reward_model.build_model(cfg, config.reward_model)
    with pytest.raises(ConfigError, match="reward_model.num_heads.*has 3 score heads"):
        reward_model.initial_params(setup(config), model)


def preference_batch(rows=16, seed=0):
    dataset, _ = get_task("preference").preferences(rows, seed, beta_ann=2.0)
    arrays, _ = load_and_tokenize(dataset, TOKENIZER, "preference", 24)
    arrays["margin"] = np.linspace(-0.5, 0.5, rows).astype(np.float32)  # data margins
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def init(model, seed=0):
    ids = jnp.zeros((1, 2), jnp.int32)
    return sharding.unbox(model.init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"])


def settings_of(**changes):
    settings = reward_model.default_config()
    settings.update(changes)
    return settings


def test_pair_losses_equal_separate_forwards():
    batch = preference_batch()
    model = RewardModel(LLAMA)
    params = init(model)
    chosen = model.apply(
        {"params": params}, batch["chosen_input_ids"], batch["chosen_attention_mask"]
    )
    rejected = model.apply(
        {"params": params}, batch["rejected_input_ids"], batch["rejected_attention_mask"]
    )
    bt = settings_of(margin=0.5, label_smoothing=0.1, centering=0.01)
    loss, metrics = reward_model.make_loss_fn(model, bt)(params, batch, None, None)
    expected = objectives.bradley_terry(
        chosen, rejected, margin=0.5 + batch["margin"], label_smoothing=0.1, centering=0.01
    )
    np.testing.assert_allclose(loss.value, expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(chosen > rejected), rtol=1e-6)
    classification = settings_of(loss="classification", label_smoothing=0.1)
    loss, _ = reward_model.make_loss_fn(model, classification)(params, batch, None, None)
    sp = lambda x: np.log1p(np.exp(x))  # −log σ(−x)
    expected = 0.5 * (
        0.9 * sp(-chosen) + 0.1 * sp(chosen) + 0.1 * sp(-rejected) + 0.9 * sp(rejected)
    )
    np.testing.assert_allclose(loss.value, expected.mean(), rtol=1e-5)


def test_ranking_loss_and_ensemble_heads():
    dataset = get_task("preference").rankings(8, seed=1, k=3)
    arrays, _ = load_and_tokenize(dataset, TOKENIZER, "ranking", 24)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    ensemble = RewardModel(LLAMA, num_heads=3)
    params = init(ensemble)
    loss, _ = reward_model.make_loss_fn(ensemble, settings_of(loss="ranking"))(
        params, batch, None, None
    )
    # The K-head loss is the mean of each head's own ranking loss (head k = kernel column k).
    single = RewardModel(LLAMA)
    per_head = []
    for k in range(3):
        head = {**params, "score": {"kernel": params["score"]["kernel"][:, k : k + 1]}}
        rewards = single.apply(
            {"params": head},
            batch["input_ids"].reshape(24, 24),
            batch["attention_mask"].reshape(24, 24),
        ).reshape(8, 3)
        pairs = [(0, 1), (0, 2), (1, 2)]
        per_head.append(
            np.mean([-jax.nn.log_sigmoid(rewards[:, i] - rewards[:, j]) for i, j in pairs])
        )
    np.testing.assert_allclose(loss.value, np.mean(per_head), rtol=1e-5)
    assert np.ptp(per_head) > 1e-4  # the heads differ
    # Evaluation combines the heads exactly as configured.
    scores = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    aggregate = lambda method, penalty=0.0: reward_model.aggregate(
        scores, settings_of(num_heads=3, ensemble_aggregation=method, uwo_penalty=penalty)
    )
    np.testing.assert_allclose(aggregate("mean"), [3.0, 1.0])
    np.testing.assert_allclose(aggregate("wco"), [1.0, 0.0])
    np.testing.assert_allclose(
        aggregate("uwo", 0.5), [3.0 - 0.5 * 14 / 3, 1.0 - 0.5 * 2.0], rtol=1e-6
    )


def test_process_reward_model_alignment():
    task = get_task("reasoning")
    dataset = task.stepwise(12, seed=0)
    arrays, _ = load_and_tokenize(dataset, TOKENIZER, "stepwise", 64, step_separator=";")
    # The data's step boundaries and labels are the task's own on the same ids: each boundary is
    # a response ";" token, labelled with that step's correctness.
    prompt_mask = arrays["attention_mask"] * (1 - arrays["loss_mask"])
    boundary, labels = task.step_labels(
        arrays["input_ids"], prompt_mask, arrays["input_ids"], arrays["loss_mask"]
    )
    np.testing.assert_array_equal(arrays["step_mask"], boundary)
    np.testing.assert_array_equal(arrays["step_labels"], labels)
    separator = TOKENIZER(";", add_special_tokens=False)["input_ids"][-1]
    assert np.all(arrays["input_ids"][arrays["step_mask"] > 0] == separator)
    assert 0.2 < arrays["step_labels"][arrays["step_mask"] > 0].mean() < 0.95
    # The PRM loss is the BCE of the per-token scores at exactly those positions.
    model = TokenRewardModel(LLAMA)
    params = init(model)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    loss, _ = reward_model.make_loss_fn(model, settings_of(loss="process"))(
        params, batch, None, None
    )
    scores = np.asarray(
        model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    )
    sp = lambda x: np.log1p(np.exp(x))
    per_row = [
        np.mean([sp(-s) if y else sp(s) for s, y in zip(row[m > 0], lab[m > 0])])
        for row, m, lab in zip(scores, arrays["step_mask"], arrays["step_labels"])
    ]
    np.testing.assert_allclose(loss.value, np.mean(per_row), rtol=1e-5)
    # Same param tree as a sequence classifier, whose score is the PRM's at the last token.
    last = RewardModel(LLAMA).apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    lengths = arrays["attention_mask"].sum(axis=1)
    np.testing.assert_allclose(last, scores[np.arange(12), lengths - 1], rtol=1e-5, atol=1e-6)


def build_step(mesh, settings):
    model = RewardModel(LLAMA, num_heads=settings.num_heads)
    optimizer, schedule = make_optimizer(num_steps=10, learning_rate=1e-3, max_grad_norm=1.0)
    trained = create_model(model_source.init_fn(model, 0), optimizer, mesh)
    state, shardings = create_state(mesh, seed=0, models={"reward_model": trained})
    loss_fn = reward_model.make_loss_fn(model, settings)
    step = supervised_step(loss_fn, optimizer, shardings, mesh, model="reward_model")
    return state, step


def run_steps(mesh, settings, batches):
    state, step = build_step(mesh, settings)
    data = sharding.batch_sharding(mesh)
    losses = []
    with count_compiles() as compiles:
        for i, batch in enumerate(batches):
            state, metrics = step(state, jax.device_put(batch, data))
            losses.append(float(metrics["loss"]))
            if i == 0:
                first = len(compiles)
    assert len(compiles) == first, "the reward-model step recompiled after the first step"
    return np.array(losses)


def test_8_device_step_equals_1_device():
    settings = settings_of(num_heads=2, margin=0.1, centering=0.01)
    batches = [preference_batch(seed=0), preference_batch(seed=1)] * 2
    one = run_steps(sharding.make_mesh({"data": 1}, jax.devices()[:1]), settings, batches)
    mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    with jax.set_mesh(mesh8):
        eight = run_steps(mesh8, settings, batches)
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert one[2] < one[0] and one[3] < one[1]  # the same batches, after two updates


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"reward_model__loss": "hinge"}, "config.reward_model.loss: 'hinge'"),
        (
            {"reward_model__loss": "classification", "reward_model__margin": 1.0},
            "config.reward_model.margin: applies to loss='bradley_terry' only",
        ),
        ({"reward_model__loss": "process"}, "config.data.task: loss='process' needs step labels"),
        ({"reward_model__label_smoothing": 0.5}, "config.reward_model.label_smoothing"),
        ({"reward_model__beta_ann": 0.0}, "config.reward_model.beta_ann: must be > 0"),
        ({"reward_model__pairing": "mixed"}, "config.reward_model.pairing: 'mixed'"),
        ({"reward_model__ensemble_aggregation": "max"}, "config.reward_model.ensemble_aggregation"),
        ({"reward_model__num_heads": 0}, "config.reward_model.num_heads: must be >= 1"),
    ],
)
def test_config_errors_name_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        algorithms.run(rm_config(**changes), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_a_process_reward_model_exports_as_a_step_scorer(tmp_path):
    """A PRM export carries the marker that makes it a step-boundary reward source in RL."""
    from irl_jax import rewards

    config = rm_config(
        num_steps=2,
        log_every=1,
        reward_model__loss="process",
        reward_model__step_separator=";",
        reward_model__num_eval_prompts=8,
    )
    config.data.update(task="reasoning", num_train=64, num_eval=16, max_length=64)
    config.batch_size = 8
    algorithms.run(config, str(tmp_path))
    export = str(tmp_path / "export")
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    source = rewards.load_reward_model(export, mesh=mesh, vocab_size=len(TOKENIZER))
    assert isinstance(source, rewards.ProcessReward)
    assert source.step_token_id == TOKENIZER(";", add_special_tokens=False)["input_ids"][-1]
