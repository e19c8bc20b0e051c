"""The process table, walked once per tick for the ``processes`` and ``users`` groups.

:class:`ProcessTable` keeps ``psutil.Process`` objects across ticks so that a process's
CPU share is measured over the interval; :class:`ProcessWalk` makes one walk per tick
that both on-demand collectors read, :class:`ProcessesCollector` (the top processes)
and :class:`UsersCollector` (CPU and memory summed per unix user). The walk's cost
grows with the host's process count, so it runs only while one of the two groups is
wanted (see ``on_demand`` in :mod:`.sampler`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from . import procfs
from .calls import INLINE


def uses_procfs(ps: Any) -> bool:
    """Read ``/proc`` directly: only for the real psutil, on Linux."""
    return ps is psutil and procfs.AVAILABLE


@dataclass(slots=True)
class ProcessInfo:
    pid: int
    name: str
    user: str | None
    cpu_percent: float | None
    rss_bytes: int

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

    __slots__ = ("cpu_ticks", "fd", "name", "primed", "process", "read_at", "start_ticks", "user")

    def __init__(self, process: Any, name: str, user: str | None) -> None:
        self.process = process
        self.name = name
        self.user = user
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

    def read(self, pids: Iterable[int]) -> list[ProcessInfo]:
        """Read each pid; gone or inaccessible processes are skipped. Processes not in
        ``pids`` are forgotten."""
        wanted = set(pids)
        with self._lock:
            try:
                tracked = self._tracked
                for pid in [pid for pid in tracked if pid not in wanted]:
                    self._forget(pid)
                if self._procfs:
                    return self._read_procfs(wanted)
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
        except (ps.NoSuchProcess, ps.ZombieProcess):
            self._tracked.pop(pid, None)
            return None
        except ps.AccessDenied:
            return None
        cpu_percent = round(cpu, 1) if tracked.primed else None
        tracked.primed = True
        return ProcessInfo(pid, tracked.name, tracked.user, cpu_percent, rss)

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
        return _Tracked(proc, name, user)

    def _read_procfs(self, pids: Iterable[int]) -> list[ProcessInfo]:
        """One ``pread`` of each held ``/proc/<pid>/stat`` (open + read for the others);
        psutil only for a process seen for the first time."""
        infos = []
        for pid in pids:
            info = self._read_stat(pid)
            if info is not None:
                infos.append(info)
        return infos

    def _read_stat(self, pid: int) -> ProcessInfo | None:
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
            cpu_ticks, rss_pages, start_ticks = procfs.parse_stat(data)
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
            pid, tracked.name, tracked.user, cpu_percent, rss_pages * procfs.PAGE_BYTES
        )


def top(infos: Sequence[ProcessInfo], key: Callable[[ProcessInfo], float], n: int) -> list:
    return [p.to_json() for p in sorted(infos, key=key, reverse=True)[:n]]


#: The guard key of the walk (see :class:`~.calls.CallGuard`): a walk that hangs (a
#: process stuck in the kernel can block a ``/proc`` read) is not started again until it
#: returns, whichever of the two groups asks.
WALK_KEY = "processes:walk"


class ProcessWalk:
    """One walk of the process table per tick, shared by the groups built from it.

    :meth:`pids` and :meth:`infos` remember their answer for the tick's ``now``: the
    second group to ask in a tick gets the same readings, without a second walk. Each
    reader names itself; when the last one :meth:`pause` s, the per-process readings are
    dropped (a CPU share measured over a pause would mislead), so the first walk after
    a pause has every ``cpu_percent`` null, as on start.
    """

    def __init__(self, ps: ModuleType | Any = psutil) -> None:
        self._ps = ps
        self._table = ProcessTable(ps)
        self._readers: set[str] = set()
        self._pids: tuple[float, list[int]] | None = None
        self._infos: tuple[float, list[ProcessInfo]] | None = None
        #: Walks made (not answers given): one per tick however many groups read it.
        self.walks = 0

    @property
    def tracked(self) -> int:
        """Processes whose readings are kept between ticks (0 while paused)."""
        return len(self._table._tracked)

    def pids(self, now: float) -> list[int]:
        """Every pid, read once per tick."""
        if self._pids is None or self._pids[0] != now:
            self._pids = (now, list(self._ps.pids()))
        return self._pids[1]

    def infos(self, reader: str, now: float, guard: Any = INLINE) -> list[ProcessInfo]:
        """Every readable process, read once per tick under ``guard`` (the sampler's
        :class:`~.calls.CallGuard`; a stuck walk raises :class:`~.calls.Stuck`)."""
        self._readers.add(reader)
        if self._infos is None or self._infos[0] != now:
            pids = self.pids(now)
            infos = guard.call(WALK_KEY, "process walk", self._walk, pids)
            self._infos = (now, infos)
        return self._infos[1]

    def _walk(self, pids: list[int]) -> list[ProcessInfo]:
        self.walks += 1
        return self._table.read(pids)

    @property
    def held_files(self) -> int:
        """Stat files the walk holds open between ticks (0 while paused)."""
        return self._table.held_files

    def pause(self, reader: str) -> None:
        """``reader`` stops reading; the last one to stop drops the readings (and closes
        the files held for them)."""
        self._readers.discard(reader)
        if not self._readers:
            old, self._table = self._table, ProcessTable(self._ps)
            old.close()
            self._pids = self._infos = None

    def close(self) -> None:
        """Close the files held between ticks (the sampler stops). Idempotent."""
        self._table.close()


class _WalkReader:
    """What a group built from the shared :class:`ProcessWalk` has in common: on demand,
    the sampler's guard, and pause/close handed to the walk under the group's name."""

    name: str
    on_demand = True

    def __init__(self, top_n: int, ps: ModuleType | Any, walk: ProcessWalk | None) -> None:
        self._top_n = top_n
        self.walk = walk if walk is not None else ProcessWalk(ps)
        self.guard: Any = INLINE

    def pause(self) -> None:
        self.walk.pause(self.name)

    def close(self) -> None:
        self.walk.close()


class ProcessesCollector(_WalkReader):
    """``processes``: how many processes exist, and the ``top_n`` by CPU and by RSS.

    With ``top_n`` 0 only the count is read (no per-process walk). It runs on demand
    (``on_demand``): only while someone wants the group (a subscriber, a REST call).
    Otherwise the sampler leaves the group out of the sample and calls :meth:`pause`.
    ``walk`` is shared with :class:`UsersCollector`: one walk per tick feeds both.
    """

    name = "processes"

    def __init__(
        self, top_n: int = 5, ps: ModuleType | Any = psutil, walk: ProcessWalk | None = None
    ) -> None:
        super().__init__(top_n, ps, walk)

    def collect(self, now: float) -> dict[str, Any]:
        pids = self.walk.pids(now)
        out: dict[str, Any] = {"count": len(pids), "top_cpu": [], "top_memory": []}
        if self._top_n > 0:
            infos = self.walk.infos(self.name, now, self.guard)
            known_cpu = [p for p in infos if p.cpu_percent is not None]
            out["top_cpu"] = top(known_cpu, lambda p: p.cpu_percent or 0.0, self._top_n)
            out["top_memory"] = top(infos, lambda p: p.rss_bytes, self._top_n)
        return out


#: The name of processes whose user could not be read.
UNKNOWN_USER = "(unknown)"


@dataclass
class _UserSum:
    processes: int = 0
    cpu_percent: float = 0.0
    cpu_known: bool = False
    rss_bytes: int = 0

    def add(self, info: ProcessInfo) -> None:
        self.processes += 1
        self.rss_bytes += info.rss_bytes
        if info.cpu_percent is not None:
            self.cpu_percent += info.cpu_percent
            self.cpu_known = True

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "cpu_percent": round(self.cpu_percent, 1) if self.cpu_known else None,
            "rss_bytes": self.rss_bytes,
        }


class UsersCollector(_WalkReader):
    """``users``: processes, CPU and resident memory summed per unix user (on The
    Littlest JupyterHub each user is ``jupyter-<name>``), from the same walk as
    ``processes``.

    The group is ``{"users": [{name, processes, cpu_percent, rss_bytes}], "count": N,
    "others": {users, processes, cpu_percent, rss_bytes} | null}``: the ``top_n``
    heaviest users, heaviest first — by resident memory, then CPU, then name (memory
    is what gets kernels killed, and it moves slowly, so the order and the set of rows
    hold still on an idle machine where CPU shares flicker) — ``count`` every user with
    a process, and ``others`` the sums of the users left out (null when none is).
    ``cpu_percent`` is in percent of one core, null on the first walk after a pause
    (a process's first reading has no CPU share; later new processes count as 0). RSS
    is summed, so pages shared between processes count more than once.
    """

    name = "users"

    def __init__(
        self, top_n: int = 10, ps: ModuleType | Any = psutil, walk: ProcessWalk | None = None
    ) -> None:
        super().__init__(top_n, ps, walk)

    def collect(self, now: float) -> dict[str, Any]:
        sums: dict[str, _UserSum] = {}
        for info in self.walk.infos(self.name, now, self.guard):
            name = info.user if info.user else UNKNOWN_USER
            user = sums.get(name)
            if user is None:
                user = sums[name] = _UserSum()
            user.add(info)
        ranked = sorted(
            sums.items(), key=lambda item: (-item[1].rss_bytes, -item[1].cpu_percent, item[0])
        )
        shown, rest = ranked[: self._top_n], ranked[self._top_n :]
        others: dict[str, Any] | None = None
        if rest:
            total = _UserSum()
            for _, user in rest:
                total.processes += user.processes
                total.rss_bytes += user.rss_bytes
                total.cpu_percent += user.cpu_percent
                total.cpu_known = total.cpu_known or user.cpu_known
            others = {"users": len(rest), **total.to_json()}
        return {
            "users": [{"name": name, **user.to_json()} for name, user in shown],
            "count": len(ranked),
            "others": others,
        }
