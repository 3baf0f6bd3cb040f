"""Device meshes, the one logical-axis-rules table, and sharded placement of params.

Every param and large activation in irl_jax carries *logical* axis names (``"embed"``, ``"heads"``,
``"act_batch"``, ...). ``LOGICAL_AXIS_RULES`` maps them to the mesh axes
``('data', 'fsdp', 'tensor')``. A dimension that does not divide the product of its mesh axes
(e.g. one KV head over ``tensor=2``) is replicated instead of failing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes). Params: embed is FSDP-sharded, the rest tensor-parallel.
# Activations (act_*) are batch-parallel over (data, fsdp) and tensor-parallel inside a layer.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("qkv", None),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("positions", None),
    ("reward_heads", None),
    ("lora_rank", None),  # LoRA adapters: A [*in, r], B [r, *out] shard like their kernel
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``('data', 'fsdp', 'tensor')`` mesh from a dict such as ``{"data": -1}``.

    At most one axis may be ``-1`` (it takes the remaining devices); missing axes are 1. Axes are
    ``Auto`` so that jit propagates shardings from ``in_shardings`` and logical constraints.

    Raises:
      ValueError: an unknown axis name, more than one ``-1``, a non-positive size, or sizes whose
        product is not the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh_shape: unknown axis {unknown}; expected axes from {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh_shape: at most one axis may be -1, got {dict(shape)}")
    bad = {axis: size for axis, size in sizes.items() if size == 0 or size < -1}
    if bad:
        raise ValueError(f"mesh_shape: axis sizes must be positive or -1, got {bad}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(
                f"mesh_shape {dict(shape)}: {len(devices)} devices are not divisible by the "
                f"fixed axes' product {fixed}"
            )
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh_shape {dict(shape)} needs {math.prod(sizes.values())} devices, "
            f"but {len(devices)} are available"
        )
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _axis_size(mesh_shape: Mapping[str, int], axes: str | tuple[str, ...] | None) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh_shape.get(a, 1) for a in axes)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec`` for an array of ``shape``.

    A dimension whose size does not divide the product of its mesh axes is replicated, and a mesh
    axis already used by an earlier dimension is not reused.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape, strict=True):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
            axes_tuple = tuple(a for a in axes_tuple if mesh_shape.get(a, 1) > 1)
            if used.intersection(axes_tuple) or size % _axis_size(mesh_shape, axes_tuple):
                axes_tuple = ()
            used.update(axes_tuple)
            axes = axes_tuple[0] if len(axes_tuple) == 1 else (axes_tuple or None)
        spec.append(axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation; a no-op when no mesh is set.

    Uses the mesh installed with ``jax.set_mesh`` (the abstract mesh seen while tracing).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(logical_axes, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def _is_partitioned(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def logical_axes_of(boxed_tree: Any) -> Any:
    """The logical axis names of every leaf of a tree of ``nn.LogicallyPartitioned`` boxes.

    Unboxed leaves (no annotation) get ``None`` for every dimension.
    """

    def axes(leaf):
        if _is_partitioned(leaf):
            return tuple(leaf.names)
        return (None,) * len(np.shape(leaf))

    return jax.tree.map(axes, boxed_tree, is_leaf=_is_partitioned)


def unbox(tree: Any) -> Any:
    """Removes ``nn.Partitioned`` boxes, leaving plain arrays (or shape structs)."""
    return nn.meta.unbox(tree)


def tree_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` for every leaf of a boxed (logically annotated) tree of arrays/shapes."""

    def sharding(leaf):
        value = leaf.unbox() if _is_partitioned(leaf) else leaf
        if not hasattr(value, "shape"):
            return value  # an empty pytree node, e.g. optax's MaskedNode for a frozen param
        names = tuple(leaf.names) if _is_partitioned(leaf) else (None,) * len(value.shape)
        return NamedSharding(mesh, logical_to_spec(names, value.shape, dict(mesh.shape)))

    return jax.tree.map(sharding, boxed_tree, is_leaf=_is_partitioned)


