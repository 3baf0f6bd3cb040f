"""Autoregressive sampling: one prefill, then KV-cache decoding inside ``lax.while_loop``.

Shapes: B batch, P prompt length (left-padded), N ``max_new_tokens``, S = P + N - 1 cache slots,
V vocab.

Prompts are left-padded, so every row's last prompt token sits in slot P - 1 and decode step i
writes slot P - 1 + i for all rows at once (the cache slot is shared); each row's *position* is
its own count of real tokens, so RoPE and GPT-2's learned positions see unpadded sequences.
Causality is by slot, so one ``[B, S]`` slot mask (the prompt mask followed by ones) serves the
prefill and every decode step: slots not yet written are never attended to.

Log-prob conventions (as in TRL and verl):

* ``response_logprobs`` = log softmax(logits / T)[token], **without** top-k / top-p filtering:
  what a teacher-forced forward at temperature T gives, hence what PPO/GRPO importance ratios
  compare against (``teacher_forced_logprobs`` recomputes it).
* ``sampling_logprobs`` = log-probability under the distribution actually sampled from (after
  temperature, top-k, then top-p). With ``greedy=True`` the sampling distribution is a point mass,
  so ``sampling_logprobs`` is 0 for every real token while ``response_logprobs`` is still
  log softmax(logits / T)[argmax].

Performance: the cache lives only inside the jitted function (no donation needed at its
boundary) and is updated with ``dynamic_update_slice`` in the loop carry; everything
step-independent (slot mask, positions offset) is hoisted; with ``top_k == 0`` and ``top_p == 1``
filtering is skipped statically (no sort); top-k alone uses ``lax.top_k``; only top-p without
top-k needs a full-vocabulary sort.

Filtering ties: top-k and top-p keep every token whose scaled logit is at least the smallest kept
logit (as Hugging Face's ``TopKLogitsWarper`` does), so exact ties at the boundary are all kept.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from irl_jax.models.config import ModelConfig
from irl_jax.models.transformer import KVCache, Transformer, init_cache, positions_from_mask
from irl_jax.objectives.logprobs import next_token_logprobs, token_logprobs
from irl_jax.sharding import constrain

_CACHE_AXES = ("layers", "act_batch", "act_kv_heads", "act_length", "act_head_dim")
_BATCH_AXES = ("act_batch", None)


class SampleOutput(NamedTuple):
    """Sampled responses, all ``[B, N]``, right-aligned after the (left-padded) prompt.

    Attributes:
      response_ids: int32 generated tokens; positions after a row's stop token hold the pad id
        (``model_config.pad_token_id``, or 0 when the checkpoint defines none).
      response_mask: int32, 1 for real generated tokens **including** the EOS token that stopped
        the row, 0 after it.
      response_logprobs: float32 log softmax(logits / T) of each token, unfiltered; 0 where masked.
      sampling_logprobs: float32 log-prob under the filtered sampling distribution (0 for greedy
        decoding, a point mass); 0 where masked.
    """

    response_ids: jax.Array
    response_mask: jax.Array
    response_logprobs: jax.Array
    sampling_logprobs: jax.Array


class _LoopState(NamedTuple):
    step: jax.Array  # int32 scalar: index of the token being generated
    token: jax.Array  # [B] token to feed at slot P - 1 + step
    cache: KVCache
    finished: jax.Array  # [B] bool: the row has emitted a stop token
    output: SampleOutput


def pad_id_of(model_config: ModelConfig) -> int:
    """The id written after a row stops: the checkpoint's pad id, else 0."""
    return 0 if model_config.pad_token_id is None else int(model_config.pad_token_id)


def _is_left_padded(mask: np.ndarray) -> bool:
    """Every row is 0…0 1…1 with at least one 1 (checked only for host arrays: no sync)."""
    mask = mask.astype(bool)
    return bool(np.all(mask[:, -1]) and np.all(mask[:, 1:] >= mask[:, :-1]))


