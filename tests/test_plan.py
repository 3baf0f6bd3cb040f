"""The ahead-of-time memory planner: presets at their published sizes, XLA's argument bytes
equal to the analytic params + optimizer state per device, model FLOPs against XLA's count,
the verdict for a config that does not fit, and the command line (TPU or its CPU fallback)."""

import math

import jax
import pytest

from experiments.configs import grpo, rm_bt, sft
from irl_jax import plan, sharding
from irl_jax.models import preset

# Parameter counts published with each checkpoint (model cards / safetensors metadata).
PUBLISHED = {
    "gpt2-124m": 124_439_808,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "mistral-7b": 7_241_732_096,
}


def test_presets_have_the_published_sizes():
    for name, count in PUBLISHED.items():
        params = plan._abstract_params(preset(name))
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == count, name


def test_parse_sizes_and_meshes():
    assert plan.parse_bytes("16GiB") == 16 * 2**30
    assert plan.parse_bytes("80GB") == 80 * 10**9
    assert plan.parse_bytes("512MiB") == 2**29
    assert plan.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
    with pytest.raises(ValueError, match="16 gigs"):
        plan.parse_bytes("16 gigs")


def test_help_lists_the_flags_and_targets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--device_memory" in out and "v4-32" in out and "fake CPU devices" in out


def sft_config(model: str, batch_size: int = 8, length: int = 32, **overrides):
    config = sft.get_config()
    config.model = model
    config.batch_size = batch_size
    config.data.max_length = length
    config.model_overrides.update(overrides)
    return config


def test_argument_bytes_equal_params_and_optimizer_state_per_device():
    """Llama-3.2-1B (fp32, AdamW) on an 8-device FSDP mesh: every matrix is split 8 ways, the
    33 RMSNorm scales (2048 each) are replicated; Adam keeps two moments per param."""
    mesh = sharding.make_mesh({"fsdp": 8})
    config = sft_config("llama-3.2-1b", scan_layers=True)
    cfg, (step,) = plan.plan(config, mesh, sampler=False)
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    params = 4 * ((PUBLISHED["llama-3.2-1b"] - norms) // 8 + norms)
    assert step.params == params
    assert step.optimizer == pytest.approx(2 * params, rel=1e-6)  # + Adam's step counts
    assert step.argument_bytes == pytest.approx(step.params + step.optimizer, rel=0.01)
    assert step.argument_bytes >= step.params + step.optimizer
    assert step.temporaries > 0 and step.has_loops  # layers under scan

    text = plan.format_report(
        config, cfg, [step], target="cpu", mesh=mesh, memory=16 * 2**30, caveat=None
    )
    assert "verdict: fits in 16.00 GiB" in text and "1.24 B params" in text
    # 1.85 GB of params and Adam moments per device cannot fit in 1 GiB.
    assert step.params + step.optimizer > 2**30
    text = plan.format_report(
        config, cfg, [step], target="cpu", mesh=mesh, memory=2**30, caveat=None
    )
    assert "verdict: does NOT fit in 1.00 GiB" in text and " NO (" in text


def test_model_flops_match_xla_on_a_loop_free_step():
    """A GPT-2 (d256, 4 layers) and a Llama (GQA, SwiGLU), layers unrolled, one microbatch: XLA
    counts every FLOP of the step once, and the analytic 3 × (2 · matmul params · tokens +
    attention) agrees. (On a tensor axis that a dimension does not divide, XLA counts more:
    GPT-2's 50257-token vocabulary over tensor=2 makes both devices compute all logits.)"""
    mesh = sharding.make_mesh({"fsdp": 8})
    _, (step,) = plan.plan(sft_config("gpt2-d256", length=128), mesh, sampler=False)
    assert not step.has_loops
    assert step.model_flops == pytest.approx(step.xla_flops, rel=0.03)
    _, (step,) = plan.plan(sft_config("llama-small-cpu", length=128), mesh, sampler=False)
    assert not step.has_loops
    assert step.model_flops == pytest.approx(step.xla_flops, rel=0.03)


@pytest.mark.parametrize("module", [rm_bt, grpo])
def test_reward_model_and_grpo_steps_and_the_sampler_compile(module):
    config = module.get_config()
    config.model = "llama-small-cpu"
    config.model_overrides.scan_layers = True
    config.init_from = ""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    _, rows = plan.plan(config, mesh)
    if module is rm_bt:  # a reward model does not sample
        assert [row.name for row in rows] == ["train step"]
    else:  # 16 prompts × 8 responses, prompts of 8 tokens, 6 new tokens
        assert [row.name for row in rows] == ["train step", "sampler (128 × 8+6)"]
        # The step holds the policy and its frozen reference; the sampler the policy alone.
        assert rows[0].params == 2 * rows[1].params and rows[1].optimizer == 0
    assert rows[0].optimizer == pytest.approx(2 * rows[0].params / len(rows), rel=1e-3)
    assert all(row.temporaries > 0 and row.total > row.params + row.optimizer for row in rows)


def test_command_line_plans_a_tpu_slice_or_says_it_could_not(capsys, monkeypatch):
    for var in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE"):  # set by main for libtpu
        monkeypatch.setenv(var, "")
    argv = ["--config=experiments/configs/sft.py", "--config.model=gpt2-tiny", "--target=v5e-8"]
    argv += ["--mesh=fsdp=8", "--config.batch_size=8", "--config.data.max_length=16"]
    assert plan.main([*argv, "--nosampler"]) == 0
    out = capsys.readouterr().out
    try:
        import libtpu  # noqa: F401

        assert "8 × TPU v5 lite" in out and "caveat" not in out
    except ImportError:  # CI: no TPU compiler, fake CPU devices and the caveat
        assert "8 × cpu" in out and "caveat: no TPU compiler" in out
        assert plan.CPU_CAVEAT in out
    assert "16.00 GiB per device" in out and "verdict: fits" in out
    assert plan.main([*argv[:2], "--target=cpu", "--device_memory=64KiB", "--nosampler"]) == 1
    assert "verdict: does NOT fit in 0.00 GiB" in capsys.readouterr().out
