"""Hugging Face transformers + PyTorch side of the throughput benchmark (eager fp32)."""

from __future__ import annotations

import os


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _model(size, cls_name: str = "GPT2LMHeadModel"):
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
        num_labels=1,
    )
    return getattr(transformers, cls_name)(config)


def _time_step(model, loss_fn, repeats: int) -> float:
    """Median seconds of one AdamW step (gradient clipping at 1.0) on ``loss_fn(model)``."""
    import torch

    from benchmarks.timing import median_seconds

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        loss_fn(model).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(train_step, repeats, warmup=2)


def _pairs(size, workload, generator):
    """Chosen and rejected ``[B, T]`` sharing a prompt, the response mask, reference log-probs."""
    import torch

    shape = (workload.batch, workload.train_length)
    prompt = torch.randint(1, size.vocab, (workload.batch, workload.prompt), generator=generator)
    chosen, rejected = (torch.randint(1, size.vocab, shape, generator=generator) for _ in "ab")
    chosen[:, : workload.prompt] = prompt
    rejected[:, : workload.prompt] = prompt
    loss_mask = torch.ones(shape)
    loss_mask[:, : workload.prompt] = 0
    ref = -2000 + 10 * torch.randn(2, workload.batch, generator=generator)
    return chosen, rejected, loss_mask, ref


def measure(size, workload, repeats: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

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

    ids = torch.randint(1, size.vocab, (workload.batch, workload.train_length), generator=generator)
    sft_seconds = _time_step(model, lambda m: m(input_ids=ids, labels=ids).loss, repeats)

    chosen, rejected, loss_mask, ref = _pairs(size, workload, generator)
    both, n = torch.cat([chosen, rejected]), len(chosen)

    def reward_loss(m):  # Bradley–Terry, chosen and rejected in one forward
        scores = m(input_ids=both).logits[:, 0]
        return -F.logsigmoid(scores[:n] - scores[n:]).mean()

    rm_seconds = _time_step(_model(size, "GPT2ForSequenceClassification"), reward_loss, repeats)

    def dpo_loss(m, beta=0.1):  # TRL-style: one concatenated forward, precomputed reference
        logits = m(input_ids=both).logits[:, :-1].float()
        logps = torch.gather(logits.log_softmax(-1), 2, both[:, 1:, None])[..., 0]
        sums = (logps * torch.cat([loss_mask, loss_mask])[:, 1:]).sum(-1)
        margin = (sums[:n] - ref[0]) - (sums[n:] - ref[1])
        return -F.logsigmoid(beta * margin).mean()

    dpo_seconds = _time_step(model, dpo_loss, repeats)
    return {
        "sampler_new_tokens_per_s": sampler,
        "sft_step_tokens_per_s": ids.numel() / sft_seconds,
        "rm_step_tokens_per_s": both.numel() / rm_seconds,
        "dpo_step_tokens_per_s": both.numel() / dpo_seconds,
    }
