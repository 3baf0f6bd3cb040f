"""LoRA / QLoRA (``irl_jax.models.lora``): analytic trainable counts, exact base logits at init,
the reference as the base with adapters off (sharing the policy's weights), merged export read
by ``transformers``, quantized bases, and one LoRA step of every algorithm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import transformers
from hf_utils import gpt2_config, hf_logits, llama_config, make_model, padded_batch, save

from irl_jax import algorithms, sharding
from irl_jax.algorithms import experiment_config, sft
from irl_jax.algorithms import setup as setup_lib
from irl_jax.checkpoint import CheckpointManager
from irl_jax.config import ConfigError
from irl_jax.models import Transformer, hf, lora, preset
from irl_jax.models import source as model_source
from irl_jax.tasks import build_tokenizer
from irl_jax.train import create_model, create_state, make_optimizer, supervised_step
from irl_jax.train.loop import _Streams
from irl_jax.train.state import SharedBase, attach

RANK = 4
CFG = preset("llama-tiny", vocab_size=97, num_layers=2)
IDS = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, 9)), jnp.int32)


def lora_config(cfg=CFG, **options):
    return cfg.replace(lora=lora.LoraConfig(rank=RANK, **options))


def init(cfg, seed=0):
    return sharding.unbox(Transformer(cfg).init(jax.random.key(seed), IDS)["params"])


def logits(cfg, params, ids=IDS):
    return _logits(cfg, params, ids)


@jax.jit(static_argnums=0)
def _logits(cfg, params, ids):
    return Transformer(cfg).apply({"params": params}, ids).logits


def randomized_adapters(params, seed=1, scale=0.05):
    """``params`` with every ``lora_b`` and embedding delta random (adapters that change the
    model)."""

    def perturb(path, x):
        if lora.path_name(path).endswith(("lora_b", lora.EMBEDDING_DELTA)):
            key = jax.random.fold_in(jax.random.key(seed), hash(lora.path_name(path)) % 2**31)
            return scale * jax.random.normal(key, x.shape, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(perturb, params)


def analytic_count(cfg, rank):
    """r · (fan_in + fan_out) summed over q, k, v, o, gate, up, down of every layer."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)
    return cfg.num_layers * rank * per_layer


@pytest.mark.parametrize("scan_layers", [False, True])
def test_trainable_params_are_the_analytic_lora_count(scan_layers):
    cfg = lora_config(CFG.replace(scan_layers=scan_layers))
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=1e-3)
    model, shardings = create_model(model_source.init_fn(Transformer(cfg), 0), optimizer, mesh)
    expected = analytic_count(cfg, RANK)
    assert lora.count_trainable(model.params) == expected
    # Adam's two moments exist for the adapters only: no optimizer state for the frozen base.
    moments = sum(x.size for x in jax.tree.leaves(model.opt_state) if x.ndim > 0)
    assert moments == 2 * expected
    total = sum(x.size for x in jax.tree.leaves(model.params))
    assert expected < 0.1 * total
    # Adapters follow the kernel's logical rules: A's input axis ("embed") over fsdp, B's
    # output axes ("heads") over tensor.
    layer = shardings.params["layers" if scan_layers else "layer_0"]["attn"]["q"]
    lead = (None,) if scan_layers else ()
    assert tuple(layer["lora_a"].spec) == lead + ("fsdp",)
    assert tuple(layer["lora_b"].spec) == lead + (None, "tensor")


def test_lora_at_init_is_the_base_and_adapters_off_is_the_base():
    base = init(CFG)
    with_lora = lora.with_adapters(base, lora.adapters_only(init(lora_config(), seed=5)))
    expected = logits(CFG, base)
    np.testing.assert_array_equal(logits(lora_config(), with_lora), expected)  # B = 0: exact
    trained = randomized_adapters(with_lora)
    assert float(jnp.max(jnp.abs(logits(lora_config(), trained) - expected))) > 1e-3
    # Adapters off = the params without adapters = the frozen base, exactly.
    np.testing.assert_array_equal(logits(lora_config(), lora.without_adapters(trained)), expected)
    # Gradients flow to the adapters only (B's gradient is nonzero at init, A's is zero).
    trainable, frozen = lora.split(with_lora)
    loss = lambda t: jnp.sum(logits(lora_config(), lora.combine(t, frozen)) ** 2)
    grads = jax.jit(jax.grad(loss))(trainable)
    names = {lora.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(grads)}
    assert names and all(lora.is_adapter(n) for n in names)


