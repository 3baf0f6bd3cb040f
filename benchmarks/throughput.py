"""Throughput of irl_jax vs Hugging Face transformers + PyTorch on the same CPU, in one run.

    python -m benchmarks.throughput                 # full: d256 and d768, prints a table
    python -m benchmarks.throughput --fast          # CI smoke mode: tiny sizes, 1 repeat

Workloads (GPT-2-shaped models, fp32, random weights; same shapes on both sides):
  * sampler: new tokens/s, batch 8, prompt 32, 128 new tokens, sampling at T = 1 (no early stop);
  * train steps: tokens/s of one AdamW step on a batch of 8 × 256 (SFT; reward-model and DPO
    steps as they exist), with achieved FLOP/s from XLA's ``cost_analysis()`` of the compiled
    step and its fraction of the matmul peak measured in the same run.
Timings are medians over repeats after a warm-up (compilation excluded). Run without the
fake-device flag. Results go to ``--output`` as JSON.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from benchmarks.timing import machine, matmul_peak, write_results

_FAST = flags.DEFINE_bool("fast", False, "Tiny sizes and one repeat (CI smoke mode).")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/throughput.json", "JSON output.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per workload (full mode).")
_TORCH = flags.DEFINE_bool("torch", True, "Also run the HF/PyTorch baselines if installed.")
_SIZES = flags.DEFINE_list("sizes", None, "Subset of sizes to run (default: all of the mode).")


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int = 8192
    positions: int = 512


@dataclasses.dataclass(frozen=True)
class Workload:
    batch: int
    prompt: int
    new_tokens: int
    train_length: int


FULL = (
    [Size("d256", 4, 256, 4), Size("d768", 6, 768, 12)],
    Workload(batch=8, prompt=32, new_tokens=128, train_length=256),
)
FAST = ([Size("tiny", 1, 64, 2, vocab=512, positions=64)], Workload(2, 8, 8, 32))


def run(sizes: list[Size], workload: Workload, repeats: int, with_torch: bool) -> dict:
    from benchmarks import jax_side, torch_side

    has_torch = with_torch and torch_side.available()
    results = {
        "machine": machine(),
        "workload": dataclasses.asdict(workload),
        "repeats": repeats,
        "matmul_peak_flops": matmul_peak(repeats, 512 if workload.batch < 8 else 2048),
        "sizes": {},
    }
    for size in sizes:
        entry = {"size": dataclasses.asdict(size)}
        entry["jax"] = jax_side.measure(size, workload, repeats)
        if has_torch:
            entry["torch"] = torch_side.measure(size, workload, repeats)
            entry["ratio"] = {
                key: entry["jax"][key] / entry["torch"][key]
                for key in entry["jax"]
                if key.endswith("_per_s") and key in entry["torch"]
            }
        for key in [k for k in entry["jax"] if k.endswith("_flops_per_s")]:
            entry["jax"][key.replace("_flops_per_s", "_peak_fraction")] = (
                entry["jax"][key] / results["matmul_peak_flops"]
            )
        results["sizes"][size.name] = entry
    return results


def table(results: dict) -> str:
    """A plain-text table of the results."""
    peak = results["matmul_peak_flops"] / 1e9
    lines = [
        f"matmul peak (fp32, XLA): {peak:.1f} GFLOP/s on {results['machine']['cpu_count']} "
        f"cores ({results['machine']['processor']})"
    ]
    header = f"{'size':<6} {'metric':<28} {'irl_jax':>12} {'HF/torch':>12} {'ratio':>7}"
    lines += [header, "-" * len(header)]
    for name, entry in results["sizes"].items():
        for key, value in entry["jax"].items():
            theirs = entry.get("torch", {}).get(key)
            ratio = entry.get("ratio", {}).get(key)
            lines.append(
                f"{name:<6} {key:<28} {value:>12.4g} "
                f"{(f'{theirs:.4g}' if theirs is not None else '-'):>12} "
                f"{(f'{ratio:.2f}x' if ratio is not None else ''):>7}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    sizes, workload = FAST if _FAST.value else FULL
    if _SIZES.value:
        sizes = [s for s in sizes if s.name in _SIZES.value]
    repeats = 1 if _FAST.value else _REPEATS.value
    results = run(sizes, workload, repeats, _TORCH.value)
    print(table(results))
    write_results(results, _OUTPUT.value)


if __name__ == "__main__":
    app.run(main)
