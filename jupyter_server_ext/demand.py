"""Which on-demand groups callers want, and for how long.

``processes`` and ``users`` come from a walk of every process, made only while someone
wants one of them (see ``on_demand`` in :mod:`.sampler`). A WebSocket subscriber wants
its groups for as long as it is connected (the broadcaster knows those). A caller that
is not connected, a REST poll or a Prometheus scrape, wants them each time it comes:
:class:`Demand` keeps what such a caller asked for wanted for a window after each call
that follows the caller's own period, so a caller that keeps coming back finds the
groups sampled, with their CPU shares known, whenever it comes:

- the window is ``FOLLOW_PERIODS`` times the caller's period (the longest of the gaps
  between its last ``PERIOD_GAPS + 1`` calls, so that one early call or two scrapers
  taking turns do not shorten it), and never less than ``WANT_INTERVALS`` sampling
  intervals;
- before its period is known (its first call), the window is ``WANT_INTERVALS``
  intervals, or twice the ``first_period`` the caller gives (a scrape: Prometheus's
  default ``scrape_interval``), whichever is longer;
- a gap longer than ``MAX_PERIOD_S`` is no period: the caller starts afresh. So nobody
  keeps the walk going for more than ``FOLLOW_PERIODS * MAX_PERIOD_S`` after their last
  call, and when nobody asks, nothing is walked.

A caller is remembered for ``MAX_PERIOD_S`` after its last call, at most
``MAX_CALLERS`` of them (those that called longest ago are forgotten first).
:meth:`Demand.want` runs on the server's event loop; :meth:`Demand.wanted` on the
sampler's thread reads a dict that is replaced, never changed, by ``want``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sysmon_nb.protocol import Status

#: The shortest window a call keeps its groups wanted for, in sampling intervals.
WANT_INTERVALS = 3
#: A caller's window after each call, in its own periods.
FOLLOW_PERIODS = 2.0
#: Gaps between calls remembered per caller; its period is the longest of them.
PERIOD_GAPS = 4
#: A gap longer than this (s) is not a period (Prometheus's own staleness is 5 minutes).
MAX_PERIOD_S = 600.0
#: Callers remembered at most.
MAX_CALLERS = 64
#: The caller of ``SysmonExtension.want`` that names none: the Prometheus exporter; its
#: period before its second scrape is taken to be Prometheus's default
#: ``scrape_interval`` (s).
SCRAPE_CALLER = "prometheus scrape"
SCRAPE_PERIOD_GUESS_S = 60.0
#: A REST answer waits up to one interval, the tick's deadline and this much more (s)
#: for a sample that holds every group it asked for; never longer than
#: ``MAX_ANSWER_WAIT_S``.
ANSWER_SLACK_S = 1.0
MAX_ANSWER_WAIT_S = 30.0


@dataclass
class _Caller:
    last: float
    until: float
    groups: frozenset[str]
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=PERIOD_GAPS))


class Demand:
    """The groups callers want until when; see the module docstring."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._callers: dict[str, _Caller] = {}
        self._until: dict[str, float] = {}

    def want(
        self, groups: Iterable[str], caller: str, *, first_period: float | None = None
    ) -> float:
        """``caller`` asks for ``groups`` now. Returns until when (monotonic s) they stay
        wanted for it."""
        now = self._clock()
        entry = self._callers.get(caller)
        if entry is None:
            entry = self._callers[caller] = _Caller(now, now, frozenset())
        else:
            gap = now - entry.last
            if gap > MAX_PERIOD_S:
                entry.gaps.clear()
            else:
                entry.gaps.append(gap)
        entry.last = now
        entry.groups = frozenset(groups)
        period = max(entry.gaps) if entry.gaps else (first_period or 0.0)
        entry.until = now + max(WANT_INTERVALS * self.interval, FOLLOW_PERIODS * period)
        self._recompute(now)
        return entry.until

    def _recompute(self, now: float) -> None:
        callers = self._callers
        # a caller is remembered until a gap would no longer be a period, its window or not
        for name in [name for name, entry in callers.items() if now - entry.last > MAX_PERIOD_S]:
            del callers[name]
        if len(callers) > MAX_CALLERS:
            by_last = sorted(callers, key=lambda name: callers[name].last)
            for name in by_last[: len(callers) - MAX_CALLERS]:
                del callers[name]
        until: dict[str, float] = {}
        for entry in callers.values():
            if entry.until <= now:
                continue
            for group in entry.groups:
                if entry.until > until.get(group, 0.0):
                    until[group] = entry.until
        self._until = until  # replaced whole: the sampler's thread reads it unlocked

    def wanted(self) -> set[str]:
        """The groups some caller wants right now (safe from any thread)."""
        now = self._clock()
        return {group for group, until in self._until.items() if until > now}

    @property
    def callers(self) -> int:
        """Callers remembered (as of the latest call)."""
        return len(self._callers)


def answer_wait(interval: float, timeout: float) -> float:
    """How long a REST answer waits for the next sample (s): one interval, the tick's
    deadline (``timeout``, at most the interval) and ``ANSWER_SLACK_S``."""
    return min(MAX_ANSWER_WAIT_S, interval + min(timeout, interval) + ANSWER_SLACK_S)


def absent(sample: Status, groups: Iterable[str]) -> list[str]:
    """The groups of ``groups`` a sample lacks, and does not say failed: not sampled, or
    late with no reading yet (the first walk after a pause may miss its tick's deadline;
    its reading is carried by a later sample)."""
    return [
        g
        for g in groups
        if g not in sample.groups and (g not in sample.errors or g in sample.stale)
    ]


async def sample_with(
    latest: Status,
    groups: Sequence[str],
    next_sample: Callable[[], Awaitable[Status]],
    bound: float,
) -> tuple[Status, list[str]]:
    """The first sample from ``latest`` on (``next_sample()`` awaits each next one) that
    holds every group of ``groups``, waiting ``bound`` seconds at most; and the groups
    the sample returned still lacks."""
    missing = absent(latest, groups)
    if not missing:
        return latest, missing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while missing and (left := deadline - loop.time()) > 0:
        try:
            latest = await asyncio.wait_for(next_sample(), left)
        except asyncio.TimeoutError:
            break
        missing = absent(latest, groups)
    return latest, missing


def why_absent(group: str, bound: float | None) -> str:
    """What a REST answer says of a group it lacks; ``bound`` None: not waited for,
    because the sampler is stuck."""
    why = "the sampler is stuck" if bound is None else (
        f"no sample had it within {bound:g} s of this request"
    )  # fmt: skip
    return f"not in the newest sample ({group!r} is read only while someone asks for it); {why}"
