"""Host memory: freed heap blocks kept in the process for the next step to reuse (opt-in).

XLA:CPU allocates each step's buffers anew (its outputs and one temp buffer of up to gigabytes),
and glibc's malloc returns large freed blocks to the kernel (``mmap``'d blocks, trimmed or
deleted per-thread heaps), so every step writes to fresh pages, each a page fault in which the
kernel zeroes 4 KiB. Counted on the 2-core VM of the README: 497 K faults (2 GB of pages) per
GRPO iteration of the d512 L6 race in ``benchmarks/rl_iteration.py``, 190 K (780 MB) per
reward-model step at d256 in ``benchmarks/throughput.py``. With one malloc arena, no ``mmap``'d
blocks and no trimming, the next step reuses the same pages: 5 K faults per iteration, none per
RM step.

Why it is opt-in (``IRL_JAX_KEEP_FREED_MEMORY=1`` before ``import irl_jax``): on that VM the RM
step ran faster with it (median 1.16 s against 1.47 s, 8 alternating processes each) and the d512
iteration too (9.6 s against 10.2 s, one pair), but the d256 GRPO iteration, whose sampler runs
thousands of small kernels from two threads that then share one arena, ran slower in three of
five alternating pairs; PyTorch in the same process gains as much (its RM step 3079 → 4157
tokens/s), so it changes no ratio in the benchmarks. The process's resident memory stays at its
peak instead of falling between steps (the peak is unchanged). It must be set before JAX starts
its threads (they then share the one arena); off Linux with glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_IN = "IRL_JAX_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the heap's top


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to one arena, no ``mmap``'d blocks and (practically) no trimming.

    Returns whether it was applied: ``False`` off Linux or without glibc's ``mallopt``.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt is a stub)
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def from_environment() -> bool:
    """``keep_freed_memory()`` when ``IRL_JAX_KEEP_FREED_MEMORY=1``; whether it was applied."""
    return os.environ.get(OPT_IN) == "1" and keep_freed_memory()
