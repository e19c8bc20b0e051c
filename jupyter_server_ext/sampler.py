"""The sampler: one worker thread that runs every collector each ``interval`` seconds.

A collector is any object with a ``name`` (its metric group) and a
``collect(now) -> dict`` method, where ``now`` is a monotonic timestamp for rates. The
collectors themselves live in :mod:`.collectors`, :mod:`.cgroup` and :mod:`.gpu`; this
module holds the loop and the helpers they share (:class:`Rates`).

Failures are contained per collector: one that raises is reported in the sample's
``errors`` and the others still publish. The loop never dies, never runs on the
server's event loop, and skips ticks it is too slow for instead of piling them up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sysmon_nb.protocol import Status

from .errors import CollectorError

log = logging.getLogger("sysmon_nb.sampler")

#: How often the same collector failure is logged again while it persists (s).
LOG_REPEAT_INTERVAL = 300.0


class Collector(Protocol):
    """What the sampler needs of a collector."""

    name: str

    def collect(self, now: float) -> dict[str, Any]:
        """Read the source and return the group's fields. ``now`` is monotonic seconds."""
        ...


class Rates:
    """Per-second rates of counters that only grow, over a monotonic clock.

    ``update(now, counters)`` returns, per key, ``(value - previous) / elapsed``, or
    ``None`` where the rate cannot be known: the first reading of a key, a key that
    went backwards (a counter reset or wrap), or no time elapsed.
    """

    def __init__(self) -> None:
        self._time: float | None = None
        self._values: dict[str, float] = {}

    def update(self, now: float, counters: Mapping[str, float]) -> dict[str, float | None]:
        prev_time, prev = self._time, self._values
        self._time, self._values = now, dict(counters)
        elapsed = None if prev_time is None else now - prev_time
        rates: dict[str, float | None] = {}
        for key, value in counters.items():
            before = prev.get(key)
            if elapsed is None or elapsed <= 0 or before is None or value < before:
                rates[key] = None
            else:
                rates[key] = (value - before) / elapsed
        return rates


def sum_known(values: Iterable[float | None]) -> float | None:
    """Sum the known values; ``None`` if none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class _FailureLog:
    """Logs a collector's failure once, then again only every LOG_REPEAT_INTERVAL."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[str, tuple[str, float, int]] = {}

    def failed(self, group: str, message: str, exc: BaseException) -> None:
        now = self._clock()
        last = self._last.get(group)
        if last is not None and last[0] == message and now - last[1] < LOG_REPEAT_INTERVAL:
            self._last[group] = (last[0], last[1], last[2] + 1)
            return
        repeats = f" (failed {last[2]} more times since last logged)" if last and last[2] else ""
        internal = not isinstance(exc, CollectorError)
        log.warning("sysmon collector %r failed: %s%s", group, message, repeats, exc_info=internal)
        self._last[group] = (message, now, 0)

    def recovered(self, group: str) -> None:
        if self._last.pop(group, None) is not None:
            log.info("sysmon collector %r recovered", group)


def describe_failure(exc: BaseException) -> str:
    """What administrators are told about a failed collector: no traceback, no internals
    beyond the error's own message for expected failures (OS and NVML errors)."""
    if isinstance(exc, CollectorError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}" + (
            f" ({exc.filename})" if exc.filename else ""
        )
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class Sampler:
    """Runs ``collectors`` every ``interval`` seconds on a worker thread.

    Each finished :class:`Status` is handed to ``on_sample`` from the worker thread; the
    caller moves it to its own event loop. ``start`` and ``stop`` are idempotent.
    """

    def __init__(
        self,
        collectors: Sequence[Collector],
        interval: float,
        on_sample: Callable[[Status], None],
        host: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.collectors = list(collectors)
        self.interval = interval
        self.host = host
        self.skipped_ticks = 0
        self._on_sample = on_sample
        self._clock = clock
        self._wall_clock = wall_clock
        self._seq = 0
        self._failures = _FailureLog(clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def sample_once(self) -> Status:
        """Run every collector once and build the sample. Never raises for a collector."""
        now = self._clock()
        groups: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for collector in self.collectors:
            try:
                groups[collector.name] = collector.collect(now)
            except Exception as exc:
                message = describe_failure(exc)
                errors[collector.name] = message
                self._failures.failed(collector.name, message, exc)
            else:
                self._failures.recovered(collector.name)
        self._seq += 1
        return Status(
            seq=self._seq,
            time=self._wall_clock(),
            host=self.host,
            interval=self.interval,
            groups=groups,
            errors=errors,
            skipped_ticks=self.skipped_ticks,
        )

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sysmon-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop and wait up to ``timeout`` seconds for it. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._closed:
            return
        self._closed = True
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.debug("closing collector %r failed", collector.name, exc_info=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_tick = self._clock()
        while not self._stop.is_set():
            try:
                status = self.sample_once()
                self._on_sample(status)
            except Exception:  # the loop must survive a failing consumer too
                log.exception("sysmon sampler tick failed")
            next_tick += self.interval
            now = self._clock()
            if now >= next_tick:
                # Too slow for the interval: drop the ticks we missed, never queue them.
                missed = int((now - next_tick) // self.interval) + 1
                self.skipped_ticks += missed
                next_tick += missed * self.interval
            self._stop.wait(next_tick - now)
