"""The example's reward functions: plain Python on decoded text, named in the config as
``reward.functions = "examples/rewards.py:exact_match,examples/rewards.py:is_number"``.

Each takes the prompts and responses of a batch and, by name, any other column of the data
rows (here ``answer``, from ``prompts.jsonl``), and returns one float per response (or None to
leave that function out of a response's weighted sum).
"""


def exact_match(prompts: list[str], responses: list[str], answer: list[str]) -> list[float]:
    """1 if the response is the reference answer (surrounding spaces ignored), else 0."""
    return [float(response.strip() == ref) for response, ref in zip(responses, answer)]


def is_number(prompts: list[str], responses: list[str]) -> list[float]:
    """1 if the response is a whole number (the answer's format), else 0."""
    return [float(response.strip().isdigit()) for response in responses]
