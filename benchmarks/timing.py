"""Timing helpers for the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (which must block until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(repeats: int, n: int) -> float:
    """Measured fp32 matmul FLOP/s of this machine through XLA (``n × n`` by ``n × n``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
    return 2 * n**3 / seconds


def machine() -> dict:
    """The machine a benchmark ran on, and whether the host allocator was tuned
    (``IRL_JAX_KEEP_FREED_MEMORY=1``, ``irl_jax.host_memory``: process-wide, so a PyTorch side
    in the same process has it too)."""
    import irl_jax

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "host_malloc_tuned": irl_jax.HOST_MALLOC_TUNED,
    }


def write_results(results: dict, path: str) -> None:
    """Writes a benchmark's results as indented JSON (creating the folder) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
