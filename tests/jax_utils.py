"""Test utilities: counting XLA compilations."""

from __future__ import annotations

import contextlib

import jax

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yields a list that receives one entry per XLA backend compilation inside the block."""
    compiles: list[float] = []

    def listener(event: str, duration: float, **_):
        if event == _BACKEND_COMPILE:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
