"""LoRA and QLoRA on the decoder's Dense layers, and the param-tree operations they need.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds to a frozen
Dense layer ``y = x W + b`` a trained low-rank update::

    y = x W + b + (alpha / r) · (x A) B,     A: [in, r] random,  B: [r, out] zeros,

so at initialization the adapted model computes exactly the base model. QLoRA (Dettmers et al.,
2023) stores the frozen ``W`` quantized (here int8 or int4, symmetric absmax per block) and
dequantizes it in the forward pass: ``W ≈ q · s`` with ``s = absmax(block) / q_max``.

Every Dense layer of ``Transformer`` is built by ``transformer._dense``; with a ``LoraConfig``
in the ``ModelConfig`` it is a ``LoraDense``, which at init creates adapters (and quantizes its
kernel) when its module path matches ``LoraConfig.targets``, and at apply time uses whatever its
params hold: adapters when ``lora_a``/``lora_b`` are there, a dequantized kernel when
``kernel_scale`` is there. A params tree without adapters therefore runs the base model — that
is how a reference policy is "the same weights with the adapters off".

Param trees: an adapted layer holds ``kernel`` (float, or int8/int4 with ``kernel_scale``),
``bias`` if any, ``lora_a`` ``[*in, r]`` and ``lora_b`` ``[r, *out]`` (a leading ``layers``
axis under ``nn.scan``). Kernel names and shapes are those of ``nn.DenseGeneral``, so Hugging
Face loading is unchanged; ``merge`` folds adapters (and dequantizes) for export. With
``LoraConfig.embeddings`` the token table (``LoraEmbed``) is trained too, as a full-size
``embedding_delta`` beside the frozen ``embedding`` (PEFT's ``modules_to_save``); it counts as
an adapter everywhere (trained, kept by a ``SharedBase`` reference, removed with the adapters).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

QUANTIZATIONS = ("none", "int8", "int4")
# Attention q/k/v/o (GPT-2's fused qkv) and the MLP projections of every block.
DEFAULT_TARGETS = r"attn/(q|k|v|o|qkv)$|mlp/(gate|up|down|fc|proj)$"
LOW_RANK = ("lora_a", "lora_b")
EMBEDDING_DELTA = "embedding_delta"
# Every trained leaf of a LoRA decoder: the low-rank factors and the embedding table's delta.
ADAPTERS = (*LOW_RANK, EMBEDDING_DELTA)
# Params of the decoder itself (a causal LM at the root, or a head model's ``transformer``):
# with adapters present these are frozen; anything else (a reward or value head) is trained.
_DECODER = re.compile(r"^(transformer/)?(embed|pos_embed|layers|layer_\d+|final_norm|lm_head)(/|$)")
_Q_MAX = {"int8": 127, "int4": 7}
_Q_DTYPE = {"int8": jnp.int8, "int4": jnp.int4}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA / QLoRA settings (hashable: part of ``ModelConfig``).

    Attributes:
      rank: adapter rank r (> 0).
      alpha: the update is scaled by ``alpha / rank``.
      dropout: dropout on the adapter's input, active only when the caller passes a
        ``"dropout"`` rng to ``apply``.
      targets: regex searched in each Dense layer's module path (``layer_0/attn/q``,
        ``layers/mlp/down``, ``transformer/layer_1/attn/o``); matching layers are adapted.
      quantize: ``none``, ``int8`` (per output channel) or ``int4`` (groups of ``group_size``
        along the last contracted axis) for the targeted layers' frozen kernels.
      group_size: int4 group size (a whole axis when it does not divide the axis).
      embeddings: also train the token embedding table (PEFT's ``modules_to_save`` of the
        embedding): ``LoraEmbed`` adds a full-size ``embedding_delta`` (zeros at init) to the
        frozen table, so the adapters-off model is still the base; with tied embeddings the
        output projection moves with it.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS
    quantize: str = "none"
    group_size: int = 64
    embeddings: bool = False

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"lora rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"lora quantize={self.quantize!r}; expected one of {QUANTIZATIONS}")
        if self.group_size <= 0:
            raise ValueError(f"lora group_size must be positive, got {self.group_size}")
        re.compile(self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, module_path: str) -> bool:
        return re.search(self.targets, module_path) is not None


# ----------------------------------------------------------------------------- quantization


def block_scale_shape(
    shape: tuple[int, ...], contracted: int, quantize: str, group_size: int
) -> tuple[int, ...]:
    """Shape of the absmax scales of a kernel ``[*in, *out]`` with ``contracted`` input axes:
    1 on the input axes (int8: one scale per output channel), except ``in[-1] / group_size``
    groups on the last input axis for int4."""
    scale = [1] * contracted + list(shape[contracted:])
    if quantize == "int4" and shape[contracted - 1] % group_size == 0:
        scale[contracted - 1] = shape[contracted - 1] // group_size
    return tuple(scale)


def _blocked(x: jax.Array, scale_shape: tuple[int, ...]) -> jax.Array:
    """``x`` reshaped to ``[s0, d0/s0, s1, d1/s1, …]``: one block per scale entry."""
    return x.reshape([n for s, d in zip(scale_shape, x.shape, strict=True) for n in (s, d // s)])


def quantize(
    w: jax.Array, scale_shape: tuple[int, ...], quantize: str
) -> tuple[jax.Array, jax.Array]:
    """Symmetric absmax quantization per block: ``s = max|w_block| / q_max``,
    ``q = round(w / s)`` in int8 (q_max 127) or int4 (q_max 7).

    Every dimension of ``scale_shape`` must divide ``w``'s; block sizes are their ratios.

    Returns:
      ``(q, s)``: ``q`` like ``w`` in int8/int4, ``s`` of ``scale_shape`` in float32.
    """
    q_max = _Q_MAX[quantize]
    blocks = _blocked(w.astype(jnp.float32), scale_shape)
    absmax = jnp.max(jnp.abs(blocks), axis=tuple(range(1, blocks.ndim, 2)), keepdims=True)
    scale = jnp.where(absmax > 0, absmax / q_max, 1.0)
    q = jnp.clip(jnp.round(blocks / scale), -q_max, q_max).astype(_Q_DTYPE[quantize])
    return q.reshape(w.shape), scale.reshape(scale_shape)


def dequantize(q: jax.Array, scale: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``q · s`` broadcast per block, in ``dtype``."""
    blocks = _blocked(q.astype(jnp.float32), scale.shape)
    expanded = scale.reshape([n for s in scale.shape for n in (s, 1)])
    return (blocks * expanded).reshape(q.shape).astype(dtype)