def test_trained_embeddings_add_one_table_and_start_at_the_base():
    """``lora.embeddings``: the table's delta is trained beside the adapters (V · D more
    params, with Adam moments), starts at zero (the base model exactly) and is off with the
    adapters; the tied output projection moves with it."""
    cfg = lora_config(embeddings=True)
    params = init(cfg)
    table = params["embed"]
    assert set(table) == {"embedding", lora.EMBEDDING_DELTA}
    expected_count = analytic_count(cfg, RANK) + cfg.vocab_size * cfg.hidden_size
    assert lora.count_trainable(params) == expected_count
    trainable, _ = lora.split(params)
    assert trainable["embed"]["embedding"] is None  # the base table stays frozen
    base = lora.without_adapters(params)
    np.testing.assert_array_equal(logits(cfg, params), logits(CFG, base))
    moved = randomized_adapters(params)
    only_table = lora.with_adapters(params, {"embed": moved["embed"]})
    assert float(jnp.max(jnp.abs(logits(cfg, only_table) - logits(CFG, base)))) > 1e-3
    np.testing.assert_array_equal(logits(cfg, lora.without_adapters(moved)), logits(CFG, base))
    merged = lora.merge(moved, cfg.lora.scale)
    np.testing.assert_allclose(logits(CFG, merged), logits(cfg, moved), atol=1e-5, rtol=0)
    config = experiment_config("sft")
    config.lora.embeddings = True
    with pytest.raises(ConfigError, match="config.lora.embeddings"):
        algorithms.validate_config(config)


def test_adapter_dropout_acts_in_training_forwards_only():
    """Dropout on the adapters' input needs a ``"dropout"`` rng: the loss functions pass their
    step rng (``lora.dropout_rngs``), so a training loss depends on it (the same rng, the same
    loss); evaluations and the sampler pass none and are deterministic."""
    cfg = lora_config(dropout=0.5)
    params = randomized_adapters(init(cfg))
    plain = Transformer(cfg).apply({"params": params}, IDS).logits
    np.testing.assert_allclose(plain, logits(cfg, params), atol=1e-6)  # no rng: deterministic
    dropped = Transformer(cfg).apply({"params": params}, IDS, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.max(jnp.abs(dropped.logits - plain))) > 1e-4
    ones = jnp.ones_like(IDS)
    batch = {"input_ids": IDS, "attention_mask": ones, "loss_mask": ones}
    loss_of = lambda p, key, c: sft.make_loss_fn(c)(p, batch, key, {})[0].value
    loss = jax.jit(loss_of, static_argnums=2)
    one, two = jax.random.key(1), jax.random.key(2)
    assert float(loss(params, one, cfg)) == float(loss(params, one, cfg))
    assert abs(float(loss(params, one, cfg)) - float(loss(params, two, cfg))) > 1e-5
    no_dropout = lora_config()
    assert float(loss(params, one, no_dropout)) == float(loss(params, two, no_dropout))
    config = experiment_config("sft")
    config.lora.update(rank=RANK, dropout=1.0)
    with pytest.raises(ConfigError, match="config.lora.dropout"):
        algorithms.validate_config(config)


def test_reference_shares_the_policy_base_and_is_the_base_model(tmp_path):
    config = experiment_config("direct")
    config.lora.rank = RANK
    config.model_overrides.num_layers = 1
    setup = setup_lib.setup(config)
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=1e-3)
    state, shardings = setup_lib.policy_state(setup, optimizer)
    reference = state.frozen["reference"]
    assert isinstance(reference, SharedBase)
    stored = {lora.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(reference)}
    assert stored and all(lora.is_adapter(n) for n in stored)  # no second copy of the base
    policy = state.models["policy"].params
    full = attach(state).frozen["reference"]
    for name in ("embed", "final_norm"):
        assert full[name] is policy[name]  # the same arrays
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 60, (2, 7)), jnp.int32)
    cfg = setup.model_config
    np.testing.assert_array_equal(
        logits(cfg, full, ids), logits(cfg, lora.without_adapters(policy), ids)
    )


