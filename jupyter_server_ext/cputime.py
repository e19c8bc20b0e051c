"""CPU seconds of a changing set of processes, as a counter that never goes down.

A kernel's process tree and a unix user's processes change under the sampler: children
start and exit between two ticks. The sum of the CPU times of the processes alive at a
tick falls each time one exits, which Prometheus would read as a counter reset.
:class:`CpuCounter` accumulates instead, tick by tick, from each process's own CPU time
(``utime + stime``) and the CPU time of the children it reaped (``cutime + cstime``: the
kernel adds a child's whole CPU time, its own reaped children's included, to its parent's
when the parent waits for it).

What one tick adds, comparing the processes read now with those read at the last tick
(a process is its pid and start time, so a reused pid is another process):

- a process read both times: the growth of its own CPU time and of its reaped time;
- a process read for the first time: both in full (it started since the last tick, or
  the counter did: its first value is the CPU time of the processes alive then);
- a process read last time and gone now: nothing of its own. If a process of the set
  reaped it, the reaper's reaped time grew by its whole CPU time, of which the part
  already counted (its last reading) is taken back, so that only its last moments are
  added. A zombie (exited, not yet reaped) is still read, with its final CPU times.

So a child that starts and exits between two ticks counts, through its parent. What is
missed, for the processes that leave the set without being reaped by one of its members
(a daemon that double-forks away from a kernel, a process whose parent belongs to
another user or runs outside the kernel's tree): their CPU time after their last
reading; and, in the tick they go and the next one, as much reaped time of the other
members as they had used (the take-back is bounded by the reaped growth of those two
ticks, never carried further). A process that could not be read (another user's, under
``hidepid``) is not counted.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

from .proctable import ProcessInfo

#: (own CPU seconds, reaped children's CPU seconds) of one process.
Reading = tuple[float, float]


def readings(infos: Iterable[ProcessInfo]) -> dict[Hashable, Reading]:
    """Each process's reading, keyed by (pid, start): a reused pid is another process."""
    return {(p.pid, p.start): (p.cpu_seconds, p.reaped_cpu_seconds) for p in infos}


class CpuCounter:
    """CPU seconds of a set of processes, never decreasing (see the module)."""

    __slots__ = ("_last", "_owed", "seconds")

    def __init__(self) -> None:
        #: The counter's value: seconds of CPU time.
        self.seconds = 0.0
        self._last: dict[Hashable, Reading] | None = None
        self._owed = 0.0  # counted CPU of processes gone at the last tick, not taken back

    def update(self, now: Mapping[Hashable, Reading]) -> float:
        """Add what the processes read now used since the last update; the new value."""
        last, self._last = self._last, dict(now)
        if last is None:
            self.seconds = sum(own + reaped for own, reaped in now.values())
            return self.seconds
        own_growth = reaped_growth = 0.0
        for key, (own, reaped) in now.items():
            before = last.get(key)
            if before is None:
                own_growth += own
                reaped_growth += reaped
            else:
                own_growth += max(0.0, own - before[0])
                reaped_growth += max(0.0, reaped - before[1])
        gone = sum(own + reaped for key, (own, reaped) in last.items() if key not in now)
        owed_before, self._owed = self._owed, 0.0
        taken = min(reaped_growth, owed_before + gone)
        # what the last tick's departed still owe is taken first; the rest of theirs
        # expires, the rest of this tick's is carried to the next tick only
        self._owed = gone - max(0.0, taken - owed_before)
        self.seconds += own_growth + reaped_growth - taken
        return self.seconds


class CpuCounters:
    """One :class:`CpuCounter` per name (a user, a kernel id). A name's counter lives
    on while its processes are gone (a user may start another one), at most ``keep``
    of them: beyond that the names without processes are forgotten, oldest first."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._counters: dict[str, CpuCounter] = {}

    def __len__(self) -> int:
        return len(self._counters)

    def update(self, by_name: Mapping[str, Mapping[Hashable, Reading]]) -> dict[str, float]:
        """Update every known name (those absent from ``by_name`` have no process now);
        each name's increase in this update, by name."""
        counters = self._counters
        grown: dict[str, float] = {}
        for name in {*counters, *by_name}:
            counter = counters.get(name)
            if counter is None:
                counter = counters[name] = CpuCounter()
            before = counter.seconds
            grown[name] = counter.update(by_name.get(name, {})) - before
        if len(counters) > self.keep:
            for name in [n for n in counters if n not in by_name][: len(counters) - self.keep]:
                del counters[name]
        return grown

    def forget_except(self, names: Iterable[str]) -> None:
        """Drop the counters of every name not in ``names``."""
        keep = set(names)
        for name in [n for n in self._counters if n not in keep]:
            del self._counters[name]

    def seconds(self, name: str) -> float | None:
        """The counter of ``name``; ``None`` if it has none."""
        counter = self._counters.get(name)
        return None if counter is None else counter.seconds
