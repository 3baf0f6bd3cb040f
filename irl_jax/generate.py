"""Samples from a saved policy: ``python -m irl_jax.generate --model=DIR --prompt=TEXT``.

``DIR`` is any Hugging Face causal-LM directory this project reads (an ``export/`` of a run, or
a ``transformers`` ``save_pretrained`` directory). Its tokenizer is read from the same directory
(or ``--tokenizer=DIR``); a directory without tokenizer files falls back to the synthetic tasks'
tokenizer (``irl_jax.tasks.build_tokenizer``), with a warning.

Prompts come from ``--prompt=TEXT`` or ``--prompts=FILE``: a ``.txt`` file holds one prompt per
line (blank lines skipped); any other file is read by the data layer (``.jsonl``, ``.json``,
``.parquet``, ``.csv`` or a ``save_to_disk`` directory) as prompts: a ``prompt`` column of texts
or of message lists (rendered with the chat template), or any format ``irl_jax.data`` derives a
prompt from (e.g. ``prompt, chosen, rejected``). Prompts are tokenized exactly as
``irl_jax.data.load_and_tokenize(..., kind="prompt")`` does (left-padded; a long prompt keeps
its last ``--max_prompt_length`` tokens), then padded only to the longest prompt.

Sampling is ``irl_jax.sampling.sample`` on ``repeat_prompts(prompt_ids, prompt_mask,
num_samples)`` (the samples of one prompt are consecutive rows) with ``rng =
jax.random.key(seed)``, so a run reproduces ``sample``'s tokens exactly; with ``--batch_size``
smaller than the number of rows, batch ``b`` uses ``fold_in(key(seed), b)`` instead.

Output: one JSON record per sample, printed or written to ``--output=FILE.jsonl``:
``prompt_index``, ``sample_index``, ``prompt`` (as given: text or messages), ``response`` (the
decoded generated tokens without the stop token), ``response_ids`` (every generated token,
the stop token included), ``response_tokens`` (their count), ``stopped`` (whether a stop token
ended the response; otherwise ``--max_new_tokens`` cut it), ``response_logprob`` (the sum of log
softmax(logits / T) over the generated tokens, before top-k/top-p) and ``reward/<name>`` for
each reward function.

Reward functions: the library function ``generate`` takes ``rewards={name: fn}``, each ``fn``
the project's reward interface ``fn(prompt_ids, prompt_mask, response_ids, response_mask) ->
[B]`` (``irl_jax.rewards``: gold rewards, verifiers, learned reward models, sums of these), so
any reward source plugs in. The command line fills it with ``--task=NAME``: that synthetic task's
gold reward, as ``reward/gold``; and with ``--reward_functions=my_rewards:exact_match,...``
(``--reward_weights``, as ``config.reward``: ``irl_jax.user_rewards``, given the other columns
of a ``--prompts`` data file), recorded as ``reward/user`` (their weighted sum) and
``reward/<function>`` each (``None`` where it returned None).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from irl_jax import data as data_lib
from irl_jax import rewards as rewards_lib
from irl_jax import sampling, user_rewards
from irl_jax import sharding as sharding_lib
from irl_jax.models.config import ModelConfig

RewardFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

# Files of which any one makes a directory a tokenizer directory for ``AutoTokenizer``.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
DEFAULT_MAX_PROMPT_LENGTH = 1024


class Policy(NamedTuple):
    """A loaded causal LM: its config, params and tokenizer."""

    config: ModelConfig
    params: Any
    tokenizer: Any


def has_tokenizer(path: str) -> bool:
    """Whether ``path`` holds tokenizer files (``TOKENIZER_FILES``)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def load_policy(
    model_dir: str, *, tokenizer_dir: str | None = None, dtype: str = "float32"
) -> Policy:
    """Loads a Hugging Face causal-LM directory and its tokenizer.

    Args:
      model_dir: the checkpoint directory (``config.json`` + safetensors).
      tokenizer_dir: where the tokenizer is (default ``model_dir``; without tokenizer files
        there, the synthetic tasks' tokenizer is used).
      dtype: compute and parameter dtype (``"float32"``, ``"bfloat16"``).

    Returns:
      A ``Policy``.

    Raises:
      ValueError: a sequence-classification checkpoint, or a tokenizer with more tokens than the
        model's vocabulary.
    """
    from irl_jax.models.hf import load_pretrained, load_tokenizer

    config, params = load_pretrained(model_dir, dtype=dtype, param_dtype=dtype)
    if "score" in params:
        raise ValueError(f"{model_dir!r} is a sequence-classification checkpoint, not a causal LM")
    tokenizer_dir = tokenizer_dir or model_dir
    if has_tokenizer(tokenizer_dir):
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        from irl_jax.tasks import build_tokenizer

        logging.warning("%s has no tokenizer files: using the synthetic task tokenizer", model_dir)
        tokenizer = build_tokenizer()
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
            f"{config.vocab_size}: they do not belong together"
        )
    return Policy(config, params, tokenizer)