def test_merged_export_loads_in_transformers(tmp_path):
    source = save(make_model(transformers.LlamaForCausalLM, llama_config()), tmp_path / "src")
    cfg, base = hf.load_pretrained(source)
    ids, mask = padded_batch(np.random.default_rng(0), [13, 8], 13, "left")
    real = mask.astype(bool)
    for quantize in ("none", "int8"):
        lcfg = cfg.replace(lora=lora.LoraConfig(rank=RANK, quantize=quantize, group_size=32))
        init_params = lambda lcfg=lcfg: Transformer(lcfg).init(jax.random.key(2), ids, mask)[
            "params"
        ]
        mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
        abstract = sharding.tree_shardings(jax.eval_shape(init_params), mesh)
        params = randomized_adapters(lora.conform(base, init_params, abstract))
        ours = Transformer(lcfg).apply({"params": params}, ids, mask).logits
        out = hf.save_pretrained(str(tmp_path / quantize), lcfg, params)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
        np.testing.assert_allclose(
            hf_logits(loaded, ids, mask)[real], np.asarray(ours)[real], atol=1e-4, rtol=0
        )


@pytest.mark.parametrize(
    ("model_cls", "make_config", "embeddings"),
    [
        (transformers.LlamaForCausalLM, llama_config, False),
        (transformers.GPT2LMHeadModel, gpt2_config, False),
        (transformers.LlamaForCausalLM, llama_config, True),
        (transformers.GPT2LMHeadModel, gpt2_config, True),
    ],
    ids=["llama", "gpt2", "llama-embeddings", "gpt2-tied-embeddings"],
)
def test_peft_adapter_loads_onto_the_base_in_peft(tmp_path, model_cls, make_config, embeddings):
    """The export's unmerged adapters (``peft_adapter/``), loaded by ``peft`` onto the base
    checkpoint, give our LoRA model's logits (Llama's ``Linear``; GPT-2's fused ``Conv1D``
    c_attn with ``fan_in_fan_out``; a trained embedding table as ``modules_to_save``, tied to
    GPT-2's head)."""
    source = save(make_model(model_cls, make_config()), tmp_path / "src")
    cfg, base = hf.load_pretrained(source)
    ids, mask = padded_batch(np.random.default_rng(0), [13, 8], 13, "left")
    lcfg = cfg.replace(lora=lora.LoraConfig(rank=RANK, alpha=8.0, embeddings=embeddings))
    init_params = lambda: Transformer(lcfg).init(jax.random.key(2), ids, mask)["params"]
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    abstract = sharding.tree_shardings(jax.eval_shape(init_params), mesh)
    params = randomized_adapters(lora.conform(base, init_params, abstract))
    ours = np.asarray(Transformer(lcfg).apply({"params": params}, ids, mask).logits)
    out = hf.save_pretrained(str(tmp_path / "export"), lcfg, params)
    adapter = f"{out}/{hf.PEFT_ADAPTER_DIR}"
    base_model = transformers.AutoModelForCausalLM.from_pretrained(
        source, attn_implementation="eager"
    )
    real = mask.astype(bool)
    base_logits = hf_logits(base_model, ids, mask)[real]
    loaded = peft.PeftModel.from_pretrained(base_model, adapter).eval()
    np.testing.assert_allclose(hf_logits(loaded, ids, mask)[real], ours[real], atol=1e-4, rtol=0)
    # The adapters do change the model: with them disabled peft gives the base's logits.
    with loaded.disable_adapter():
        disabled = hf_logits(loaded, ids, mask)[real]
    assert not np.allclose(disabled, ours[real], atol=1e-3)
    np.testing.assert_allclose(disabled, base_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("quantize", "kernel_tolerance", "logits_tolerance"),
    [("int8", 0.01, 0.025), ("int4", 0.15, 0.4)],
)
def test_quantized_base_logits_are_close_to_fp32(quantize, kernel_tolerance, logits_tolerance):
    """Relative errors ‖Δ‖ / ‖·‖ of the quantized base against fp32 (the same Gaussian weights
    of std ≈ 0.1): every kernel within 1 % (int8 per channel; measured 0.5 %) or 15 % (int4
    in groups of 32; measured 10 %), the logits of the two-layer model within 2.5 % (measured
    1.7 %) or 40 % (measured 29 %: symmetric 4-bit absmax, the errors of every layer add up)."""
    base = randomized_norms(init(CFG, seed=3))
    cfg = lora_config(quantize=quantize, group_size=32)
    init_params = lambda: Transformer(cfg).init(jax.random.key(0), IDS)["params"]
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    shardings = sharding.tree_shardings(jax.eval_shape(init_params), mesh)
    quantized = lora.conform(base, init_params, shardings)
    assert quantized["layer_0"]["mlp"]["up"]["kernel"].dtype == jnp.dtype(quantize)
    relative = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    for layer in ("layer_0", "layer_1"):
        for group, name in (("attn", "q"), ("attn", "o"), ("mlp", "down")):
            weights = quantized[layer][group][name]
            restored = lora.dequantize(weights["kernel"], weights["kernel_scale"])
            assert relative(restored, base[layer][group][name]["kernel"]) <= kernel_tolerance
    assert relative(logits(cfg, quantized), logits(CFG, base)) <= logits_tolerance
    # Export: dequantized weights equal the forward's, merged into a plain tree.
    merged = lora.merge(quantized, cfg.lora.scale)
    np.testing.assert_allclose(logits(CFG, merged), logits(cfg, quantized), atol=1e-5)