# ----------------------------------------------------------------------------- the layer


class LoraDense(nn.Module):
    """``nn.DenseGeneral`` (same param names, shapes, init and arithmetic) with an optional
    low-rank adapter and an optionally quantized kernel.

    ``y = x W + b + (alpha / r) · dropout(x) A B`` with the contraction over ``axis``;
    ``W = dequantize(kernel, kernel_scale)`` when the kernel is quantized. Adapters and
    quantization are created at init when this module's path matches ``lora.targets``; at apply
    time they are used when present in the params (see the module docstring).

    Attributes:
      features: output shape (tuple).
      axis: input axes contracted (tuple of negative indices).
      use_bias: add a bias.
      kernel_axes: logical axis names of the kernel ``[*in, *out]``; ``lora_a`` gets the input
        names and ``lora_rank``, ``lora_b`` ``lora_rank`` and the output names, so adapters are
        sharded by the same rules as the kernel.
      dtype, param_dtype: compute and storage dtypes.
      lora: the settings.
    """

    features: tuple[int, ...]
    axis: tuple[int, ...]
    use_bias: bool
    kernel_axes: tuple[str | None, ...]
    dtype: Any
    param_dtype: Any
    lora: LoraConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        axis = tuple(sorted(a % x.ndim for a in self.axis))
        n_in = len(axis)
        in_shape = tuple(x.shape[a] for a in axis)
        shape = in_shape + self.features
        in_axes, out_axes = self.kernel_axes[:n_in], self.kernel_axes[n_in:]
        targeted = self.lora.matches("/".join(self.scope.path))
        quantized = self.has_variable("params", "kernel_scale") or (
            self.is_initializing() and targeted and self.lora.quantize != "none"
        )

        def normal_kernel(rng):  # nn.DenseGeneral's init: a [prod(in), prod(out)] draw, reshaped
            flat = (int(np.prod(in_shape)), int(np.prod(self.features)))
            return nn.initializers.normal(0.02)(rng, flat, self.param_dtype).reshape(shape)

        if quantized:
            scale_shape = block_scale_shape(shape, n_in, self.lora.quantize, self.lora.group_size)
            # Both params from one draw. Flax also traces the init functions (abstractly) at
            # apply time to check shapes, where no "params" rng exists: any key does there.
            key = self.make_rng("params") if self.is_initializing() else jax.random.key(0)
            initial = lambda: quantize(normal_kernel(key), scale_shape, self.lora.quantize)
            q = self.param(
                "kernel", nn.with_logical_partitioning(lambda _: initial()[0], self.kernel_axes)
            )
            s = self.param(
                "kernel_scale",
                nn.with_logical_partitioning(lambda _: initial()[1], (None,) * n_in + out_axes),
            )
            kernel = dequantize(q, s, self.param_dtype)
        else:
            kernel = self.param(
                "kernel", nn.with_logical_partitioning(normal_kernel, self.kernel_axes)
            )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), out_axes),
                self.features,
                self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        contract = ((axis, tuple(range(n_in))), ((), ()))
        y = jax.lax.dot_general(x, kernel, contract)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - len(self.features)) + self.features)

        adapted = self.has_variable("params", "lora_a") or (self.is_initializing() and targeted)
        if not adapted:
            return y
        rank = self.lora.rank
        lora_a = self.param(
            "lora_a",
            nn.with_logical_partitioning(
                # Kaiming-uniform with a = √5 (PEFT's default): U(±1/√fan_in).
                nn.initializers.variance_scaling(
                    1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in)), out_axis=-1
                ),
                in_axes + ("lora_rank",),
            ),
            in_shape + (rank,),
            self.param_dtype,
        )
        lora_b = self.param(
            "lora_b",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("lora_rank",) + out_axes),
            (rank,) + self.features,
            self.param_dtype,
        )
        if self.lora.dropout > 0 and self.has_rng("dropout"):
            x = nn.Dropout(self.lora.dropout, deterministic=False)(x)
        x, lora_a, lora_b = nn.dtypes.promote_dtype(x, lora_a, lora_b, dtype=self.dtype)
        low = jax.lax.dot_general(x, lora_a, contract)
        delta = jax.lax.dot_general(low, lora_b, (((low.ndim - 1,), (0,)), ((), ())))
        return y + jnp.asarray(self.lora.scale, delta.dtype) * delta