def prompt_rows(prompts: Any) -> Any:
    """Normalizes prompts into a source ``irl_jax.data.load_rows`` reads.

    Args:
      prompts: a path (a ``.txt`` file: one prompt per line, blank lines skipped; other files as
        in ``load_rows``), a sequence of prompt texts, a sequence of row dicts, or a
        ``datasets.Dataset``.

    Returns:
      The source: the path itself, or a list of row dicts.
    """
    if isinstance(prompts, (str, os.PathLike)):
        path = os.fspath(prompts)
        if not path.endswith(".txt"):
            return path
        with open(path, encoding="utf-8") as f:
            return [{"prompt": line.rstrip("\n")} for line in f if line.strip()]
    if isinstance(prompts, Sequence) and all(isinstance(p, str) for p in prompts):
        return [{"prompt": p} for p in prompts]
    return prompts


def tokenize_prompts(
    prompts: Any, tokenizer: Any, max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Reads and tokenizes prompts as ``load_and_tokenize(..., kind="prompt")`` does.

    Args:
      prompts: see ``prompt_rows``.
      tokenizer: a ``transformers`` tokenizer.
      max_prompt_length: a prompt keeps its last this many tokens.

    Returns:
      ``(prompts, prompt_ids, prompt_mask)``: each prompt as given (text or messages), and
      ``[N, P]`` int32 left-padded ids and mask, P the longest tokenized prompt.

    Raises:
      irl_jax.data.DataError: an unreadable source or an invalid row (naming it).
    """
    raw = data_lib.load_rows(prompt_rows(prompts))
    fmt = data_lib.detect_format(raw.columns, source=raw.source)
    records = data_lib.validate_rows(raw, fmt, "prompt")
    arrays, stats = data_lib.tokenize_records(
        records, tokenizer, "prompt", max_prompt_length, source=raw.source
    )
    if stats.rows_kept != len(records):
        raise data_lib.DataError(
            f"{raw.source}: {stats.rows_dropped} prompts tokenize to no token", source=raw.source
        )
    longest = int(arrays["prompt_mask"].sum(axis=-1).max())
    return (
        [record.examples[0].prompt for record in records],
        arrays["prompt_ids"][:, -longest:],
        arrays["prompt_mask"][:, -longest:],
    )


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pads the batch axis to ``rows`` by repeating the last row (one compiled shape)."""
    return np.pad(array, [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1), mode="edge")


def generate(
    model: str | Policy,
    prompts: Any,
    *,
    num_samples: int = 1,
    seed: int = 0,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    rewards: Mapping[str, RewardFn] | None = None,
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH,
    batch_size: int | None = None,
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """Samples ``num_samples`` responses per prompt and scores them.

    Args:
      model: a Hugging Face causal-LM directory (loaded with ``load_policy``) or a ``Policy``.
      prompts: texts, row dicts, a dataset or a file (see ``prompt_rows``).
      num_samples: responses per prompt (consecutive rows, ``sampling.repeat_prompts``).
      seed: the sampling key is ``jax.random.key(seed)`` (batch ``b`` of several:
        ``fold_in(key, b)``).
      max_new_tokens, temperature, top_k, top_p, greedy: as ``irl_jax.sampling.sample``; the
        stop tokens are the model's eos ids, else the tokenizer's eos.
      rewards: name → ``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [B]``
        (``irl_jax.rewards``' interface), each recorded as ``reward/<name>``.
      max_prompt_length: a prompt keeps its last this many tokens.
      batch_size: rows (prompts × samples) per sampling call (default: all at once); the last
        batch is padded to it so that one shape is compiled.
      dtype: compute and parameter dtype when ``model`` is a directory.

    Returns:
      One record per sample, prompt by prompt (the fields are listed in the module docstring).
    """
    policy = model if isinstance(model, Policy) else load_policy(model, dtype=dtype)
    texts, prompt_ids, prompt_mask = tokenize_prompts(prompts, policy.tokenizer, max_prompt_length)
    ids, mask = (
        np.asarray(x) for x in sampling.repeat_prompts(prompt_ids, prompt_mask, num_samples)
    )
    eos_ids = tuple(policy.config.eos_token_ids)
    if not eos_ids and policy.tokenizer.eos_token_id is not None:
        eos_ids = (int(policy.tokenizer.eos_token_id),)
    rows = len(ids)
    batch_size = min(batch_size or rows, rows)
    key = jax.random.key(seed)
    parts = []
    for index, start in enumerate(range(0, rows, batch_size)):
        stop = min(start + batch_size, rows)
        batch_ids = _pad_rows(ids[start:stop], batch_size)
        batch_mask = _pad_rows(mask[start:stop], batch_size)
        out = sampling.sample(
            policy.config,
            policy.params,
            batch_ids,
            batch_mask,
            rng=key if batch_size == rows else jax.random.fold_in(key, index),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            eos_ids=eos_ids,
        )
        part = {"response_ids": out.response_ids, "response_mask": out.response_mask}
        part["response_logprob"] = out.response_logprobs.sum(axis=-1)
        for name, fn in (rewards or {}).items():
            response = (out.response_ids, out.response_mask)
            source = rewards_lib.as_pytree(fn)
            scores, each = rewards_lib.scores_and_parts(source, batch_ids, batch_mask, *response)
            part[f"reward/{name}"] = scores
            part.update({f"reward/{function}": values for function, values in each.items()})
        user_rewards.raise_pending()  # a user reward function's error on this batch
        parts.append({k: v[: stop - start] for k, v in sharding_lib.to_host(part).items()})
    results = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    records = []
    for row in range(rows):
        tokens = [int(t) for t in results["response_ids"][row][results["response_mask"][row] > 0]]
        stopped = bool(tokens) and tokens[-1] in eos_ids
        record = {
            "prompt_index": row // num_samples,
            "sample_index": row % num_samples,
            "prompt": texts[row // num_samples],
            "response": policy.tokenizer.decode(tokens[:-1] if stopped else tokens),
            "response_ids": tokens,
            "response_tokens": len(tokens),
            "stopped": stopped,
            "response_logprob": float(results["response_logprob"][row]),
        }
        for name in (k for k in results if k.startswith("reward/")):
            value = float(results[name][row])
            record[name] = None if math.isnan(value) else value
        records.append(record)
    return records


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    from irl_jax.tasks import TASKS

    parser = argparse.ArgumentParser(
        prog=prog or "python -m irl_jax.generate",
        description="Samples responses from a Hugging Face causal-LM directory.",
        allow_abbrev=False,
    )
    parser.add_argument("--model", required=True, help="Hugging Face causal-LM directory")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default --model)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="prompts file: .txt (one per line), .jsonl, ...")
    source.add_argument("--prompt", help="one prompt text")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_prompt_length", type=int, default=DEFAULT_MAX_PROMPT_LENGTH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=None, help="rows per sampling call")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--output", default=None, help="JSONL file (default: print)")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default=None, help="score with this task's gold reward"
    )
    parser.add_argument(
        "--reward_functions",
        default="",
        help="score with your reward functions: 'my_rewards:exact_match,checks.py:format_ok'",
    )
    parser.add_argument("--reward_weights", default="", help="one weight per function (default 1)")
    return parser


