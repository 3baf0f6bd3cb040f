"""SPIN: the reference is the previous iterate after each round, the rejected responses are the
reference's samples after the demonstration prompts, exact resume, no recompiles, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_utils import count_compiles
from safetensors.numpy import load_file

from irl_jax import algorithms, rollout, sharding
from irl_jax.algorithms import spin
from irl_jax.algorithms.implicit_reward import pair_logps
from irl_jax.algorithms.setup import export_model
from irl_jax.config import ConfigError
from irl_jax.metrics import read_metrics
from irl_jax.models import Transformer
from irl_jax.models import source as model_source
from irl_jax.sampling import sample
from irl_jax.tasks import build_tokenizer
from irl_jax.train import create_model, create_state, make_optimizer

TOKENIZER = build_tokenizer()


def small_config(**spin_options):
    config = algorithms.experiment_config("spin")
    config.batch_size = 8
    config.data.num_train = 32
    config.data.num_eval = 16
    config.data.max_length = 40
    config.sampling.max_new_tokens = 12
    config.spin.steps_per_round = 2
    for key, value in spin_options.items():
        config.spin[key] = value
    return config


def model_config(config):
    return model_source.resolve_config(config.model, tokenizer=TOKENIZER)


def build(config, mesh):
    cfg = model_config(config)
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=1e-2, warmup_steps=0)
    policy = create_model(model_source.init_fn(Transformer(cfg), 0), optimizer, mesh)
    initial = (policy[0].params, policy[1].params)
    state, shardings = create_state(
        mesh, seed=0, models={"policy": policy}, frozen={"reference": initial, "initial": initial}
    )
    step = spin.make_spin_step(cfg, config, optimizer, shardings, mesh, pad_id=cfg.pad_token_id)
    arrays, _ = spin.load_data(config, TOKENIZER)
    return cfg, state, step, arrays


def test_reference_is_the_previous_iterate_after_each_round():
    config = small_config()
    mesh = sharding.make_mesh({"data": -1})
    _, state, step, arrays = build(config, mesh)
    data = sharding.batch_sharding(mesh)
    batches = [{k: v[i * 8 : (i + 1) * 8] for k, v in arrays.items()} for i in range(4)]
    host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
    equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
    rounds = {}  # round -> the params the round's reference must equal

    def advance(state, index):
        before = host(state.models["policy"].params)
        batch = {k: jax.device_put(v, data) for k, v in batches[index % 4].items()}
        state, metrics = step(state, batch)
        reference = host(state.frozen["reference"])
        # A round starts every 2 steps: π_ref := the iterate before its first step.
        rounds.setdefault(index // 2, before)
        equal(reference, rounds[index // 2])
        moved = host(state.models["policy"].params)["embed"]["embedding"]
        assert not np.allclose(moved, reference["embed"]["embedding"])
        assert 0 < float(metrics["rejected_tokens"]) <= 12
        return state

    state = advance(state, 0)
    with count_compiles() as compiles:  # later steps and round starts: no new compile
        for index in range(1, 6):
            state = advance(state, index)
    assert compiles == [] and len(rounds) == 3


def test_rejected_is_the_reference_sample_after_the_demonstration_prompt():
    config = small_config()
    cfg = model_config(config)
    model = Transformer(cfg)
    arrays, _ = spin.load_data(config, TOKENIZER)
    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    ids = jnp.zeros((1, 2), jnp.int32)
    params = sharding.unbox(model.init(jax.random.key(3), ids, jnp.ones_like(ids))["params"])
    rng = jax.random.key(5)
    settings = rollout.SamplingSettings.from_config(config.sampling)
    pairs = jax.jit(spin.make_pairs_fn(cfg, settings, cfg.pad_token_id))(params, batch, rng)
    output = sample(
        cfg, params, batch["prompt_ids"], batch["prompt_mask"], rng=rng, max_new_tokens=12
    )
    for i in range(8):
        prompt = np.asarray(batch["prompt_ids"][i])[np.asarray(batch["prompt_mask"][i]) > 0]
        response = np.asarray(output.response_ids[i])[np.asarray(output.response_mask[i]) > 0]
        p, n = len(prompt), len(response)
        np.testing.assert_array_equal(pairs["chosen_input_ids"][i, :p], prompt)  # same prompt
        np.testing.assert_array_equal(pairs["rejected_input_ids"][i, :p], prompt)
        np.testing.assert_array_equal(pairs["rejected_input_ids"][i, p : p + n], response)
        np.testing.assert_array_equal(pairs["rejected_input_ids"][i, p + n :], cfg.pad_token_id)
        np.testing.assert_array_equal(pairs["rejected_attention_mask"][i], np.arange(40) < p + n)
        expected_loss = (np.arange(40) >= p) & (np.arange(40) < p + n)
        np.testing.assert_array_equal(pairs["rejected_loss_mask"][i], expected_loss)
        # The demonstration's response starts right after the same prompt.
        assert pairs["chosen_loss_mask"][i, p] == 1 and pairs["chosen_loss_mask"][i, p - 1] == 0
    ref = pair_logps(model, params, pairs)
    np.testing.assert_allclose(pairs["ref_chosen_logps"], ref[0], rtol=1e-6)
    np.testing.assert_allclose(pairs["ref_rejected_logps"], ref[1], rtol=1e-6)
    np.testing.assert_allclose(pairs["ref_rejected_logps"], output.response_logprobs.sum(-1), 1e-4)


@pytest.fixture(scope="module")
def random_policy(tmp_path_factory):
    """A randomly initialized gpt2-tiny exported as a Hugging Face directory."""
    config = small_config()
    cfg = model_config(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    model = Transformer(cfg)
    params = sharding.unbox(model.init(jax.random.key(0), ids, jnp.ones_like(ids))["params"])
    path = str(tmp_path_factory.mktemp("policy") / "export")
    return export_model(path, cfg, params, TOKENIZER)


def run(random_policy, workdir, num_steps):
    config = small_config()
    config.init_from = random_policy
    config.num_steps = num_steps
    config.log_every = 1
    config.eval_every = 0
    config.policy_eval.num_prompts = 8
    config.policy_eval.max_new_tokens = 8
    return spin.train(config, str(workdir))


def test_exact_resume_mid_round(random_policy, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(random_policy, straight, 4)
    run(random_policy, resumed, 3)  # stops inside round 2 (steps 2-3 share a reference)
    metrics = run(random_policy, resumed, 4)  # resumes: the reference comes from the checkpoint
    assert metrics["eval/num_samples"] == 8 and "eval/nll" in metrics
    # Every part of the state resumed exactly: the reference of the round and the optimizer.
    from irl_jax.checkpoint import CheckpointManager

    states = []
    for workdir in (straight, resumed):
        manager = CheckpointManager(str(workdir))
        states.append(manager.read(4))
        manager.close()
    jax.tree.map(np.testing.assert_array_equal, *states)
    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(resumed / "export" / "model.safetensors"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    losses = lambda w: {
        r["step"]: r["train/loss"] for r in read_metrics(str(w)) if "train/loss" in r
    }
    assert losses(straight)[4] == losses(resumed)[4]


def test_config_errors_name_the_field(tmp_path):
    for options, message in [
        (dict(loss="simpo"), "config.spin.loss: 'simpo' is not one of"),
        (dict(steps_per_round=0), "config.spin.steps_per_round: must be >= 1"),
        (dict(beta=-1.0), "config.spin.beta: must be positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            algorithms.run(small_config(**options), str(tmp_path / "run"))
    for field, value, message in [
        ("temperature", 0.0, "config.sampling.temperature: must be > 0"),
        ("group_size", 2, "config.sampling.group_size: SPIN draws one rejected response"),
    ]:
        config = small_config()
        config.sampling[field] = value
        with pytest.raises(ConfigError, match=message):
            algorithms.run(config, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="config.init_from: .* starts from an SFT policy"):
        algorithms.run(small_config(), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
