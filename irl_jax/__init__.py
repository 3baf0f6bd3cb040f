"""irl_jax: LLM post-training as inverse reinforcement learning, in JAX/Flax."""

__version__ = "0.1.0"
