"""irl_jax: LLM post-training as inverse reinforcement learning, in JAX/Flax."""

from irl_jax import host_memory

__version__ = "0.1.0"

# Before JAX starts its threads, and only when asked: see host_memory.
HOST_MALLOC_TUNED = host_memory.from_environment()
