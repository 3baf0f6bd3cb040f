"""Writes the worked example's task: arithmetic word problems as local JSONL files, and a small
Hugging Face model with its own tokenizer, so that the example needs nothing downloaded.

    python examples/make_task.py --out=examples/data

``OUT/sft.jsonl`` (``prompt``, ``completion``: demonstrations for SFT), ``OUT/prompts.jsonl`` and
``OUT/eval_prompts.jsonl`` (``prompt`` and the reference ``answer``: what a user's reward
function checks; held-out problems in the second), and ``OUT/model``: a randomly initialized
GPT-2 written by ``transformers`` with a byte-level BPE tokenizer trained here on the problems
(``tokenizers``, a second). Any Hugging Face causal-LM directory of your own can take its place.
"""

from __future__ import annotations

import argparse
import json
import os
import random

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana")
ITEMS = ("apple", "book", "coin", "marble", "pencil", "stamp")
EOS = "<|endoftext|>"


def problem(rng: random.Random, max_operand: int) -> dict[str, str]:
    """One word problem: an addition or a subtraction with a non-negative answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
    if rng.random() < 0.5:
        text = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have?"
        answer = a + b
    else:
        a, b = max(a, b), min(a, b)
        text = f"{name} has {a} {item}s and gives away {b}. How many {item}s are left?"
        answer = a - b
    return {"prompt": f"Question: {text}\nAnswer:", "answer": str(answer)}


def write_jsonl(path: str, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def make_model(out: str, texts: list[str], vocab_size: int) -> None:
    """A byte-level BPE tokenizer trained on ``texts`` and a random 2-layer GPT-2, saved as one
    Hugging Face directory."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, pad_token=EOS
    )
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.set_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="examples/data")
    parser.add_argument("--num_train", type=int, default=400, help="problems to train on")
    parser.add_argument("--num_eval", type=int, default=100, help="held-out problems")
    parser.add_argument("--max_operand", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seen, rows = set(), []
    while len(rows) < args.num_train + args.num_eval:  # unique prompts: no eval problem trains
        row = problem(rng, args.max_operand)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    train, held_out = rows[: args.num_train], rows[args.num_train :]
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(
        os.path.join(args.out, "sft.jsonl"),
        [{"prompt": r["prompt"], "completion": " " + r["answer"]} for r in train],
    )
    write_jsonl(os.path.join(args.out, "prompts.jsonl"), train)
    write_jsonl(os.path.join(args.out, "eval_prompts.jsonl"), held_out)
    texts = [r["prompt"] + " " + r["answer"] for r in rows]
    make_model(os.path.join(args.out, "model"), texts, vocab_size=400)
    print(f"wrote {len(train)} + {len(held_out)} problems and a model to {args.out}")


if __name__ == "__main__":
    main()