class LoraEmbed(nn.Module):
    """``nn.Embed`` (same param name, shape, init and arithmetic) whose table can be trained
    beside frozen base weights: with ``lora.embeddings`` it creates ``embedding_delta`` (zeros,
    the table's logical axes) at init and looks up / attends with ``embedding + delta``
    whenever its params hold one. Without a delta it is ``nn.Embed``.

    Attributes:
      num_embeddings, features: the table's shape ``[num_embeddings, features]``.
      embedding_axes: its logical axis names.
      embedding_init: the base table's initializer (boxed with ``embedding_axes`` here).
      dtype, param_dtype: compute and storage dtypes.
      lora: the settings.
    """

    num_embeddings: int
    features: int
    embedding_axes: tuple[str | None, ...]
    embedding_init: Callable
    dtype: Any
    param_dtype: Any
    lora: LoraConfig

    def setup(self):
        shape = (self.num_embeddings, self.features)
        boxed = lambda init: nn.with_logical_partitioning(init, self.embedding_axes)
        table = self.param("embedding", boxed(self.embedding_init), shape, self.param_dtype)
        if self.has_variable("params", EMBEDDING_DELTA) or (
            self.is_initializing() and self.lora.embeddings
        ):
            delta = self.param(
                EMBEDDING_DELTA, boxed(nn.initializers.zeros_init()), shape, self.param_dtype
            )
            table = table + delta
        self.table = table

    def __call__(self, inputs: jax.Array) -> jax.Array:
        (table,) = nn.dtypes.promote_dtype(self.table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0)

    def attend(self, query: jax.Array) -> jax.Array:
        query, table = nn.dtypes.promote_dtype(query, self.table, dtype=self.dtype)
        return jnp.dot(query, table.T)


