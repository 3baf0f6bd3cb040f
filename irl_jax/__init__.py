"""irl_jax: LLM post-training as inverse reinforcement learning, in JAX/Flax."""

from irl_jax import host_memory

__version__ = "0.1.0"

# Before JAX starts its threads: freed step buffers stay in the process (see host_memory).
HOST_MALLOC_TUNED = host_memory.keep_freed_memory()
