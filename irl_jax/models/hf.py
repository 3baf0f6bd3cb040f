"""Hugging Face checkpoints (config.json + safetensors) ↔ ``(ModelConfig, params)``.

Supported: ``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``MistralForCausalLM`` and the ``*ForSequenceClassification`` reward models of the same
families. Loading goes one tensor at a time (bf16 included) and, when a mesh is given, places
each tensor straight into its target sharding, reading from the file only the blocks that this
process's devices hold (safetensors slices): on a multi-host run each host reads its share of
an FSDP/tensor-sharded model, and the whole model is never gathered on one device. Export writes
files that ``transformers`` loads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors import SafetensorError, safe_open

from irl_jax import sharding as sharding_lib
from irl_jax.models import lora
from irl_jax.models.config import ModelConfig
from irl_jax.models.heads import RewardModel
from irl_jax.models.hf_config import (
    ARCHITECTURES,
    config_from_hf,
    config_to_hf,
    read_config,
    read_json,
)
from irl_jax.models.transformer import Transformer, unstack_layers

# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


# ----------------------------------------------------------------------------- tensor maps


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One tensor: our path, the HF name, and the layout between them.

    Our tensor is the HF tensor reshaped to ``split`` (each HF dimension split into consecutive
    dimensions, never merged; ``None``: unchanged), then transposed by ``perm`` (``None``:
    unchanged). Export reverses this, reshaping to ``hf_shape`` (``None``: no reshape). Because
    dimensions are only split and permuted, any block of our tensor comes from one block of the
    file (``_read_block``).
    """

    ours: str
    hf: str
    split: tuple[int, ...] | None = None
    perm: tuple[int, ...] | None = None
    hf_shape: tuple[int, ...] | None = None

    def to_ours(self, w: np.ndarray) -> np.ndarray:
        w = w if self.split is None else w.reshape(self.split)
        return w if self.perm is None else w.transpose(self.perm)

    def to_hf(self, k: np.ndarray) -> np.ndarray:
        k = k if self.perm is None else k.transpose(np.argsort(self.perm))
        return k if self.hf_shape is None else k.reshape(self.hf_shape)


