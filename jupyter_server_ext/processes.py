"""The process walk, once per tick, for the ``processes`` and ``users`` groups.

:class:`ProcessWalk` makes one walk per tick of the process table
(:class:`~.proctable.ProcessTable`, which keeps what it read of each process across
ticks) that both on-demand collectors read, :class:`ProcessesCollector` (the top
processes) and :class:`UsersCollector` (CPU and memory summed per unix user, and each
user's CPU seconds as a counter, see :mod:`.cputime`). The walk's cost grows with the
host's process count, so it runs only while one of the two groups is wanted (see
``on_demand`` in :mod:`.sampler`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from .calls import INLINE
from .cputime import CpuCounters, readings
from .proctable import (  # re-exported: the table's home was this module
    MAX_HELD_FILES,
    ProcessInfo,
    ProcessTable,
    held_files_limit,
    uses_procfs,
)

__all__ = [
    "MAX_HELD_FILES",
    "ProcessInfo",
    "ProcessTable",
    "ProcessWalk",
    "ProcessesCollector",
    "UsersCollector",
    "held_files_limit",
    "uses_procfs",
]


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
        """Every readable process, zombies included (for their final CPU times), read
        once per tick under ``guard`` (the sampler's :class:`~.calls.CallGuard`; a stuck
        walk raises :class:`~.calls.Stuck`)."""
        self._readers.add(reader)
        if self._infos is None or self._infos[0] != now:
            pids = self.pids(now)
            infos = guard.call(WALK_KEY, "process walk", self._walk, pids)
            self._infos = (now, infos)
        return self._infos[1]

    def _walk(self, pids: list[int]) -> list[ProcessInfo]:
        self.walks += 1
        return self._table.read(pids, zombies=True)

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
            infos = [p for p in self.walk.infos(self.name, now, self.guard) if not p.zombie]
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

    The group is ``{"users": [{name, processes, cpu_percent, cpu_seconds_total,
    rss_bytes}], "count": N, "others": {users, processes, cpu_percent, cpu_seconds_total,
    rss_bytes} | null}``: the ``top_n``
    heaviest users, heaviest first — by resident memory, then CPU, then name (memory
    is what gets kernels killed, and it moves slowly, so the order and the set of rows
    hold still on an idle machine where CPU shares flicker) — ``count`` every user with
    a process, and ``others`` the sums of the users left out (null when none is).
    ``cpu_percent`` is in percent of one core, null on the first walk after a pause
    (a process's first reading has no CPU share; later new processes count as 0). RSS
    is summed, so pages shared between processes count more than once. Zombies count in
    CPU time only.

    ``cpu_seconds_total`` is a counter (:class:`~.cputime.CpuCounter`): the CPU time of
    the user's processes, from the first walk on, never decreasing while the server
    runs, through pauses too (the CPU used during one is added when the walk resumes);
    ``others``'s is what the users not listed used while they were not listed.
    """

    name = "users"

    def __init__(
        self, top_n: int = 10, ps: ModuleType | Any = psutil, walk: ProcessWalk | None = None
    ) -> None:
        super().__init__(top_n, ps, walk)
        self._cpu = CpuCounters()
        self._others_cpu = 0.0

    def collect(self, now: float) -> dict[str, Any]:
        sums: dict[str, _UserSum] = {}
        processes: dict[str, list[ProcessInfo]] = {}
        for info in self.walk.infos(self.name, now, self.guard):
            name = info.user if info.user else UNKNOWN_USER
            processes.setdefault(name, []).append(info)
            if info.zombie:
                continue
            user = sums.get(name)
            if user is None:
                user = sums[name] = _UserSum()
            user.add(info)
        grown = self._cpu.update({name: readings(p) for name, p in processes.items()})
        ranked = sorted(
            sums.items(), key=lambda item: (-item[1].rss_bytes, -item[1].cpu_percent, item[0])
        )
        shown, rest = ranked[: self._top_n], ranked[self._top_n :]
        listed = {name for name, _ in shown}
        self._others_cpu += sum(g for name, g in grown.items() if name not in listed)
        others: dict[str, Any] | None = None
        if rest:
            total = _UserSum()
            for _, user in rest:
                total.processes += user.processes
                total.rss_bytes += user.rss_bytes
                total.cpu_percent += user.cpu_percent
                total.cpu_known = total.cpu_known or user.cpu_known
            others = {
                "users": len(rest),
                **total.to_json(),
                "cpu_seconds_total": round(self._others_cpu, 2),
            }
        seconds = self._cpu.seconds
        return {
            "users": [
                {"name": name, **user.to_json(), "cpu_seconds_total": _round2(seconds(name))}
                for name, user in shown
            ],
            "count": len(ranked),
            "others": others,
        }


def _round2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