def replicated(mesh: Mesh) -> NamedSharding:
    """The fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a data batch: the leading (batch) axis over ``('data', 'fsdp')``."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def init_sharded(init_fn, mesh: Mesh, *args) -> tuple[Any, Any]:
    """Initializes a (boxed) param tree directly into its shardings.

    ``init_fn(*args)`` must return a tree of ``nn.Partitioned`` leaves (e.g. ``model.init``).
    Shapes come from ``jax.eval_shape``; the init is jitted with ``out_shardings`` so no param is
    ever materialized whole on one device.

    Returns:
      ``(params, shardings)``: unboxed arrays and their ``NamedSharding`` tree.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = tree_shardings(abstract, mesh)
    params = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return params, shardings


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's rows of a batch into global arrays sharded over the batch axis
    (in a single process: places the whole batch)."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(x))
        for name, x in batch.items()
    }


def place(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places one host array into ``sharding``, each device receiving only its shard.

    Works for multi-process meshes too: every process supplies the shards of its own devices.
    """
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(tree: Any) -> Any:
    """Fetches every array of ``tree`` to the host as a whole (numpy): ``jax.device_get`` where
    this process holds all of it, an all-gather across processes where it spans several (a
    batch-sharded array of a multi-process run). Every process must call it with the same tree."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(fetch, tree)


# A multi-process run's coordinator ``host:port``, process count and this process's index, read
# from these environment variables when the corresponding flag is not given.
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# The launcher variables by which jax's own cluster detection recognizes Slurm and Open MPI
# (``jax._src.clusters``), and the variable holding the task count.
_SLURM_ENV = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
_LAUNCHERS = {
    "slurm": (_SLURM_ENV, "SLURM_NTASKS"),
    "ompi": (("OMPI_MCA_orte_hnp_uri",), "OMPI_COMM_WORLD_SIZE"),
}


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """How this process joins a multi-process run: the arguments of
    ``jax.distributed.initialize`` and where they come from.

    Attributes:
      source: ``"flags"``, ``"environment"`` (``DISTRIBUTED_ENV``), or the cluster that supplies
        what is unset: ``"gcetpu"`` (a Cloud TPU VM: worker index and coordinator from its
        metadata), ``"gketpu"`` (``TPU_WORKER_HOSTNAMES`` / ``TPU_WORKER_ID``), ``"slurm"``,
        ``"ompi"``; joined with ``+`` when flags and a cluster both contribute.
      coordinator_address, num_processes, process_id: the explicit values (``None``: the
        cluster's).
      cluster: the ``cluster_detection_method`` passed to jax (``"deactivate"`` when everything
        is explicit, so jax changes nothing, e.g. does not limit each process to one GPU).
    """

    source: str
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    cluster: str


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process runs in, recognized without any network access.

    * ``"gketpu"`` / ``"gcetpu"``: a Cloud TPU VM — ``jax`` found libtpu and TPU chips on the
      PCI bus when it was imported (``jax._src.cloud_tpu_init``). On GKE the worker list is in
      ``TPU_WORKER_HOSTNAMES``; on a TPU VM jax reads it from the VM's metadata server when it
      initializes (a single-host VM is then a run of one process), unless
      ``TPU_SKIP_MDS_QUERY`` turns that off.
    * ``"slurm"`` / ``"ompi"``: launched by ``srun`` / ``mpirun`` with more than one task.
    * ``None``: anything else (a laptop, CI, one GPU machine): a single process.
    """
    from jax._src import cloud_tpu_init

    environ = os.environ if environ is None else environ
    if cloud_tpu_init.running_in_cloud_tpu_vm:
        if environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_PROCESS_ADDRESSES"):
            return "gketpu"
        if environ.get("TPU_SKIP_MDS_QUERY") is None:
            return "gcetpu"
    for name, (required, count) in _LAUNCHERS.items():
        if all(var in environ for var in required) and int(environ.get(count, "1")) > 1:
            return name
    return None


def distributed_plan(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedPlan | None:
    """Decides whether and how this process joins a multi-process run (pure: starts nothing).

    Each of coordinator, process count and process index comes from its flag, else from its
    ``DISTRIBUTED_ENV`` variable, else from the detected cluster (``detect_cluster``). With all
    three explicit, jax's cluster detection is turned off.

    Returns:
      The plan, or ``None`` for a single process (nothing given, no cluster detected).

    Raises:
      ValueError: some but not all of the three are given and no cluster supplies the rest, or
        an environment variable is not an integer.
    """
    environ = os.environ if environ is None else environ
    flags = (coordinator_address, num_processes, process_id)
    values = [
        flag if flag is not None else environ.get(var) or None
        for flag, var in zip(flags, DISTRIBUTED_ENV, strict=True)
    ]
    for i in (1, 2):
        if isinstance(values[i], str):
            try:
                values[i] = int(values[i])
            except ValueError:
                raise ValueError(f"{DISTRIBUTED_ENV[i]}={values[i]!r} is not an integer") from None
    given = [v is not None for v in values]
    source = "flags" if any(f is not None for f in flags) else "environment" if any(given) else ""
    cluster = None if all(given) else detect_cluster(environ)
    if all(given):
        return DistributedPlan(source, *values, cluster="deactivate")
    if cluster is not None:
        return DistributedPlan("+".join(filter(None, (source, cluster))), *values, cluster=cluster)
    if any(given):
        names = ("coordinator_address", "num_processes", "process_id")
        missing = [
            f"--{name} (or {var})"
            for name, var, have in zip(names, DISTRIBUTED_ENV, given, strict=True)
            if not have
        ]
        raise ValueError(
            f"a multi-process run ({source}) also needs {', '.join(missing)}; no cluster "
            "(Cloud TPU, Slurm, Open MPI) was detected to supply them"
        )
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> DistributedPlan | None:
    """Starts ``jax.distributed`` when this process is one of several (see
    ``distributed_plan``): on a Cloud TPU pod with no arguments, elsewhere from flags or the
    ``DISTRIBUTED_ENV`` variables (or a Slurm / Open MPI launch). A no-op for a single process.

    Must run before anything touches a JAX device. Off TPU the cross-process collectives of the
    CPU backend go through gloo.

    Returns:
      The plan that was carried out, or ``None``.
    """
    plan = distributed_plan(coordinator_address, num_processes, process_id)
    if plan is None:
        return None
    if not plan.cluster.endswith("tpu") and jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        plan.coordinator_address,
        plan.num_processes,
        plan.process_id,
        cluster_detection_method=plan.cluster,
    )
    return plan


def describe_processes() -> str:
    """One line: this process's index and count, and its devices among all."""
    local = jax.local_devices()
    return (
        f"process {jax.process_index()} of {jax.process_count()}: {len(local)} local "
        f"{local[0].platform} devices of {jax.device_count()}"
    )


def describe_mesh(mesh: Mesh) -> str:
    """One line: the mesh's axis sizes and which positions on each axis this process's devices
    hold (e.g. ``fsdp 0-3 of 8``: a quarter of every FSDP-sharded param lives here)."""
    mine = np.vectorize(lambda d: d.process_index == jax.process_index())(mesh.devices)
    positions = np.argwhere(mine)
    parts = []
    for axis, (name, size) in enumerate(mesh.shape.items()):
        held = sorted(set(positions[:, axis].tolist()))
        if len(held) > 1 and held == list(range(held[0], held[-1] + 1)):
            span = f"{held[0]}-{held[-1]}"
        else:
            span = ",".join(map(str, held))
        parts.append(f"{name} {span} of {size}")
    sizes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return (
        f"mesh {sizes} over {mesh.size} devices in {jax.process_count()} processes; "
        f"process {jax.process_index()} holds {', '.join(parts)}"
    )