def randomized_norms(params):
    """Larger weights than the init's 0.02 (so the logits are not all ≈ 0)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(9), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def test_qlora_sft_lowers_the_loss():
    config = experiment_config("sft")
    config.lora.update(rank=8, quantize="int4", group_size=32)
    config.model_overrides.num_layers = 1
    config.data.num_train, config.data.max_length = 256, 32
    setup = setup_lib.setup(config, sft.load_data)
    optimizer, _ = make_optimizer(num_steps=60, learning_rate=3e-2, warmup_steps=0)
    state, shardings = setup_lib.policy_state(setup, optimizer, frozen=())
    frozen_kernel = lambda state: state.models["policy"].params["layer_0"]["attn"]["qkv"]["kernel"]
    kernel = np.asarray(frozen_kernel(state))  # a host copy: the step donates the state
    assert kernel.dtype == jnp.int4
    step = supervised_step(sft.make_loss_fn(setup.model_config), optimizer, shardings, setup.mesh)
    train, _ = setup.data
    data = sharding.batch_sharding(setup.mesh)
    losses = []
    for i in range(60):
        rows = slice(16 * (i % 16), 16 * (i % 16) + 16)
        batch = {k: v[rows] for k, v in train.items()}
        state, metrics = step(state, sharding.global_batch(batch, data))
        losses.append(float(metrics["loss"]))
    # Measured: 4.33 → 3.9 nats over 60 steps from a random base.
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.2
    np.testing.assert_array_equal(
        state.models["policy"].params["layer_0"]["attn"]["qkv"]["kernel"], kernel
    )


# ----------------------------------------------------------------------------- every algorithm

# best_of_n trains nothing (it samples from a fixed policy), embedding_rm only heads on frozen
# embeddings (no decoder to adapt), and a pipeline runs the others.
TRAINING = sorted(set(algorithms.MODULES) - {"best_of_n", "embedding_rm", "pipeline"})


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A random one-layer gpt2-tiny export with the task tokenizer (an SFT policy stand-in)."""
    tokenizer = build_tokenizer()
    cfg = model_source.resolve_config("gpt2-tiny", tokenizer=tokenizer, overrides={"num_layers": 1})
    params = init_params_of(cfg)
    return hf.save_pretrained(
        str(tmp_path_factory.mktemp("policy")), cfg, params, tokenizer=tokenizer
    )


def init_params_of(cfg):
    ids = jnp.zeros((1, 2), jnp.int32)
    return sharding.unbox(Transformer(cfg).init(jax.random.key(0), ids)["params"])


def no_warmup(section):
    """Every ``optimizer`` section of a config without warmup (a first step that updates)."""
    for key, value in section.items():
        if key == "optimizer":
            value.warmup_steps = 0
        elif hasattr(value, "items"):
            no_warmup(value)


def tiny(algorithm, policy):
    config = experiment_config(algorithm)
    config.update(num_steps=1, batch_size=8, eval_every=0, log_every=1, export=False)
    config.lora.update(rank=RANK, dropout=0.1)
    config.init_from = policy
    no_warmup(config)
    config.data.update(num_train=32, num_eval=16, max_length=24)
    config.policy_eval.update(num_prompts=8, max_new_tokens=4)
    config.sampling.update(max_new_tokens=6, group_size=2)
    section = config.get(algorithm)
    if algorithm == "spin":
        config.sampling.group_size = 1
    elif algorithm == "ppo":
        section.num_minibatches = 1
    elif algorithm == "afd":
        section.update(negative=policy, num_eval_prompts=8, sample_batch_size=32)
    elif algorithm in ("reward_model", "embedding_rm") and "num_eval_prompts" in section:
        section.num_eval_prompts = 8
    return config


