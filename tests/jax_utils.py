"""Test utilities: counting XLA compilations."""

from __future__ import annotations

import contextlib

import jax

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def count_compiles():
    """Yields a list that receives one entry per XLA compilation inside the block: a backend
    compile (its seconds), or a program served by the persistent compilation cache that the
    test run uses (0.0) — either way the program was not found in the jit's own cache."""
    compiles: list[float] = []

    def compiled(event: str, duration: float, **_):
        if event == _BACKEND_COMPILE:
            compiles.append(duration)

    def cache_hit(event: str, **_):
        if event == _CACHE_HIT:
            compiles.append(0.0)

    jax.monitoring.register_event_duration_secs_listener(compiled)
    jax.monitoring.register_event_listener(cache_hit)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(compiled)
        jax.monitoring.unregister_event_listener(cache_hit)
