"""Pieces the multi-run experiment drivers share (no absl flags here: drivers define their own)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


class Clock:
    """Wall seconds of each named stage (printed as it ends, kept for the JSON)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[name] = time.perf_counter() - start
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def compilation_cache(workdir: str) -> None:
    """Runs that differ only in a seed or a reward source compile many of the same programs
    (sampler, policy update): a persistent cache in WORKDIR/jax_cache compiles them once (a
    fresh WORKDIR starts cold)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