@pytest.mark.parametrize("algorithm", TRAINING)
def test_one_lora_step_of_every_algorithm(algorithm, policy_dir, tmp_path, monkeypatch):
    """The algorithm's own ``train`` up to the loop, then one step: every trained model with
    adapters keeps its base weights and changes its adapters; losses are finite; and (with
    ``lora.dropout``) every adapted model's training forward runs its adapters with a dropout
    rng (recorded while the step is traced)."""
    seen, dropout_paths = {}, set()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, lora.LoraDense) and module.has_rng("dropout"):
            dropout_paths.add(module.scope.path[0] == "transformer")
        return next_fun(*args, **kwargs)

    def one_step(*, state, train_step, batches, mesh, **_):
        before = jax.device_get(state)
        with nn.intercept_methods(record):
            after, metrics = train_step(state, next(_Streams(batches, mesh)))
        seen.update(before=before, after=jax.device_get(after), metrics=jax.device_get(metrics))
        return after, {}

    monkeypatch.setattr(setup_lib, "train_loop", one_step)
    algorithms.run(tiny(algorithm, policy_dir), str(tmp_path))
    before, after = seen["before"], seen["after"]
    adapted = [n for n, m in before.models.items() if lora.has_adapters(m.params)]
    assert adapted
    # A head model (reward model, critic, discriminator) holds its decoder under "transformer".
    heads = {"transformer" in before.models[name].params for name in adapted}
    assert heads <= dropout_paths, (adapted, dropout_paths)
    for name in adapted:
        old, new = lora.split(before.models[name].params), lora.split(after.models[name].params)
        jax.tree.map(np.testing.assert_array_equal, old[1], new[1])  # the frozen base
        changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), old[0], new[0])
        assert any(jax.tree.leaves(changed)), name
    for key, value in seen["metrics"].items():
        if key.endswith("loss"):
            assert np.all(np.isfinite(value)), key


def test_qlora_with_trained_embeddings_resumes_exactly(policy_dir, tmp_path, monkeypatch):
    """DPO with int4 QLoRA adapters and a trained embedding delta, killed after 2 of 4 steps
    and resumed: the step-4 checkpoint (int4 base, adapters, delta, Adam moments, the
    ``SharedBase`` reference) equals an uninterrupted run's bit for bit."""
    from irl_jax.algorithms import direct

    # The policy evaluation (sampling) is left out: the runs check the state, not the metrics.
    monkeypatch.setattr(setup_lib, "policy_evaluator", lambda setup: lambda *_: ({}, []))

    def run(workdir, num_steps):
        config = tiny("direct", policy_dir)
        config.update(num_steps=num_steps, checkpoint_every=2)
        config.lora.update(quantize="int4", group_size=32, embeddings=True)
        config.optimizer.schedule = "constant"
        direct.train(config, str(workdir))

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    straight, resumed = (
        CheckpointManager(str(tmp_path / n)).read(4) for n in ("straight", "resumed")
    )
    names = {lora.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(straight)}
    assert any(n.endswith(lora.EMBEDDING_DELTA) for n in names)
    assert any(n.endswith("kernel_scale") for n in names)
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_lora_step_needs_less_memory_than_full_fine_tuning():
    """XLA's memory analysis of the compiled SFT step of gpt2-d768 (6 layers, scanned) on one
    device: with LoRA the optimizer state is the adapters' and no gradient of the base is
    kept, so arguments + temporaries + outputs shrink."""
    from irl_jax import plan

    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    config = experiment_config("sft")
    config.update(model="gpt2-d768", batch_size=4)
    config.data.max_length = 64
    config.model_overrides.scan_layers = True
    cfg = plan.model_config(config)
    full = plan.compile_workload(plan.train_workload(config, cfg, mesh), mesh)
    cfg = cfg.replace(lora=lora.LoraConfig(rank=8))
    low = plan.compile_workload(plan.train_workload(config, cfg, mesh), mesh)
    assert low.optimizer < 0.05 * full.optimizer
    assert low.temporaries < full.temporaries
    assert low.total < 0.6 * full.total