def _linear(ours: str, hf: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> _Rule:
    """A torch ``nn.Linear`` weight ``[out, in]`` ↔ our kernel ``[*in_shape, *out_shape]``."""
    n_out, n_in = len(out_shape), len(in_shape)
    perm = tuple(range(n_out, n_out + n_in)) + tuple(range(n_out))
    hf_shape = (math.prod(out_shape), math.prod(in_shape))
    return _Rule(ours, hf, (*out_shape, *in_shape), perm, hf_shape)


def _reshaped(
    ours: str, hf: str, shape: tuple[int, ...], hf_shape: tuple[int, ...] = (-1,)
) -> _Rule:
    """Same memory order, different shape (GPT-2's Conv1D ``[in, out]`` weights, biases)."""
    return _Rule(ours, hf, split=shape, hf_shape=hf_shape)


def _transposed(ours: str, hf: str) -> _Rule:
    return _Rule(ours, hf, perm=(1, 0))


def _layer_rules(cfg: ModelConfig) -> list[_Rule]:
    d, h, kv, hd, f = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    if cfg.is_gpt2:
        return [
            _Rule("attn_norm/scale", "ln_1.weight"),
            _Rule("attn_norm/bias", "ln_1.bias"),
            _reshaped("attn/qkv/kernel", "attn.c_attn.weight", (d, 3, h, hd), (d, 3 * h * hd)),
            _reshaped("attn/qkv/bias", "attn.c_attn.bias", (3, h, hd)),
            _reshaped("attn/o/kernel", "attn.c_proj.weight", (h, hd, d), (h * hd, d)),
            _Rule("attn/o/bias", "attn.c_proj.bias"),
            _Rule("mlp_norm/scale", "ln_2.weight"),
            _Rule("mlp_norm/bias", "ln_2.bias"),
            _Rule("mlp/fc/kernel", "mlp.c_fc.weight"),
            _Rule("mlp/fc/bias", "mlp.c_fc.bias"),
            _Rule("mlp/proj/kernel", "mlp.c_proj.weight"),
            _Rule("mlp/proj/bias", "mlp.c_proj.bias"),
        ]
    rules = [
        _Rule("attn_norm/scale", "input_layernorm.weight"),
        _Rule("mlp_norm/scale", "post_attention_layernorm.weight"),
        _linear("attn/q/kernel", "self_attn.q_proj.weight", (d,), (h, hd)),
        _linear("attn/k/kernel", "self_attn.k_proj.weight", (d,), (kv, hd)),
        _linear("attn/v/kernel", "self_attn.v_proj.weight", (d,), (kv, hd)),
        _linear("attn/o/kernel", "self_attn.o_proj.weight", (h, hd), (d,)),
        _linear("mlp/gate/kernel", "mlp.gate_proj.weight", (d,), (f,)),
        _linear("mlp/up/kernel", "mlp.up_proj.weight", (d,), (f,)),
        _linear("mlp/down/kernel", "mlp.down_proj.weight", (f,), (d,)),
    ]
    if cfg.qkv_bias:
        rules += [
            _reshaped(f"attn/{n}/bias", f"self_attn.{n}_proj.bias", (heads, hd))
            for n, heads in (("q", h), ("k", kv), ("v", kv))
        ]
    if cfg.o_bias:
        rules.append(_Rule("attn/o/bias", "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        rules += [_Rule(f"mlp/{n}/bias", f"mlp.{n}_proj.bias") for n in ("gate", "up", "down")]
    return rules


def _rules(cfg: ModelConfig, kind: str) -> list[_Rule]:
    """Every tensor of a checkpoint, as (our unrolled path, HF name) rules."""
    base = "transformer." if cfg.is_gpt2 else "model."
    layer_prefix = f"{base}h." if cfg.is_gpt2 else f"{base}layers."
    ours = "" if kind == "causal_lm" else "transformer/"
    if cfg.is_gpt2:
        rules = [
            _Rule("embed/embedding", "wte.weight"),
            _Rule("pos_embed/embedding", "wpe.weight"),
            _Rule("final_norm/scale", "ln_f.weight"),
            _Rule("final_norm/bias", "ln_f.bias"),
        ]
    else:
        rules = [
            _Rule("embed/embedding", "embed_tokens.weight"),
            _Rule("final_norm/scale", "norm.weight"),
        ]
    rules = [dataclasses.replace(r, ours=ours + r.ours, hf=base + r.hf) for r in rules]
    for i in range(cfg.num_layers):
        rules += [
            dataclasses.replace(r, ours=f"{ours}layer_{i}/{r.ours}", hf=f"{layer_prefix}{i}.{r.hf}")
            for r in _layer_rules(cfg)
        ]
    if kind == "reward_model":
        rules.append(_transposed("score/kernel", "score.weight"))
    elif not cfg.tie_word_embeddings:
        rules.append(_transposed("lm_head/kernel", "lm_head.weight"))
    return rules


# ----------------------------------------------------------------------------- loading


def _safe_open(file: str):
    """``safe_open`` (numpy backend: host arrays, bf16 through ml_dtypes) with errors naming the
    file."""
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such safetensors file")
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as e:
        size = os.path.getsize(file)
        raise ValueError(
            f"{file}: not a readable safetensors file (truncated or corrupt? {size} bytes; {e})"
        ) from None


class _TensorReader:
    """Reads blocks of tensors from ``model.safetensors`` or a sharded index; every file's header
    is read (and so checked) when the reader is made. ``values_read`` counts what was read."""

    def __init__(self, path: str):
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(single):
            with _safe_open(single) as f:
                self._files = dict.fromkeys(f.keys(), single)
        elif os.path.isfile(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: expected a 'weight_map' object (tensor -> file)")
            self._files = {name: os.path.join(path, file) for name, file in weight_map.items()}
            for file in sorted(set(self._files.values())):
                with _safe_open(file) as f:
                    absent = {n for n, in_file in self._files.items() if in_file == file}
                    absent -= set(f.keys())
                if absent:
                    listed = sorted(absent)[:5]
                    raise ValueError(f"{file}: lacks tensors {listed} that {index} lists")
        else:
            raise FileNotFoundError(
                f"{path!r} has neither model.safetensors nor model.safetensors.index.json"
            )
        self.values_read = 0

    def names(self) -> set[str]:
        return set(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        with _safe_open(self._files[name]) as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str, block: tuple[slice, ...]) -> np.ndarray:
        """The block ``block`` (one slice per dimension) of tensor ``name``, and only that."""
        with _safe_open(self._files[name]) as f:
            values = np.asarray(f.get_slice(name)[block])
        self.values_read += values.size
        return values


def _split_groups(file_shape: tuple[int, ...], split: tuple[int, ...]) -> list[range]:
    """For each dimension of the file, the consecutive dimensions of ``split`` it splits into."""
    groups, dim = [], 0
    for size in file_shape:
        start, product = dim, 1
        while dim < len(split) and (dim == start or product < size):
            product *= split[dim]
            dim += 1
        if product != size:
            raise ValueError(f"{split} is not a split of the file's shape {file_shape}")
        groups.append(range(start, dim))
    if dim < len(split):  # trailing dimensions of size 1
        groups[-1] = range(groups[-1].start, len(split))
    return groups


def _read_block(
    read: Callable[[str, tuple[slice, ...]], np.ndarray],
    rule: _Rule,
    file_shape: tuple[int, ...],
    index: tuple[slice, ...],
) -> np.ndarray:
    """The block ``index`` (a slice per dimension, as ``jax.make_array_from_callback`` passes)
    of our tensor of ``rule``, read from the file block that holds it.

    Each file dimension splits into dimensions (d₁, …, d_k) of ours (e.g. heads × head_dim); the
    file block takes the rows of d₁ that ``index`` touches, whole in d₂ … d_k, so it is exactly
    the requested block when d₂ … d_k are not sliced (the common case: a kernel sharded over
    heads, FSDP over the embedding). Otherwise (GPT-2's fused QKV sharded over heads: 3 × heads ×
    head_dim) the extra values are read and dropped.
    """
    split = rule.split or tuple(file_shape)
    perm = rule.perm or tuple(range(len(split)))
    ranges: list[tuple[int, int]] = [(0, 0)] * len(split)
    for our_dim, split_dim in enumerate(perm):
        start, stop, step = index[our_dim].indices(split[split_dim])
        if step != 1:
            raise ValueError(f"strided block {index} of {rule.hf}")
        ranges[split_dim] = (start, stop)
    file_block, block_shape, local = [], [], []
    for group in _split_groups(file_shape, split):
        (start, stop), inner = ranges[group[0]], math.prod(split[d] for d in group[1:])
        file_block.append(slice(start * inner, stop * inner))
        block_shape += [stop - start, *(split[d] for d in group[1:])]
        local += [slice(None), *(slice(*ranges[d]) for d in group[1:])]
    block = read(rule.hf, tuple(file_block)).reshape(block_shape)[tuple(local)]
    return block if rule.perm is None else block.transpose(perm)


def _memoized(fn: Callable[[tuple[slice, ...]], np.ndarray]):
    """``fn`` computed once per distinct index (devices holding the same block share it)."""
    cache: dict[tuple, np.ndarray] = {}

    def call(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in cache:
            cache[key] = fn(index)
        return cache[key]

    return call


def _strip_gpt2_prefix(names: set[str], rules: list[_Rule]) -> list[_Rule]:
    """Old GPT-2 files name tensors ``h.0...`` / ``wte.weight`` without ``transformer.``."""
    if "transformer.wte.weight" in names or "wte.weight" not in names:
        return rules
    return [dataclasses.replace(r, hf=r.hf.removeprefix("transformer.")) for r in rules]


def _abstract_params(config: ModelConfig, kind: str, num_labels: int = 1):
    model = Transformer(config) if kind == "causal_lm" else RewardModel(config, num_labels)
    ids = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, jnp.ones_like(ids)))["params"]


def load_pretrained(
    path: str,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    scan_layers: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    **config_overrides: Any,
) -> tuple[ModelConfig, dict]:
    """Loads a local Hugging Face checkpoint directory.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or a sharded index).
      dtype, param_dtype: compute and storage dtypes (bf16 files are converted).
      scan_layers: return params stacked for ``nn.scan`` (``layers``) instead of ``layer_i``.
      mesh: if given, each tensor is placed directly into its logical sharding on ``mesh``.
      **config_overrides: further ``ModelConfig`` fields (e.g. ``remat=True``).

    Returns:
      ``(config, params)``; for a causal LM ``params`` fits ``Transformer(config)``, for a
      sequence-classification checkpoint it fits ``RewardModel(config, num_labels)``
      (``{"transformer": ..., "score": ...}``).

    Raises:
      FileNotFoundError, ValueError: missing files, a corrupt or truncated ``config.json`` /
        safetensors file, an unsupported architecture, or a missing or wrongly shaped tensor
        (named in the message).
    """
    hf = read_config(path)
    try:
        config, kind = config_from_hf(
            hf, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, **config_overrides
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    reader = _TensorReader(path)
    names = reader.names()
    # The score head's rows are the labels (config.json omits id2label for some counts).
    num_labels = reader.shape("score.weight")[0] if "score.weight" in names else 1
    rules = _strip_gpt2_prefix(names, _rules(config, kind))
    missing = [r.hf for r in rules if r.hf not in names]
    if missing:
        raise ValueError(
            f"checkpoint {path!r} lacks tensors {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} needed by {config.architecture}"
        )
    unused = sorted(n for n in names - {r.hf for r in rules} if not n.endswith(_IGNORED_SUFFIXES))
    if unused:
        logging.warning("load_pretrained(%s): ignoring unexpected tensors %s", path, unused[:10])

    abstract = _abstract_params(config, kind, num_labels)
    shardings = (
        None
        if mesh is None
        else traverse_util.flatten_dict(sharding_lib.tree_shardings(abstract, mesh), sep="/")
    )
    # Per-tensor shapes of the unrolled layout, checked before any reshape.
    unrolled = _abstract_params(config.replace(scan_layers=False), kind, num_labels)
    flat_unrolled = traverse_util.flatten_dict(sharding_lib.unbox(unrolled), sep="/")
    shapes = {p: x.shape for p, x in flat_unrolled.items()}
    weight_dtype = config.weight_dtype
    by_path = {r.ours: r for r in rules}

    def file_shape(rule: _Rule) -> tuple[int, ...]:
        shape = reader.shape(rule.hf)
        expected = rule.to_hf(np.empty(shapes[rule.ours], np.uint8)).shape
        if shape != expected:
            raise ValueError(
                f"checkpoint tensor {rule.hf!r} (our {rule.ours!r}) has shape {shape}, "
                f"expected {expected} from config.json"
            )
        return shape

    file_shapes = {r.hf: file_shape(r) for r in rules}

    def block(rule: _Rule, index: tuple[slice, ...]) -> np.ndarray:
        return _read_block(reader.read, rule, file_shapes[rule.hf], index).astype(weight_dtype)

    def place(path_: str, shape: tuple[int, ...], values) -> jax.Array:
        """Our tensor ``path_`` from ``values(index) -> block``: this process's blocks only."""
        if shardings is None:
            return jnp.asarray(values(tuple(slice(None) for _ in shape)))
        return jax.make_array_from_callback(shape, shardings[path_], _memoized(values))

    flat: dict[str, jax.Array] = {}
    if scan_layers:
        # One parameter kind stacked across layers: each block is stacked from the layers' blocks.
        prefix = "" if kind == "causal_lm" else "transformer/"
        for rule in _layer_rules(config):
            layers = [by_path[f"{prefix}layer_{i}/{rule.ours}"] for i in range(config.num_layers)]

            def stacked(index, layers=layers):
                picked = range(config.num_layers)[index[0]]
                return np.stack([block(layers[i], index[1:]) for i in picked])

            shape = (config.num_layers, *shapes[layers[0].ours])
            flat[f"{prefix}layers/{rule.ours}"] = place(
                f"{prefix}layers/{rule.ours}", shape, stacked
            )
        by_path = {p: r for p, r in by_path.items() if "/layer_" not in "/" + p}
    for path_, rule in by_path.items():
        flat[path_] = place(path_, shapes[path_], lambda index, rule=rule: block(rule, index))
    total = sum(math.prod(shape) for shape in file_shapes.values())
    logging.info(
        "load_pretrained(%s): process %d read %d of the checkpoint's %d values (%.0f%%)",
        path,
        jax.process_index(),
        reader.values_read,
        total,
        100.0 * reader.values_read / max(total, 1),
    )
    return config, traverse_util.unflatten_dict(flat, sep="/")


def load_tokenizer(path: str, **kwargs: Any):
    """``AutoTokenizer`` from a local directory (never the hub)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)


# ----------------------------------------------------------------------------- export


def _flat_unrolled(config: ModelConfig, params: dict, kind: str) -> dict[str, Any]:
    """``params`` flattened to ``"a/b/c"`` paths, scanned layers unrolled (``layer_i``)."""
    if config.scan_layers:
        params = dict(params)
        if kind != "causal_lm":
            params["transformer"] = unstack_layers(params["transformer"], config.num_layers)
        else:
            params = unstack_layers(params, config.num_layers)
    return traverse_util.flatten_dict(params, sep="/")


def _iter_hf_tensors(config: ModelConfig, params: dict, kind: str) -> Iterator[tuple[str, Any]]:
    flat = _flat_unrolled(config, params, kind)
    for rule in _rules(config, kind):
        yield rule.hf, rule.to_hf(np.asarray(jax.device_get(flat[rule.ours])))


PEFT_ADAPTER_DIR = "peft_adapter"


def save_peft_adapter(path: str, config: ModelConfig, params: dict, base_model: str = "") -> str:
    """Writes the LoRA adapters of a causal LM's ``params`` as a PEFT adapter directory
    (``adapter_config.json`` + ``adapter_model.safetensors``) that
    ``peft.PeftModel.from_pretrained(base, path)`` loads onto the base checkpoint.

    PEFT's layout per adapted torch module ``m`` (``nn.Linear``, or GPT-2's ``Conv1D`` with
    ``fan_in_fan_out``): ``base_model.model.<m>.lora_A.weight`` ``[r, in]`` and ``lora_B.weight``
    ``[out, r]``, scaled by ``lora_alpha / r``: ours ``lora_a [*in, r]`` / ``lora_b [r, *out]``
    flattened in the same order as the kernel's HF layout, and transposed. The base is the
    checkpoint the adapters were trained on (for QLoRA: its weights before quantization, which
    the adapters approximate as the quantized ones they saw). A trained embedding table
    (``lora.embeddings``) is PEFT's ``modules_to_save``: the whole table (base + delta) as
    ``base_model.model.<embedding module>.weight``, and for a model that ties its head to the
    table the same table again as ``lm_head`` (PEFT 0.21's ``ensure_weight_tying`` does not
    find GPT-2's tie; two saved copies keep the base's own table untouched, so disabling the
    adapters gives the base). ``base_model`` goes into ``base_model_name_or_path``.
    """
    from safetensors.flax import save_file

    settings = config.lora
    if settings is None:
        raise ValueError("save_peft_adapter: the model config has no LoRA settings (config.lora)")
    flat = _flat_unrolled(config, params, "causal_lm")
    tensors, modules, saved = {}, set(), []
    for rule in _rules(config, "causal_lm"):
        stem = rule.ours.removesuffix("embedding")
        if rule.ours == "embed/embedding" and stem + lora.EMBEDDING_DELTA in flat:
            base, delta = (
                np.asarray(jax.device_get(flat[n]), np.float32)
                for n in (rule.ours, stem + lora.EMBEDDING_DELTA)
            )
            tensors["base_model.model." + rule.hf] = rule.to_hf(base + delta)
            saved.append(rule.hf.removesuffix(".weight").rsplit(".", 1)[-1])
            if config.tie_word_embeddings:  # the tied head: a second saved module, same table
                tensors["base_model.model.lm_head.weight"] = tensors["base_model.model." + rule.hf]
                saved.append("lm_head")
        stem = rule.ours.removesuffix("kernel")
        if not rule.ours.endswith("/kernel") or stem + "lora_a" not in flat:
            continue
        a, b = (np.asarray(jax.device_get(flat[stem + n]), np.float32) for n in lora.LOW_RANK)
        module = "base_model.model." + rule.hf.removesuffix(".weight")
        tensors[module + ".lora_A.weight"] = a.reshape(-1, settings.rank).T
        tensors[module + ".lora_B.weight"] = b.reshape(settings.rank, -1).T
        modules.add(rule.hf.removesuffix(".weight").rsplit(".", 1)[-1])
    if not tensors:
        raise ValueError("save_peft_adapter: params hold no LoRA adapters")
    os.makedirs(path, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": sorted(modules),
        "fan_in_fan_out": config.is_gpt2,
        "bias": "none",
        "use_rslora": False,
        "inference_mode": True,
        "modules_to_save": saved or None,
    }
    with open(os.path.join(path, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2)
    arrays = {k: jnp.asarray(np.ascontiguousarray(v)) for k, v in tensors.items()}
    save_file(arrays, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    return path


def save_pretrained(path: str, config: ModelConfig, params: dict, tokenizer: Any = None) -> str:
    """Writes a Hugging Face checkpoint directory that ``transformers`` loads back.

    ``params`` of a ``Transformer`` export as ``*ForCausalLM`` (GPT-2: ``GPT2LMHeadModel``);
    ``params`` of a ``RewardModel`` (``{"transformer", "score"}``) as
    ``*ForSequenceClassification``. The tokenizer, if given, is saved beside it. A LoRA /
    QLoRA model (``config.lora``) is written as a plain checkpoint: kernels dequantized and the
    adapters merged, ``W' = W + (alpha / r) · A B`` (``lora.merge``); a causal LM's adapters
    also go, unmerged, into ``PEFT_ADAPTER_DIR`` inside it (``save_peft_adapter``).
    """
    from safetensors.flax import save_file

    kind = "reward_model" if "score" in params else "causal_lm"
    if config.lora is not None:
        if kind == "causal_lm" and lora.has_adapters(params):
            save_peft_adapter(os.path.join(path, PEFT_ADAPTER_DIR), config, params)
        params = lora.merge(params, config.lora.scale)
        config = config.replace(lora=None)

    num_labels = int(np.shape(params["score"]["kernel"])[-1]) if kind == "reward_model" else 1
    os.makedirs(path, exist_ok=True)
    hf = config_to_hf(config, kind, num_labels)
    hf.dtype = config.param_dtype
    hf.save_pretrained(path)
    tensors = {
        name: jnp.asarray(np.ascontiguousarray(value))
        for name, value in _iter_hf_tensors(config, params, kind)
    }
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


__all__ = [
    "ARCHITECTURES",
    "config_from_hf",
    "config_to_hf",
    "load_pretrained",
    "load_tokenizer",
    "read_config",
    "save_peft_adapter",
    "save_pretrained",
]
