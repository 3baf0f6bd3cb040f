"""irl_jax.host_memory: with ``IRL_JAX_KEEP_FREED_MEMORY=1`` a freed block's pages are reused,
not faulted in again; by default the C library's behaviour is left as it is."""

import os
import subprocess
import sys

PROBE = """
import ctypes, resource
import irl_jax
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
def touch():  # a step's buffer: allocated, written, freed
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(irl_jax.HOST_MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_block_is_reused_without_page_faults():
    pages = (256 << 20) // 4096
    tuned, faults = _probe(IRL_JAX_KEEP_FREED_MEMORY="1")
    if not sys.platform.startswith("linux"):  # glibc's mallopt only: nothing is changed
        assert tuned == "False"
        return
    assert tuned == "True"
    assert faults < pages // 100, faults  # measured: 0 (65,537 with the defaults)
    default, faults = _probe(IRL_JAX_KEEP_FREED_MEMORY="")
    assert default == "False"
    assert faults > 0  # the block went back to the kernel (its pages, or huge pages, fault in)