def repeat_prompts(
    prompt_ids: jax.Array, prompt_mask: jax.Array, group_size: int
) -> tuple[jax.Array, jax.Array]:
    """Repeats every prompt ``group_size`` times consecutively (for GRPO / RLOO groups).

    Args:
      prompt_ids, prompt_mask: ``[B, P]``.
      group_size: G ≥ 1.

    Returns:
      ``[B·G, P]`` ids and mask; row i of the input becomes rows ``i·G … i·G + G − 1``.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return (
        jnp.repeat(prompt_ids, group_size, axis=0),
        jnp.repeat(prompt_mask, group_size, axis=0),
    )


def filter_logits(
    scaled_logits: jax.Array, top_k: int, top_p: jax.Array | float, use_top_p: bool
) -> jax.Array:
    """Top-k then top-p (nucleus) filtering; removed entries become ``-inf``.

    Top-p keeps the smallest set of highest-probability tokens whose cumulative probability
    (under the top-k-renormalized distribution) reaches ``top_p``; the top token is always kept.

    Args:
      scaled_logits: ``[B, V]`` float32 logits already divided by the temperature.
      top_k: keep the k largest (0 = no top-k); static.
      top_p: nucleus mass in (0, 1]; may be traced.
      use_top_p: apply top-p at all (static; False skips the sort).

    Returns:
      ``[B, V]`` filtered logits.
    """
    if top_k == 0 and not use_top_p:
        return scaled_logits
    vocab = scaled_logits.shape[-1]
    # Descending values of the candidate set: only k of them with top-k, else all (a full sort).
    sorted_logits = jax.lax.top_k(scaled_logits, min(top_k, vocab) if top_k else vocab)[0]
    threshold = jnp.min(sorted_logits, axis=-1)  # = [:, -1]; a slice makes XLA CPU sort instead
    if use_top_p:
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_count = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
        threshold = jnp.take_along_axis(sorted_logits, keep_count[:, None] - 1, axis=-1)[:, 0]
    return jnp.where(scaled_logits >= threshold[:, None], scaled_logits, -jnp.inf)


def _last_positive(weights: jax.Array) -> jax.Array:
    """Index of the last entry > 0 along the last axis."""
    size = weights.shape[-1]
    return size - 1 - jnp.argmax(jnp.flip(weights > 0, axis=-1), axis=-1)


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits) ``[B, V]`` by two-level inverse-CDF sampling.

    Exact like ``jax.random.categorical`` but needs one uniform per row instead of V Gumbel
    variates, and replaces one length-V prefix sum by two of length ~√V (a block, then a token
    inside it) — on CPU both the Gumbel noise and the long scan cost more than a small model's
    decode step. Zero-probability (``-inf``) entries are never drawn: the CDF is flat there, and
    rounding at the top end is clamped to the last entry with positive mass.
    """
    batch, vocab = logits.shape
    block = math.ceil(math.sqrt(vocab))
    num_blocks = math.ceil(vocab / block)
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.pad(weights, ((0, 0), (0, num_blocks * block - vocab)))
    weights = weights.reshape(batch, num_blocks, block)
    block_mass = weights.sum(axis=-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.random.uniform(key, (batch,), jnp.float32) * block_cdf[:, -1]
    chosen = jnp.sum((block_cdf <= u[:, None]).astype(jnp.int32), axis=-1)
    chosen = jnp.minimum(chosen, _last_positive(block_mass))
    inner = jnp.take_along_axis(weights, chosen[:, None, None], axis=1)[:, 0]
    before = jnp.take_along_axis(block_cdf - block_mass, chosen[:, None], axis=-1)[:, 0]
    inner_cdf = jnp.cumsum(inner, axis=-1)
    offset = jnp.sum((inner_cdf <= (u - before)[:, None]).astype(jnp.int32), axis=-1)
    offset = jnp.minimum(offset, _last_positive(inner))
    return chosen * block + offset


def _select(logits, key, temperature, top_p, *, top_k, use_top_p, greedy):
    """Next token ``[B]`` and its (unfiltered, sampling) log-probs from logits ``[B, V]``."""
    response_logps = None
    if greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_logps = jnp.zeros(token.shape, jnp.float32)
    else:
        scaled = logits / temperature
        filtered = filter_logits(scaled, top_k, top_p, use_top_p)
        token = categorical(key, filtered)
        sampling_logps = token_logprobs(filtered, token)
        if top_k == 0 and not use_top_p:  # nothing filtered: the two log-probs coincide
            response_logps = sampling_logps
    if response_logps is None:
        response_logps = token_logprobs(logits, token, temperature)
    return token, response_logps, sampling_logps


def _write_column(buffer: jax.Array, column: jax.Array, step: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(buffer, column[:, None].astype(buffer.dtype), (0, step))


@functools.partial(
    jax.jit,
    static_argnames=("model_config", "max_new_tokens", "top_k", "use_top_p", "greedy", "eos_ids"),
)
def _sample_jit(
    model_config: ModelConfig,
    params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    max_new_tokens: int,
    top_k: int,
    use_top_p: bool,
    greedy: bool,
    eos_ids: tuple[int, ...],
) -> SampleOutput:
    batch, prompt_len = prompt_ids.shape
    num_slots = prompt_len + max_new_tokens - 1
    pad_id = pad_id_of(model_config)
    model = Transformer(model_config)
    prompt_ids = prompt_ids.astype(jnp.int32)
    prompt_mask = prompt_mask.astype(jnp.int32)
    # Hoisted out of the loop: the slot mask is the same for every step (causality is by slot).
    slot_mask = jnp.concatenate(
        [prompt_mask, jnp.ones((batch, max_new_tokens - 1), jnp.int32)], axis=1
    )
    slot_mask = constrain(slot_mask, _BATCH_AXES)
    last_position = jnp.maximum(jnp.sum(prompt_mask, axis=-1) - 1, 0)  # [B]

    cache = init_cache(model_config, batch, num_slots)
    cache = KVCache(*(constrain(x, _CACHE_AXES) for x in cache))
    if prompt_len > 1:
        # Prefill every prompt token but the last (no LM head); the last one is the first decode
        # step, whose logits give the first new token.
        cache = model.apply(
            {"params": params},
            prompt_ids[:, :-1],
            slot_mask,
            positions_from_mask(prompt_mask)[:, :-1],
            cache=cache,
            cache_index=jnp.int32(0),
            compute_logits=False,
        ).cache

    select = functools.partial(
        _select,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        use_top_p=use_top_p,
        greedy=greedy,
    )

    def cond(state: _LoopState) -> jax.Array:
        return (state.step < max_new_tokens) & ~jnp.all(state.finished)

    def body(state: _LoopState) -> _LoopState:
        out = model.apply(
            {"params": params},
            state.token[:, None],
            slot_mask,
            (last_position + state.step)[:, None],
            cache=state.cache,
            cache_index=prompt_len - 1 + state.step,
        )
        token, response_logps, sampling_logps = select(
            out.logits[:, 0], jax.random.fold_in(rng, state.step)
        )
        active = ~state.finished
        token = jnp.where(active, token, pad_id)
        step_output = SampleOutput(
            token,
            active.astype(jnp.int32),
            jnp.where(active, response_logps, 0.0),
            jnp.where(active, sampling_logps, 0.0),
        )
        output = SampleOutput(
            *(
                constrain(_write_column(buf, col, state.step), _BATCH_AXES)
                for buf, col in zip(state.output, step_output)
            )
        )
        stopped = functools.reduce(jnp.logical_or, (token == e for e in eos_ids), state.finished)
        new_cache = KVCache(*(constrain(x, _CACHE_AXES) for x in out.cache))
        return _LoopState(state.step + 1, token, new_cache, stopped, output)

    shape = (batch, max_new_tokens)
    init = _LoopState(
        step=jnp.int32(0),
        token=prompt_ids[:, -1],
        cache=cache,
        finished=jnp.zeros((batch,), bool),
        output=SampleOutput(
            jnp.full(shape, pad_id, jnp.int32),
            jnp.zeros(shape, jnp.int32),
            jnp.zeros(shape, jnp.float32),
            jnp.zeros(shape, jnp.float32),
        ),
    )
    return jax.lax.while_loop(cond, body, init).output


def sample(
    model_config: ModelConfig,
    params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    *,
    rng: jax.Array | None = None,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    eos_ids: tuple[int, ...] | None = None,
) -> SampleOutput:
    """Samples ``max_new_tokens`` continuations of left-padded prompts with a KV cache.

    Compiled once per (shapes, ``model_config``, ``max_new_tokens``, ``top_k``, ``greedy``,
    ``eos_ids``, whether ``top_p < 1``); ``temperature``, ``top_p`` and ``rng`` are traced, so
    changing them does not recompile. Works on sharded params and batch-sharded prompts when
    called under ``jax.set_mesh(mesh)`` (the cache is sharded like the activations: batch over
    ``('data', 'fsdp')``, KV heads over ``tensor``). Decoding stops early once every row has
    stopped; shapes stay fixed.

    Args:
      model_config: the decoder's config (static).
      params: its params.
      prompt_ids: ``[B, P]`` int token ids, **left**-padded; every row needs ≥ 1 real token
        (checked when ``prompt_mask`` is a numpy array).
      prompt_mask: ``[B, P]`` 1 for real prompt tokens.
      rng: PRNG key (unused, and optional, when ``greedy``).
      max_new_tokens: N ≥ 1.
      temperature: T > 0; logits are divided by T before filtering and sampling (with
        ``greedy`` it only scales ``response_logprobs``).
      top_k: keep only the k most likely tokens (0 = off).
      top_p: nucleus mass in (0, 1] (1 = off), applied after temperature and top-k.
      greedy: take the argmax (temperature and filters then only affect ``response_logprobs``).
      eos_ids: ids that stop a row (the stop token itself is kept, masked 1); default
        ``model_config.eos_token_ids``; ``()`` never stops early.

    Returns:
      ``SampleOutput`` of ``[B, N]`` arrays (see its docstring).

    Raises:
      ValueError: bad settings, or a GPT-2 prompt + response longer than its position table.
    """
    batch, prompt_len = prompt_ids.shape
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask {prompt_mask.shape} != prompt_ids {prompt_ids.shape}")
    if max_new_tokens < 1 or prompt_len < 1:
        raise ValueError(f"need max_new_tokens >= 1 and P >= 1, got {max_new_tokens}, {prompt_len}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {top_k}, {top_p}")
    if not temperature > 0.0:
        raise ValueError(
            f"temperature must be > 0 (for greedy decoding pass greedy=True), got {temperature}"
        )
    if not greedy and rng is None:
        raise ValueError("sampling (greedy=False) needs an rng key")
    if isinstance(prompt_mask, np.ndarray) and not _is_left_padded(prompt_mask):
        raise ValueError("prompts must be left-padded with >= 1 real token per row")
    if model_config.is_gpt2 and prompt_len + max_new_tokens - 1 > (
        model_config.max_position_embeddings
    ):
        raise ValueError(
            f"P + N - 1 = {prompt_len + max_new_tokens - 1} exceeds GPT-2's "
            f"max_position_embeddings={model_config.max_position_embeddings}"
        )
    eos_ids = tuple(model_config.eos_token_ids if eos_ids is None else eos_ids)
    return _sample_jit(
        model_config,
        params,
        prompt_ids,
        prompt_mask,
        jax.random.key(0) if rng is None else rng,
        jnp.float32(temperature),
        jnp.float32(top_p),
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        use_top_p=top_p < 1.0,
        greedy=greedy,
        eos_ids=tuple(int(e) for e in eos_ids),
    )


@functools.partial(jax.jit, static_argnames=("model_config",))
def _teacher_forced_jit(model_config, params, prompt_ids, prompt_mask, response_ids, mask, temp):
    input_ids = jnp.concatenate([prompt_ids, response_ids], axis=1).astype(jnp.int32)
    attention_mask = jnp.concatenate([prompt_mask, mask], axis=1).astype(jnp.int32)
    logits = Transformer(model_config).apply({"params": params}, input_ids, attention_mask).logits
    logps = next_token_logprobs(logits, input_ids, temp)[:, prompt_ids.shape[1] :]
    return jnp.where(mask.astype(bool), logps, 0.0)


def teacher_forced_logprobs(
    model_config: ModelConfig,
    params,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    response_ids: jax.Array,
    response_mask: jax.Array,
    *,
    temperature: float = 1.0,
) -> jax.Array:
    """log softmax(logits / T) of each response token from one forward over prompt + response.

    Args:
      model_config, params: the scoring model.
      prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
      response_ids, response_mask: ``[B, N]`` responses (as ``SampleOutput``).
      temperature: T > 0 (traced).

    Returns:
      ``[B, N]`` float32 log-probs, 0 where ``response_mask`` is 0; equals
      ``SampleOutput.response_logprobs`` for the model that sampled at temperature T.
    """
    return _teacher_forced_jit(
        model_config,
        params,
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        jnp.float32(temperature),
    )
