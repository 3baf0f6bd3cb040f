"""Embedded synthetic tasks with known gold rewards: the testbeds of every method.

The tasks share one word-level tokenizer (``build_tokenizer``, ``save_tokenizer``):

* ``arithmetic`` — verifiable two-digit addition, exact-match gold reward;
* ``preference`` — a review language with a hidden smooth lexicon-and-length gold reward
  (``preference_hetero``: its heterogeneous demonstrator, whose ``indeed`` follows a rule on the
  prompt's remark that a small policy may not imitate);
* ``reasoning`` — multi-step addition/subtraction with per-step correctness labels
  (``reasoning_long``: its long-horizon variant, 6-12 steps per problem).

Each task (``get_task(name)``) offers ``prompts``, ``gold_reward`` (jittable, on ids and masks),
``gold_reward_text``, ``base_corpus``, ``demonstrations``, ``demonstrator_entropy``,
``demonstrator_logprob``, ``preferences``, ``rankings`` and ``unpaired``; see ``base.Task``.
Every demonstrator over-uses the style token ``indeed``, which every gold reward ignores.
"""

from irl_jax.tasks.arithmetic import ArithmeticTask
from irl_jax.tasks.base import Task
from irl_jax.tasks.preference import PreferenceTask
from irl_jax.tasks.reasoning import STEP_SEPARATOR, ReasoningTask, long_horizon
from irl_jax.tasks.vocab import STYLE_TOKEN, VOCAB_SIZE, build_tokenizer, save_tokenizer

TASKS: dict[str, Task] = {
    "arithmetic": ArithmeticTask(),
    "preference": PreferenceTask(),
    "preference_hetero": PreferenceTask(name="preference_hetero", style_rule=True),
    "reasoning": ReasoningTask(),
    "reasoning_long": long_horizon(),
}


def get_task(name: str) -> Task:
    """The task called ``name``; raises ``ValueError`` naming the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]


__all__ = [
    "STEP_SEPARATOR",
    "STYLE_TOKEN",
    "TASKS",
    "VOCAB_SIZE",
    "ArithmeticTask",
    "PreferenceTask",
    "ReasoningTask",
    "Task",
    "build_tokenizer",
    "get_task",
    "save_tokenizer",
]
