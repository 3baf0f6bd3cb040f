"""Hugging Face transformers + PyTorch side of the throughput benchmark (eager fp32)."""

from __future__ import annotations

import os


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _model(size):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=size.vocab,
        n_positions=size.positions,
        n_embd=size.hidden,
        n_layer=size.layers,
        n_head=size.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def measure(size, workload, repeats: int) -> dict[str, float]:
    import torch

    from benchmarks.timing import median_seconds

    torch.set_num_threads(os.cpu_count() or 1)
    model = _model(size)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, size.vocab, (workload.batch, workload.prompt), generator=generator)
    mask = torch.ones_like(prompt)

    model.eval()

    @torch.no_grad()
    def generate():
        model.generate(
            prompt,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=workload.new_tokens,
            min_new_tokens=workload.new_tokens,
            pad_token_id=0,
        )

    sampler = workload.batch * workload.new_tokens / median_seconds(generate, repeats)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1, size.vocab, (workload.batch, workload.train_length), generator=generator)

    def train_step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_seconds = median_seconds(train_step, repeats, warmup=2)
    return {
        "sampler_new_tokens_per_s": sampler,
        "sft_step_tokens_per_s": ids.numel() / step_seconds,
    }
