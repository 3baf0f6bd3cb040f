"""Host memory: freed heap blocks stay in the process for the next step to reuse.

XLA:CPU allocates each step's buffers anew (its outputs and one temp buffer of up to gigabytes),
and glibc's malloc returns large freed blocks to the kernel (``mmap``'d blocks, trimmed
per-thread heaps), so every step writes to fresh pages, each a page fault in which the kernel
zeroes 4 KiB. Measured on the 2-core VM of the README: 497 K faults (2 GB of pages) per GRPO
iteration of the d512 L6 race in ``benchmarks/rl_iteration.py``, 190 K (780 MB) per reward-model
step at d256 in ``benchmarks/throughput.py``. With one malloc arena, no ``mmap``'d blocks and no
trimming, the next step reuses the same pages: 5 K faults per iteration, none per RM step.

``import irl_jax`` applies this on Linux with glibc (``mallopt``, before JAX starts its threads,
so that they share the one arena); set ``IRL_JAX_SYSTEM_MALLOC=1`` to keep the C library's
defaults. The process's resident memory then stays at its peak instead of falling between steps
(the peak itself is unchanged). Elsewhere (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT = "IRL_JAX_SYSTEM_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB free at the heap's top


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to one arena, no ``mmap``'d blocks and (practically) no trimming.

    Returns whether it was applied: ``False`` off Linux, without glibc's ``mallopt``, or with
    ``IRL_JAX_SYSTEM_MALLOC`` set.
    """
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt is a stub)
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