def _user_rewards(args: argparse.Namespace, tokenizer: Any) -> Any:
    """``--reward_functions`` as a reward source, with the other columns of a ``--prompts``
    data file (e.g. a reference ``answer``) passed to them."""
    specs = user_rewards.parse_list(args.reward_functions)
    table = None
    if args.prompts and not args.prompts.endswith(".txt"):
        table = user_rewards.row_columns(
            [args.prompts], tokenizer, args.max_prompt_length, args.max_prompt_length
        )
    return user_rewards.user_rewards(
        specs,
        tokenizer,
        weights=user_rewards.parse_weights(args.reward_weights, len(specs)),
        table=table,
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line entry point.

    Args:
      argv: the arguments after the program name (default ``sys.argv[1:]``).
      prog: the program name shown in usage messages.

    Returns:
      The exit status (0; 1 for a missing or unusable model, unreadable prompts or invalid
      settings; bad flags exit with 2).
    """
    args = _parser(prog).parse_args(argv)
    rewards = {}
    if args.task:
        from irl_jax.tasks import get_task

        rewards["gold"] = get_task(args.task).gold_reward
    try:
        policy = load_policy(args.model, tokenizer_dir=args.tokenizer, dtype=args.dtype)
        if args.reward_functions:
            rewards["user"] = _user_rewards(args, policy.tokenizer)
        records = generate(
            policy,
            [args.prompt] if args.prompt is not None else args.prompts,
            num_samples=args.num_samples,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            greedy=args.greedy,
            rewards=rewards,
            max_prompt_length=args.max_prompt_length,
            batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        # Missing or mismatched model/tokenizer files, unreadable prompts, bad settings.
        print(f"error: {e}", file=sys.stderr)
        return 1
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    if args.output is None:
        print("\n".join(lines))
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    summary = ", ".join(
        f"{name}={np.mean([r[name] for r in records]):.3f}"
        for name in ("response_tokens", *(f"reward/{n}" for n in rewards))
    )
    print(f"wrote {len(records)} samples to {args.output} (means: {summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
