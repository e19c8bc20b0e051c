"""The process table: what is read of each process, tick after tick.

:class:`ProcessTable` keeps what it read of each process across ticks so that a
process's CPU share is measured over the interval and its name and user are read once.
The process walk (:mod:`.processes`) and the kernels' trees (:mod:`.collectors`) read
through it. Each reading also carries the process's CPU time so far, its own and its
reaped children's, which :mod:`.cputime` turns into counters.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from . import procfs


def uses_procfs(ps: Any) -> bool:
    """Read ``/proc`` directly: only for the real psutil, on Linux."""
    return ps is psutil and procfs.AVAILABLE


@dataclass(slots=True)
class ProcessInfo:
    """One reading of a process. ``cpu_seconds`` is its own CPU time so far (user +
    system, every thread), ``reaped_cpu_seconds`` the CPU time of the children it waited
    for (and theirs); ``start`` tells it from a later process with the same pid (clock
    ticks after boot on the ``/proc`` path, psutil's ``create_time`` otherwise). A
    ``zombie`` (exited, not reaped yet) is read only when asked for: its RSS is 0 and
    its CPU times are final."""

    pid: int
    name: str
    user: str | None
    cpu_percent: float | None
    rss_bytes: int
    cpu_seconds: float = 0.0
    reaped_cpu_seconds: float = 0.0
    start: float = 0.0
    zombie: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "user": self.user,
            "cpu_percent": self.cpu_percent,
            "rss_bytes": self.rss_bytes,
        }


class _Tracked:
    """What is kept of one process between ticks."""

    __slots__ = (
        "cpu_ticks", "created", "fd", "name", "primed", "process", "read_at", "start_ticks",
        "user",
    )  # fmt: skip

    def __init__(self, process: Any, name: str, user: str | None, created: float) -> None:
        self.process = process
        self.name = name
        self.user = user
        self.created = created  # psutil's create_time (0.0 where unknown)
        self.primed = False
        self.start_ticks = -1  # procfs: tells a reused pid from the process we know
        self.cpu_ticks = 0  # procfs: CPU time (clock ticks) and when it was read
        self.read_at = 0.0
        self.fd = -1  # procfs: its /proc/<pid>/stat, held open between ticks (or -1)


def _nofile_soft_limit() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


#: At most this many ``/proc/<pid>/stat`` files are held open by one table, and never
#: more than an eighth of the process's file limit (``RLIMIT_NOFILE``): the rest of the
#: processes are read with open + read + close. 128 with the usual soft limit of 1024,
#: so that the server's own sockets keep their room. A held file saves about 3 us per
#: process per tick; it costs about 0.4 us wherever ``/proc/self/fd`` is listed
#: (prometheus_client's ``process_open_fds``, on each scrape), hence a bound well below
#: the thousands of processes a big host has.
MAX_HELD_FILES = 512


def held_files_limit() -> int:
    """How many stat files a :class:`ProcessTable` holds open at most, here."""
    return max(0, min(MAX_HELD_FILES, _nofile_soft_limit() // 8))


class ProcessTable:
    """Keeps what it read of each process across ticks so that per-process CPU percent
    is measured over the interval, and name and user are read once per process.

    ``cpu_percent`` is percent of one core (it can pass 100 for a multi-threaded
    process) and is ``None`` on a process's first reading.

    With the real psutil on Linux a tick reads one file per process,
    ``/proc/<pid>/stat``, and keeps it open (up to ``max_held`` of them, see
    :func:`held_files_limit`) to read it again next tick with one ``pread``: no path
    lookup, no open, no close. A held file stays bound to the process it was opened
    for: once that process exits, the read fails (the pid may belong to another process
    by then, which is then opened afresh). :meth:`close` closes them all (a paused walk,
    a stopped sampler); the table can be read again afterwards.
    """

    def __init__(self, ps: ModuleType | Any = psutil, max_held: int | None = None) -> None:
        self.ps = ps
        self._tracked: dict[int, _Tracked] = {}
        self._procfs = uses_procfs(ps)
        self._max_held = held_files_limit() if max_held is None else max_held
        self._held = 0
        # A walk in progress holds the lock; a close() that finds it held (a walk stuck
        # in a read, on another thread) leaves the closing to that walk.
        self._lock = threading.Lock()
        self._close_pending = False

    @property
    def held_files(self) -> int:
        """Stat files held open right now."""
        return self._held

    def read(self, pids: Iterable[int], zombies: bool = False) -> list[ProcessInfo]:
        """Read each pid; gone or inaccessible processes are skipped, and so are zombies
        unless ``zombies`` (on the ``/proc`` path only: psutil's path always skips them).
        Processes not in ``pids`` are forgotten."""
        wanted = set(pids)
        with self._lock:
            try:
                tracked = self._tracked
                for pid in [pid for pid in tracked if pid not in wanted]:
                    self._forget(pid)
                if self._procfs:
                    return self._read_procfs(wanted, zombies)
                infos = []
                for pid in wanted:
                    info = self._read_one(pid)
                    if info is not None:
                        infos.append(info)
                return infos
            finally:
                if self._close_pending:
                    self._close_pending = False
                    self._release()

    def close(self) -> None:
        """Close the held files and forget every process. Idempotent; safe while a walk
        is in progress on another thread (a stuck one closes them when it returns)."""
        self._close_pending = True  # first: a walk that holds the lock sees it when done
        if self._lock.acquire(blocking=False):
            try:
                self._close_pending = False
                self._release()
            finally:
                self._lock.release()

    def _release(self) -> None:
        tracked, self._tracked = self._tracked, {}
        self._held = 0
        for entry in tracked.values():
            if entry.fd >= 0:
                os.close(entry.fd)
                entry.fd = -1

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        for entry in getattr(self, "_tracked", {}).values():
            if entry.fd >= 0:
                _close(entry.fd)
                entry.fd = -1

    def _forget(self, pid: int) -> None:
        entry = self._tracked.pop(pid, None)
        if entry is not None and entry.fd >= 0:
            os.close(entry.fd)
            entry.fd = -1
            self._held -= 1

    def _read_one(self, pid: int) -> ProcessInfo | None:
        ps = self.ps
        tracked = self._tracked.get(pid)
        try:
            if tracked is None:
                tracked = self._tracked[pid] = self._identify(pid)
            proc = tracked.process
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
                times = proc.cpu_times()
        except (ps.NoSuchProcess, ps.ZombieProcess):
            self._tracked.pop(pid, None)
            return None
        except ps.AccessDenied:
            return None
        cpu_percent = round(cpu, 1) if tracked.primed else None
        tracked.primed = True
        return ProcessInfo(
            pid, tracked.name, tracked.user, cpu_percent, rss,
            cpu_seconds=times.user + times.system,
            reaped_cpu_seconds=getattr(times, "children_user", 0.0)
            + getattr(times, "children_system", 0.0),
            start=tracked.created,
        )  # fmt: skip

    def _identify(self, pid: int) -> _Tracked:
        """Name and user, read once per process through psutil."""
        ps = self.ps
        proc = ps.Process(pid)
        with proc.oneshot():
            name = proc.name()
            try:
                user = proc.username()
            except (ps.AccessDenied, KeyError):
                user = None
            created = 0.0
            if not self._procfs:  # the /proc path tells processes apart by start ticks
                with contextlib.suppress(ps.AccessDenied, AttributeError):
                    created = float(proc.create_time())
        return _Tracked(proc, name, user, created)

    def _read_procfs(self, pids: Iterable[int], zombies: bool) -> list[ProcessInfo]:
        """One ``pread`` of each held ``/proc/<pid>/stat`` (open + read for the others);
        psutil only for a process seen for the first time."""
        infos = []
        for pid in pids:
            info = self._read_stat(pid, zombies)
            if info is not None:
                infos.append(info)
        return infos

    def _read_stat(self, pid: int, zombies: bool) -> ProcessInfo | None:
        ps = self.ps
        tracked = self._tracked.get(pid)
        fresh = -1  # a descriptor opened for this read: held below, or closed
        try:
            data = None
            if tracked is not None and tracked.fd >= 0:
                try:
                    data = procfs.read_stat(tracked.fd)
                except procfs.ProcessGone:
                    self._forget(pid)  # our process exited; the pid may be another's now
                    tracked = None
            if data is None:
                fresh = procfs.open_stat(pid)
                data = procfs.read_stat(fresh)
            stat = procfs.parse_stat_fields(data)
            if stat.zombie and not zombies:
                raise procfs.ProcessGone(pid)
            cpu_ticks, start_ticks = stat.cpu_ticks, stat.start_ticks
            now = time.monotonic()
            if tracked is None or tracked.start_ticks != start_ticks:
                self._forget(pid)
                tracked = self._tracked[pid] = self._identify(pid)
                tracked.start_ticks = start_ticks
            if fresh >= 0 and tracked.fd < 0 and self._held < self._max_held:
                tracked.fd, fresh = fresh, -1
                self._held += 1
        except (procfs.ProcessGone, ps.NoSuchProcess, ps.ZombieProcess):
            self._forget(pid)
            return None
        except (ps.AccessDenied, PermissionError):
            return None
        finally:
            if fresh >= 0:
                os.close(fresh)
        cpu_percent = None
        elapsed = now - tracked.read_at
        if tracked.primed and elapsed > 0:
            busy = max(0, cpu_ticks - tracked.cpu_ticks) / procfs.CLOCK_TICKS
            cpu_percent = round(100.0 * busy / elapsed, 1)
        tracked.primed = True
        tracked.cpu_ticks, tracked.read_at = cpu_ticks, now
        return ProcessInfo(
            pid, tracked.name, tracked.user, cpu_percent, stat.rss_pages * procfs.PAGE_BYTES,
            cpu_seconds=cpu_ticks / procfs.CLOCK_TICKS,
            reaped_cpu_seconds=stat.reaped_ticks / procfs.CLOCK_TICKS,
            start=float(start_ticks),
            zombie=stat.zombie,
        )  # fmt: skip
