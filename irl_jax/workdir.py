"""A run directory shared safely: an exclusive lock (``WorkdirLock``: a second process on the
same workdir fails naming the holder; a dead holder's lock is taken over), and output
directories written whole or not at all (``publish_directory``: an export is renamed into place
only when complete, with a completeness marker)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

from irl_jax.checkpoint import everywhere

LOCK_FILE = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another live process holds the run directory."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/<pid>/stat``, in clock ticks since boot):
    tells a live process from a later one that reuses a dead one's pid. ``None`` without
    ``/proc`` or for a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    """Process ``pid`` (started at ``start``, when known) is still running on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    if os.path.isdir("/proc") and now is None:
        return False  # a zombie: dead, not yet reaped by its parent
    return start is None or now is None or now == start


class WorkdirLock:
    """An exclusive lock on a run directory: ``WORKDIR/run.lock`` names the process holding it.

    ``acquire`` creates the file atomically with the holder's pid, host and start time. A lock
    whose process is dead (same host, pid gone or reused) is taken over with a warning; one
    held by a live process, or by a process on another host, raises ``WorkdirLocked`` naming
    it. In a multi-process run process 0 holds the lock and every process learns the outcome.
    Use as a context manager.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.held = False
        pid = os.getpid()
        self.owner = {
            "pid": pid,
            "host": socket.gethostname(),
            "start": _process_start(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }

    def _create(self) -> bool:
        """Writes the lock file whole, unless one exists (a link of a complete temporary file
        is atomic and fails on an existing name)."""
        temporary = f"{self.path}.{self.owner['pid']}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(self.owner, f)
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then write
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            return True
        finally:
            os.remove(temporary)

    def _holder(self, path: str | None = None) -> dict[str, Any] | None:
        """The lock file's holder (``{}`` if unreadable), or None when there is no lock."""
        try:
            with open(path or self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _try_acquire(self) -> str | None:
        """Takes the lock on this process; returns why it cannot, or None."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            if self._create():
                return None
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            same_host = holder.get("host") == self.owner["host"]
            if not same_host or _alive(int(holder.get("pid", -1)), holder.get("start")):
                where = f"pid {holder.get('pid')} on host {holder.get('host')}"
                return (
                    f"{os.path.dirname(self.path)} is in use by {where} since "
                    f"{holder.get('since')} (lock file {self.path}); wait for it, or delete the "
                    "lock file if that process is gone"
                )
            # A dead holder: set its file aside (only one contender can rename it), then retry.
            stale = f"{self.path}.stale.{self.owner['pid']}"
            try:
                os.rename(self.path, stale)
            except FileNotFoundError:
                continue
            if self._holder(stale) != holder:
                # Another contender replaced the dead lock first: put its lock back.
                os.rename(stale, self.path)
                continue
            logging.warning(
                "took over the lock of %s from dead process %s (since %s)",
                os.path.dirname(self.path),
                holder.get("pid"),
                holder.get("since"),
            )
            os.remove(stale)
        return f"could not lock {os.path.dirname(self.path)} (contended lock file {self.path})"

    def acquire(self) -> WorkdirLock:
        """Takes the lock (process 0; all processes raise ``WorkdirLocked`` if it cannot)."""
        problem = self._try_acquire() if jax.process_index() == 0 else None
        self.held = problem is None and jax.process_index() == 0
        if not everywhere(problem is None):
            raise WorkdirLocked(problem or "process 0 could not lock the run directory")
        return self

    def release(self) -> None:
        """Removes the lock file if this process still holds it."""
        if self.held and self._holder() == self.owner:
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


# ----------------------------------------------------------------------------- outputs


def publish_directory(write: Callable[[str], Any], path: str, marker: str) -> None:
    """Writes the directory ``path`` whole or not at all.

    ``write(temporary)`` fills ``<path>.partial`` (called on every process: an export gathers
    params from all of them; process 0 writes files), then process 0 writes ``marker`` (a JSON
    file saying the directory is complete) and renames the directory into place, replacing an
    older ``path``. A process killed meanwhile leaves ``path`` as it was (or, between the two
    renames, absent) and a ``.partial`` / ``.replaced`` directory that the next call removes.
    """
    temporary, replaced = f"{path}.partial", f"{path}.replaced"
    primary = jax.process_index() == 0
    if primary:
        for leftover in (temporary, replaced):
            shutil.rmtree(leftover, ignore_errors=True)
    write(temporary)
    if primary:
        with open(os.path.join(temporary, marker), "w", encoding="utf-8") as f:
            json.dump({"complete": True, "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, f)
        if os.path.exists(path):
            os.rename(path, replaced)
        os.rename(temporary, path)
        shutil.rmtree(replaced, ignore_errors=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("irl_jax.workdir.publish_directory")