def dropout_rngs(module: nn.Module, rng: jax.Array | None) -> dict[str, jax.Array]:
    """``apply``'s ``rngs`` for a *trained* forward of ``module`` (a decoder or a head model;
    its ``config.lora`` holds the settings): ``{"dropout": rng}`` when its adapters use dropout,
    else none, so the forward is deterministic. Frozen forwards (a reference, the sampler, an
    evaluation) pass none."""
    settings = module.config.lora
    if settings is None or settings.dropout == 0 or rng is None:
        return {}
    return {"dropout": rng}


# ----------------------------------------------------------------------------- param trees


def path_name(path: tuple) -> str:
    """``'layer_0/attn/q/lora_a'`` from a key path (attribute keys such as a box's ``value``
    are skipped)."""
    return "/".join(str(k.key) for k in path if hasattr(k, "key"))


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def is_adapter(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in ADAPTERS


def has_adapters(params: Any) -> bool:
    """Whether a (possibly boxed) params tree holds LoRA adapters."""
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_box)]
    return any(is_adapter(n) for n in names)


def trainable_mask(params: Any) -> Any:
    """``True`` per trained leaf: everything without adapters; with adapters, the adapters and
    any leaf outside the decoder (a reward / value head), the decoder's own weights frozen."""
    adapted = has_adapters(params)

    def trainable(path, _):
        name = path_name(path)
        return not adapted or is_adapter(name) or not _DECODER.match(name)

    return jax.tree_util.tree_map_with_path(trainable, params, is_leaf=_is_box)