def lora_sft_steps(mesh, num_steps=3):
    """``num_steps`` LoRA SFT steps of llama-tiny (a frozen reference beside it) on ``mesh``."""
    cfg = lora_config()
    optimizer, _ = make_optimizer(num_steps=10, learning_rate=3e-2, warmup_steps=0)
    policy = create_model(model_source.init_fn(Transformer(cfg), 0), optimizer, mesh)
    reference = tuple(
        SharedBase(lora.adapters_only(tree)) for tree in (policy[0].params, policy[1].params)
    )
    state, shardings = create_state(
        mesh, seed=0, models={"policy": policy}, frozen={"reference": reference}
    )
    step = supervised_step(sft.make_loss_fn(cfg), optimizer, shardings, mesh)
    ids = np.random.default_rng(0).integers(3, 97, (8, 12)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
    losses = []
    for _ in range(num_steps):  # the same batch: the loss falls
        state, metrics = step(state, sharding.global_batch(batch, sharding.batch_sharding(mesh)))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_lora_on_eight_devices_equals_one_device():
    one, losses1 = lora_sft_steps(sharding.make_mesh({"data": 1}, jax.devices()[:1]))
    eight, losses8 = lora_sft_steps(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    # Adam divides by √v: an adapter entry with a near-zero gradient magnifies the sharded
    # reductions' float reassociation (measured ≤ 4e-6 absolute after three steps).
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    jax.tree.map(close, eight.models, one.models)
    jax.tree.map(close, eight.frozen, one.frozen)
    assert losses1[-1] < losses1[0]


def test_lora_grpo_improves_the_gold_reward_of_the_sft_policy(preference_sft, tmp_path):
    """GRPO with rank-4 adapters on every attention and MLP layer (6 % of gpt2-tiny's params)
    from the shared SFT policy, against the preference task's gold reward: the evaluation on
    128 held-out prompts beats the SFT start by more than 2 combined standard errors. The
    reference is the base with the adapters off."""
    from irl_jax.algorithms import policy_gradient

    config = experiment_config("policy_gradient")
    config.init_from = preference_sft
    config.num_steps, config.batch_size = 40, 16
    config.eval_every, config.log_every, config.checkpoint_every = 0, 10, 0
    config.data.task, config.data.max_length, config.data.num_train = "preference", 40, 1024
    config.policy_eval.num_prompts, config.policy_eval.max_new_tokens = 128, 24
    config.sampling.group_size, config.sampling.max_new_tokens = 4, 24
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 5
    config.policy_gradient.kl_coef = 0.05
    config.lora.rank, config.lora.alpha = RANK, 16.0
    metrics = policy_gradient.train(config, str(tmp_path))

    state = policy_gradient.build(config).state
    trained = sum(x.size for x in jax.tree.leaves(lora.split(state.models["policy"].params)[0]))
    total = sum(x.size for x in jax.tree.leaves(state.models["policy"].params))
    assert trained <= 0.1 * total
    gain = metrics["eval/reward/gold_mean"] - metrics["eval/ref_reward/gold_mean"]
    stderr = np.hypot(metrics["eval/reward/gold_stderr"], metrics["eval/ref_reward/gold_stderr"])
    assert gain > 2 * stderr, metrics


def test_lora_dpo_with_trained_embeddings_improves_the_gold_reward(preference_sft, tmp_path):
    """DPO with rank-2 adapters on every attention and MLP layer plus the trained embedding
    table (``lora.embeddings``; 7.6 % of gpt2-tiny's params) from the shared SFT policy: the
    evaluation on 256 held-out prompts beats the SFT start by more than 2 combined standard
    errors (measured +0.61 ± 0.05). Adapters alone (rank 4, 6 %) do not (+0.04 ± 0.07): see the
    README's LoRA section."""
    from irl_jax.algorithms import direct

    config = experiment_config("direct")
    config.init_from = preference_sft
    config.num_steps, config.batch_size = 150, 32
    config.eval_every, config.log_every, config.export = 0, 50, False
    config.data.num_train, config.data.num_eval, config.data.max_length = 4096, 256, 40
    config.optimizer.learning_rate = 1e-3
    config.direct.beta = 0.5
    config.lora.rank, config.lora.alpha, config.lora.embeddings = 2, 16.0, True
    metrics = direct.train(config, str(tmp_path))

    params = setup_lib.create_policy(setup_lib.setup(config), optax.identity())[0].params
    assert lora.count_trainable(params) <= 0.1 * sum(x.size for x in jax.tree.leaves(params))
    gain = metrics["eval/reward/gold_mean"] - metrics["eval/ref_reward/gold_mean"]
    stderr = np.hypot(metrics["eval/reward/gold_stderr"], metrics["eval/ref_reward/gold_stderr"])
    assert gain > 2 * stderr, metrics
