"""Pieces the multi-run experiment drivers share (no absl flags here: drivers define their own)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple


class Clock:
    """Wall seconds of each named stage (printed as it ends, kept for the JSON)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[name] = time.perf_counter() - start
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def compilation_cache(workdir: str) -> None:
    """Runs that differ only in a seed or a reward source compile many of the same programs
    (sampler, policy update): a persistent cache in WORKDIR/jax_cache compiles them once (a
    fresh WORKDIR starts cold)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


WORKERS_HELP = (
    "Runs trained at once, each in a process pinned to its share of the cores "
    "(experiments.common.train_runs); 0: default_workers() (2 on a Linux CPU with two or more "
    "cores, else 1)."
)


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):  # Linux
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _pin(cores) -> None:
    """Worker initializer: this process on its share of the cores (``cores.get()``), where the
    OS lets a process choose (Linux; macOS has no affinity call, so its workers float)."""
    share = cores.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, share)


class Finished(NamedTuple):
    seconds: float  # the run's wall time
    metrics: dict[str, float]  # its final evaluation (``algorithms.run``'s result)


def _train(config, workdir: str, cache_root: str) -> Finished:
    """One run (``algorithms.run``, in a worker process or this one)."""
    from irl_jax import algorithms

    compilation_cache(cache_root)
    start = time.perf_counter()
    metrics = algorithms.run(config, workdir)
    return Finished(time.perf_counter() - start, {k: float(v) for k, v in metrics.items()})


def default_workers() -> int:
    """2 on a CPU with at least two cores that processes can be pinned to (see ``train_runs``;
    Linux), else 1 (an accelerator belongs to one process)."""
    import jax

    pinnable = hasattr(os, "sched_setaffinity") and len(_usable_cores()) >= 2
    return 2 if jax.default_backend() == "cpu" and pinnable else 1


def train_runs(runs: dict[str, tuple], workers: int, cache_root: str) -> dict[str, Finished]:
    """Trains independent runs, ``name -> (config, run_dir)``; returns each run's wall seconds
    (printed as it ends) and final metrics.

    ``workers`` > 1 trains them in as many spawned processes, each pinned to its own share of
    the CPU cores. The drivers' models are tiny: their ops are too small to gain from a second
    thread, while two threads per op cost synchronisation. On 2 cores one PPO run took 45 s on
    both cores, 40 s pinned to one, and 38 s each for two at once pinned to one core each. A
    run's numbers depend on its thread count (XLA splits reductions by thread), so results
    repeat for the same ``workers`` on the same cores, and ``workers`` = 1 (the runs one after
    another in this process, on all cores) gives other draws of the same experiment."""
    finished: dict[str, Finished] = {}

    def done(name: str, run: Finished) -> None:
        finished[name] = run
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {run.seconds:.1f} s", flush=True)

    if workers <= 1:
        for name, (config, path) in runs.items():
            done(name, _train(config, path, cache_root))
        return finished
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    cores, all_cores = context.Queue(), _usable_cores()
    for index in range(workers):
        cores.put(all_cores[index::workers] or all_cores)
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_pin, initargs=(cores,)
    ) as pool:
        futures = {
            pool.submit(_train, config, path, cache_root): name
            for name, (config, path) in runs.items()
        }
        for future in concurrent.futures.as_completed(futures):
            done(futures[future], future.result())
    return {name: finished[name] for name in runs}