def split(params: Any) -> tuple[Any, Any]:
    """``(trainable, frozen)``: two trees like ``params``, each with ``None`` where the other has
    the leaf (``trainable_mask``); ``frozen`` is ``None`` when everything is trained."""
    if not has_adapters(params):
        return params, None
    mask = trainable_mask(params)
    trainable = jax.tree.map(lambda m, x: x if m else None, mask, params, is_leaf=_is_box)
    frozen = jax.tree.map(lambda m, x: None if m else x, mask, params, is_leaf=_is_box)
    return trainable, frozen


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of ``split``."""
    if frozen is None:
        return trainable
    return jax.tree.map(
        lambda a, b: b if a is None else a, trainable, frozen, is_leaf=lambda x: x is None
    )


def count_trainable(params: Any) -> int:
    """Number of trained scalars of a params tree (``trainable_mask``)."""
    trainable, _ = split(params)
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(trainable))


def adapters_only(params: Mapping) -> dict:
    """The nested dicts of ``params`` pruned to the adapter leaves."""
    out = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            inner = adapters_only(value)
            if inner:
                out[key] = inner
        elif key in ADAPTERS:
            out[key] = value
    return out


def with_adapters(params: Mapping, adapters: Mapping) -> dict:
    """``params`` with the leaves of ``adapters`` (a pruned tree, ``adapters_only``) put in;
    the other leaves are the same arrays (no copy)."""
    out = dict(params)
    for key, value in adapters.items():
        out[key] = with_adapters(params[key], value) if isinstance(value, Mapping) else value
    return out


def without_adapters(params: Mapping) -> dict:
    """``params`` with every adapter removed: the base model."""
    return {
        key: without_adapters(value) if isinstance(value, Mapping) else value
        for key, value in params.items()
        if key not in ADAPTERS
    }


def _adapter_delta(
    lora_a: jax.Array, lora_b: jax.Array, kernel_shape: tuple[int, ...]
) -> jax.Array:
    """``A B`` as a kernel-shaped array; leading axes shared by ``A``, ``B`` and the kernel
    (a scanned ``layers`` axis) are batch axes."""
    lead = lora_a.ndim - 1 + lora_b.ndim - 1 - len(kernel_shape)
    batch = lora_a.shape[:lead]
    a = lora_a.reshape(batch + (-1, lora_a.shape[-1])).astype(jnp.float32)
    b = lora_b.reshape(batch + (lora_b.shape[lead], -1)).astype(jnp.float32)
    return jnp.matmul(a, b).reshape(kernel_shape)


def merge(params: Mapping, scale: float) -> dict:
    """A plain params tree with ``W' = dequantize(W) + scale · A B`` in every adapted or
    quantized layer (kernel dtype: the adapters', i.e. the param dtype) and
    ``embedding + embedding_delta`` for a trained embedding table, adapters removed."""
    out = {}
    for key, value in params.items():
        if not isinstance(value, Mapping):
            out[key] = value
            continue
        if EMBEDDING_DELTA in value:
            table = jnp.asarray(value["embedding"], jnp.float32) + value[EMBEDDING_DELTA]
            out[key] = {"embedding": table.astype(value[EMBEDDING_DELTA].dtype)}
            continue
        if "kernel" not in value or not ({"lora_a", "kernel_scale"} & set(value)):
            out[key] = merge(value, scale)
            continue
        layer = {k: v for k, v in value.items() if k not in ADAPTERS + ("kernel_scale",)}
        dtype = value["lora_a"].dtype if "lora_a" in value else jnp.float32
        kernel = value["kernel"]
        if "kernel_scale" in value:
            kernel = dequantize(jnp.asarray(kernel), jnp.asarray(value["kernel_scale"]))
        kernel = jnp.asarray(kernel, jnp.float32)
        if "lora_a" in value:
            kernel = kernel + scale * _adapter_delta(
                jnp.asarray(value["lora_a"]), jnp.asarray(value["lora_b"]), kernel.shape
            )
        layer["kernel"] = kernel.astype(dtype)
        out[key] = layer
    return out


def conform(params: Any, init_params: Callable[[], Any], shardings: Any) -> Any:
    """Loaded (base) ``params`` made to match the tree ``init_params()`` of a LoRA model:
    missing adapters are taken from a fresh init (jitted into ``shardings``; XLA drops the
    rest of the init) and a kernel the model stores quantized is quantized with the model's
    block shape. Returns ``params`` unchanged when they already match."""
    abstract = nn.meta.unbox(jax.eval_shape(init_params))
    wanted = {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    have = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    missing = sorted(n for n in wanted if n not in have and is_adapter(n))
    to_quantize = sorted(
        n[: -len("_scale")] for n in wanted if n.endswith("kernel_scale") and n not in have
    )
    if not missing and not to_quantize:
        return params

    def lookup(tree, name):
        for key in name.split("/"):
            tree = tree[key]
        return tree

    def put(tree, name, value):
        head, _, rest = name.partition("/")
        return {**tree, head: put(tree[head], rest, value) if rest else value}

    if missing:
        fresh_shardings = [lookup(shardings, n) for n in missing]
        fresh = jax.jit(
            lambda: [lookup(nn.meta.unbox(init_params()), n) for n in missing],
            out_shardings=fresh_shardings,
        )()
        for name, value in zip(missing, fresh, strict=True):
            params = put(params, name, value)
    for name in to_quantize:
        scale = wanted[name + "_scale"]
        mode = "int4" if wanted[name].dtype == jnp.int4 else "int8"
        out = (lookup(shardings, name), lookup(shardings, name + "_scale"))
        blocks = functools.partial(quantize, scale_shape=scale.shape, quantize=mode)
        q, s = jax.jit(blocks, out_shardings=out)(lookup(params, name))
        params = put(put(params, name, q), name + "_scale", s)
    return params
