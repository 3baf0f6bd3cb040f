"""``benchmarks/accelerator.py`` in its CPU smoke mode, so that the accelerator script cannot rot
between runs on real chips."""

import json

from benchmarks import accelerator


def test_fast_mode_writes_every_figure(tmp_path):
    output = tmp_path / "accelerator.json"
    assert accelerator.main(["--fast", "--workloads=sft", f"--output={output}"]) == 0
    results = json.loads(output.read_text())
    assert results["shape"]["model"] == "llama-tiny" and results["peak_flops"] > 0
    full, low = results["workloads"]["sft/full"], results["workloads"]["sft/lora"]
    for row in (full, low):
        assert row["tokens"] == 8 * 32 and row["tokens_per_second"] > 0
        assert row["mfu"] > 0 and row["xla_flops"] > 0 and row["program_bytes_per_device"] > 0
    assert low["trainable_params"] < 0.5 * full["trainable_params"]
    assert low["program_bytes_per_device"] < full["program_bytes_per_device"]
    assert low["model_flops"] == full["model_flops"] * 2 / 3
