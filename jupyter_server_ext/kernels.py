"""What the server knows about its kernels, beyond the pid: the notebook each one
serves, its state, its whole process tree, and how it ended when it died.

Two jobs, both kept out of the collectors' hot path:

- :func:`process_tree` lists a kernel's pid and its descendants (a kernel running
  ``subprocess`` or ``multiprocessing`` holds memory in its children too). On Linux it
  follows ``/proc/<pid>/task/<tid>/children`` down from the kernel, so its cost grows
  with the tree, not with the machine's process count; elsewhere psutil's
  ``Process.children(recursive=True)``.
- :class:`KernelDeaths` learns of kernel deaths from jupyter_client's restarter (the
  public ``add_restart_callback``: ``restart`` fires when the restarter finds the kernel
  process dead, before it starts a new one; ``dead`` when it gives up), with the exit
  status the provisioner reaped. Callbacks run on the server's event loop; the sampler
  thread drains the deaths once per tick.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from .procfs import read_bytes

#: Most processes counted in one kernel's tree: a fork bomb must not stall the sampler.
MAX_TREE = 1024

_PROC = Path("/proc")


def proc_children(pid: int, proc: Path | str = _PROC) -> list[int] | None:
    """Direct children of ``pid`` from ``/proc/<pid>/task/*/children``; ``[]`` if the
    process is gone; ``None`` where the kernel has no such file (then ask psutil).
    Plain ``os`` calls on string paths: a kernel has a dozen threads, and ``pathlib``
    with a text-mode ``read_text`` for each cost about 10 us a thread, every tick."""
    tasks_dir = f"{os.fspath(proc)}/{pid}/task"
    try:
        tasks = os.listdir(tasks_dir)
    except FileNotFoundError:
        return []
    except OSError:
        return None
    found: list[int] = []
    for task in tasks:
        try:
            data = read_bytes(f"{tasks_dir}/{task}/children")
        except FileNotFoundError:
            if not os.path.exists(f"{tasks_dir}/{task}/stat"):
                continue  # the thread ended while we looked
            return None  # CONFIG_PROC_CHILDREN is off
        except OSError:
            continue
        found.extend(int(word) for word in data.split())
    return found


def process_tree(
    pid: int,
    children: Callable[[int], list[int] | None] | None = proc_children,
    ps: Any = psutil,
    limit: int = MAX_TREE,
) -> list[int]:
    """``pid`` and its descendants (at most ``limit``), parents before children.
    ``children=None`` asks ``ps`` (psutil) for the whole tree."""
    if children is None:
        return _psutil_tree(pid, ps, limit)
    tree = [pid]
    seen = {pid}
    index = 0
    while index < len(tree) and len(tree) < limit:
        parent = tree[index]
        index += 1
        kids = children(parent)
        if kids is None:  # no /proc children files: psutil walks the whole tree at once
            return _psutil_tree(pid, ps, limit)
        for kid in kids:
            if kid not in seen and len(tree) < limit:
                seen.add(kid)
                tree.append(kid)
    return tree


def _psutil_tree(pid: int, ps: Any, limit: int) -> list[int]:
    try:
        kids = ps.Process(pid).children(recursive=True)
    except (ps.NoSuchProcess, ps.AccessDenied):
        return [pid]
    return [pid, *(k.pid for k in kids)][:limit]


def unix_time(value: Any) -> float | None:
    """A kernel model's ``last_activity`` (a datetime or an ISO 8601 string) in unix
    seconds; ``None`` when absent or unreadable."""
    if isinstance(value, datetime):
        return round(value.timestamp(), 3)
    if isinstance(value, str) and value:
        try:
            return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp(), 3)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class KernelDeath:
    """A kernel process found dead. ``exit_code`` as ``subprocess`` reports it: negative
    for the signal that killed it, ``None`` when unknown."""

    kernel_id: str
    name: str
    pid: int | None
    exit_code: int | None
    path: str | None
    time: float  # unix s
    monotonic: float  # s, for matching with other events of the same tick


def exit_code_of(kernel: Any) -> int | None:
    """The exit status of the kernel process that just died. jupyter_client's
    ``LocalProvisioner`` keeps the reaped ``Popen`` as ``process`` (not part of the
    provisioner base API, hence the guard); other provisioners give ``None``."""
    process = getattr(getattr(kernel, "provisioner", None), "process", None)
    code = getattr(process, "returncode", None)
    return code if isinstance(code, int) else None


class KernelDeaths:
    """Deaths of this server's kernels, recorded on the event loop, drained by the
    sampler thread. Call :meth:`watch` for every live kernel on every tick: it
    (re)registers the restarter callbacks, which is a no-op until the kernel's
    restarter exists, and keeps each kernel's notebook path for the report."""

    EVENTS = ("restart", "dead")

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._deaths: list[KernelDeath] = []
        self._callbacks: dict[str, Callable[[], None]] = {}
        self._paths: dict[str, str | None] = {}

    def watch(self, kernel_id: str, kernel: Any, path: str | None) -> None:
        """Follow ``kernel`` (a jupyter_client ``KernelManager``); on the server's loop."""
        self._paths[kernel_id] = path
        callback = self._callbacks.get(kernel_id)
        if callback is None:
            callback = self._callbacks[kernel_id] = self._make_callback(kernel_id, kernel)
        for event in self.EVENTS:
            kernel.remove_restart_callback(callback, event)
            kernel.add_restart_callback(callback, event)

    def forget_except(self, kernel_ids: Iterable[str]) -> None:
        """Drop the kernels that are no longer the server's (shut down or removed)."""
        keep = set(kernel_ids)
        for kernel_id in [k for k in self._callbacks if k not in keep]:
            del self._callbacks[kernel_id]
            self._paths.pop(kernel_id, None)

    def _make_callback(self, kernel_id: str, kernel: Any) -> Callable[[], None]:
        def died() -> None:
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            self.record(
                KernelDeath(
                    kernel_id=kernel_id,
                    name=str(getattr(kernel, "kernel_name", "")),
                    pid=pid if isinstance(pid, int) and pid > 0 else None,
                    exit_code=exit_code_of(kernel),
                    path=self._paths.get(kernel_id),
                    time=self._clock(),
                    monotonic=self._monotonic(),
                )
            )

        return died

    def record(self, death: KernelDeath) -> None:
        with self._lock:
            if death.pid is not None and any(
                d.kernel_id == death.kernel_id and d.pid == death.pid for d in self._deaths
            ):
                return  # "dead" after "restart" for the same process: one death
            self._deaths.append(death)

    def drain(self) -> list[KernelDeath]:
        """The deaths recorded since the last drain, oldest first."""
        with self._lock:
            deaths, self._deaths = self._deaths, []
        return deaths
