"""The sampler: collectors run every ``interval`` seconds, each within a deadline.

A collector is any object with a ``name`` (its metric group) and a
``collect(now) -> dict`` method, where ``now`` is a monotonic timestamp for rates. The
collectors themselves live in :mod:`.collectors`, :mod:`.cgroup` and :mod:`.gpu`; this
module holds the loop, the deadlines and the helpers they share (:class:`Rates`); the
guard of calls that may hang and the runner threads live in :mod:`.calls`.

Two threads of ours do the work, neither on the server's event loop:

- the *scheduler* (``sysmon-sampler``) keeps the tick schedule and publishes samples. It
  never runs collector code, so nothing a collector does can stretch a tick: a tick
  whose whole slot has passed is skipped and counted in ``skipped_ticks``;
- the *runner* (``sysmon-collect-N``) runs one tick's collectors in turn, each call
  registered with the :class:`~.calls.CallGuard`. A tick costs one hand-over to the runner and
  one back (about 20 us), where a worker per collector would cost one per collector.

When the runner misses a tick's deadline (``collector_timeout``, at most the interval),
the scheduler gives up on the call it is in: that call is *stuck*, its thread is left to
it (a daemon thread: shutdown never waits on it), and a new runner finishes the tick
without it. A stuck call is remembered by its key (a collector's name, or
``disk:<mount>`` for a filesystem call on one mount): no call with that key is started
again until it returns, so whatever hangs, the sampler holds at most one thread per
stuck thing. The group of a collector that missed the deadline carries its last good
reading and is listed in ``stale``; ``errors`` says why in words.

Failures are contained per collector: one that raises is reported in the sample's
``errors`` and the others still publish. Logs go to the logger given (the extension's
``self.log``): one line when a collector starts failing, gets stuck or is late, one
when it recovers or returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sysmon_nb.protocol import Status

from .calls import (
    Call,
    CallGuard,
    Runner,
    Stuck,
    StuckCall,
    Tick,
    default_log,
)
from .errors import CollectorError

#: How often the same collector failure is logged again while it persists (s).
LOG_REPEAT_INTERVAL = 300.0
#: Longest default deadline for one tick's collectors (s); see ``collector_timeout``.
MAX_DEFAULT_TIMEOUT = 2.0
#: After a stuck call is given up on, the rest of the tick gets this share of the deadline.
RESUME_SHARE = 0.25
#: Most stuck calls given up on in one tick, a bound on the scheduler's loop.
MAX_RESUMES = 64


class Collector(Protocol):
    """What the sampler needs of a collector.

    Optional parts, looked up with ``getattr``: ``on_demand = True`` (run only while
    someone wants the group: see ``wanted`` in :class:`Sampler`), ``pause()`` (called
    when an on-demand group stops being wanted: drop what was kept), ``guard`` (set to
    the sampler's :class:`CallGuard` for calls that may hang), ``close()``.
    """

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
    """Logs a collector's failure once, a reminder every LOG_REPEAT_INTERVAL with how
    often it failed since, and its recovery."""

    def __init__(self, clock: Callable[[], float], log: logging.Logger) -> None:
        self._clock = clock
        self._log = log
        # group -> (message, first failed at, last logged at, failures since logged)
        self._last: dict[str, tuple[str, float, float, int]] = {}

    def failed(self, group: str, message: str, exc: BaseException) -> None:
        now = self._clock()
        last = self._last.get(group)
        internal = not isinstance(exc, (CollectorError, OSError))
        if last is None:
            self._log.warning("sysmon: collector %r failed: %s", group, message, exc_info=internal)
            self._last[group] = (message, now, now, 0)
            return
        old, since, logged, count = last
        if old != message:
            self._log.warning(
                "sysmon: collector %r failed: %s (before: %s, %d more times since logged)",
                group,
                message,
                old,
                count,
                exc_info=internal,
            )
            self._last[group] = (message, since, now, 0)
        elif now - logged >= LOG_REPEAT_INTERVAL:
            self._log.warning(
                "sysmon: collector %r still failing: %s (failed %d more times since %.0f s ago)",
                group,
                message,
                count + 1,
                now - logged,
            )
            self._last[group] = (message, since, now, 0)
        else:
            self._last[group] = (old, since, logged, count + 1)

    def recovered(self, group: str) -> None:
        last = self._last.pop(group, None)
        if last is not None:
            self._log.info(
                "sysmon: collector %r recovered after %.0f s of failures", group,
                self._clock() - last[1],
            )  # fmt: skip


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
    return (
        f"unexpected error ({name}: {text}); see the server log"
        if text
        else (f"unexpected error ({name}); see the server log")
    )


def default_timeout(interval: float) -> float:
    """The deadline a tick's collectors get by default: the interval, at most 2 s."""
    return min(interval, MAX_DEFAULT_TIMEOUT)


class Sampler:
    """Runs ``collectors`` every ``interval`` seconds, each tick within ``timeout``.

    Each finished :class:`Status` is handed to ``on_sample`` from the scheduler thread;
    the caller moves it to its own event loop. ``wanted``, if given, is asked once per
    tick which groups someone wants: collectors with ``on_demand = True`` run only
    while their group is among them (their group is absent from the sample otherwise).
    ``on_stuck``, if given, is told of a call that missed the deadline (a
    :class:`StuckCall`) on the scheduler thread, each time its log line is written:
    once when the call is given up on, again at most every ``LOG_REPEAT_INTERVAL`` for
    a call that is late tick after tick. ``timeout`` (default :func:`default_timeout`)
    is capped at the interval. ``start`` and ``stop`` are idempotent.
    """

    def __init__(
        self,
        collectors: Sequence[Collector],
        interval: float,
        on_sample: Callable[[Status], None],
        host: str,
        *,
        timeout: float | None = None,
        wanted: Callable[[], Collection[str] | None] | None = None,
        on_stuck: Callable[[StuckCall], None] | None = None,
        log: logging.Logger = default_log,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.collectors = list(collectors)
        self.interval = interval
        self.timeout = min(interval, timeout if timeout is not None else default_timeout(interval))
        self.host = host
        self.skipped_ticks = 0
        self.log = log
        self.guard = CallGuard(clock, log)
        for collector in self.collectors:
            if hasattr(collector, "guard"):
                collector.guard = self.guard
        self._on_sample = on_sample
        self._wanted = wanted
        self._on_stuck = on_stuck
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_at = clock()
        self._seq = 0
        self._failures = _FailureLog(clock, log)
        self._last_good: dict[str, tuple[dict[str, Any], float]] = {}
        self._paused: set[str] = set()
        self._late_logged: dict[str, tuple[float, int]] = {}
        # readings of calls that returned after their tick was given up on (set by the
        # thread that made the call, taken by the scheduler)
        self._late_results: dict[str, tuple[dict[str, Any], float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runner: Runner | None = None
        self._runners_started = 0
        self._threads: list[threading.Thread] = []
        self._tick: Tick | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._tick_lock = threading.Lock()  # one tick at a time (sample_once vs the loop)

    # -- the tick ------------------------------------------------------------------------

    def sample_once(self) -> Status:
        """Run every collector once (each within the deadline) and build the sample.
        Never raises for a collector."""
        with self._tick_lock:
            return self._sample()

    def _sample(self) -> Status:
        now = self._clock()
        wall = self._wall_clock()
        wanted = self._wanted_now()
        run: list[Collector] = []
        for collector in self.collectors:
            if getattr(collector, "on_demand", False) and (
                wanted is not None and collector.name not in wanted
            ):
                if collector.name not in self._paused:
                    self._paused.add(collector.name)
                    pause = getattr(collector, "pause", None)
                    if pause is not None:
                        pause()
                continue
            self._paused.discard(collector.name)
            run.append(collector)
        tick = self._tick = Tick(now, run)
        self._wait(tick, now + self.timeout)
        with tick.lock:
            tick.index = len(run)  # closed: a late runner writes nothing more
            groups, errors = dict(tick.groups), dict(tick.errors)
            late = dict(tick.late)
        self._tick = None
        for name in list(self._late_results):
            reading = self._late_results.pop(name)
            if reading[1] > self._last_good.get(name, (None, -1.0))[1]:
                self._last_good[name] = reading
        stale: dict[str, float] = {}
        for collector in run:
            name = collector.name
            if name in groups:
                self._last_good[name] = (groups[name], now)
                continue
            if name in errors and name not in late:
                continue  # it answered, with an error
            good = self._last_good.get(name)
            stale[name] = round(now - (good[1] if good else self._started_at), 1)
            if good is not None:
                groups[name] = good[0]
            running_s = late.get(name)
            why = f"did not answer within {self.timeout:g} s"
            if running_s is not None and running_s >= max(1.0, 2 * self.timeout):
                why += f"; stuck for {running_s:.0f} s"
            errors[name] = why
        self._seq += 1
        return Status(
            seq=self._seq,
            time=wall,
            host=self.host,
            interval=self.interval,
            groups=groups,
            errors=errors,
            stale=stale,
            skipped_ticks=self.skipped_ticks,
        )

    def _wanted_now(self) -> Collection[str] | None:
        if self._wanted is None:
            return None
        try:
            return self._wanted()
        except Exception:
            self.log.exception("sysmon: asking which groups are wanted failed; sampling all")
            return None

    def _wait(self, tick: Tick, deadline: float) -> None:
        """Hand ``tick`` to the runner and wait until it is done or its deadline passes;
        past the deadline, give up on the call the runner is in and let a new runner
        finish the tick without it."""
        runner = self._runner_for(tick)
        for _ in range(MAX_RESUMES):
            if tick.done.wait(max(0.0, deadline - self._clock())) or self._stop.is_set():
                return
            call = self.guard.abandon(runner.thread.ident or 0)
            if call is not None:
                runner.retired = True
                self._runner = None
                self._log_late(call)
                runner = self._runner_for(tick)
            deadline = self._clock() + RESUME_SHARE * self.timeout
        self.log.warning("sysmon: tick given up after %d stuck calls", MAX_RESUMES)

    def _log_late(self, call: Call) -> None:
        """One line when a call misses its deadline; for a call that is late again and
        again (a slow collector), a reminder every LOG_REPEAT_INTERVAL with the count."""
        now = self._clock()
        logged_at, count = self._late_logged.get(call.key, (None, 0))
        if logged_at is not None and now - logged_at < LOG_REPEAT_INTERVAL:
            self._late_logged[call.key] = (logged_at, count + 1)
            return
        again = f" (late {count} more times since last logged)" if count else ""
        self.log.warning(
            "sysmon: %s did not answer within %g s; it is left running and reported "
            "stale until it returns%s",
            call.what,
            self.timeout,
            again,
        )
        call.logged = True
        self._late_logged[call.key] = (now, 0)
        if self._on_stuck is not None:
            group, _, detail = call.key.partition(":")
            report = StuckCall(
                key=call.key,
                group=group,
                mount=detail if group == "disk" and detail else None,
                message=f"{call.what} did not answer within {self.timeout:g} s",
                time=self._wall_clock(),
            )
            try:
                self._on_stuck(report)
            except Exception:
                self.log.exception("sysmon: reporting a stuck call failed")

    def _runner_for(self, tick: Tick) -> Runner:
        runner = self._runner
        if runner is None or runner.busy or not runner.thread.is_alive():
            if runner is not None:
                runner.retired = True  # busy with a tick given up on: let it finish alone
            self._runners_started += 1
            runner = self._runner = Runner(
                self._runners_started, self._run_tick, self._runner_exits, self._stop
            )
            self._threads.append(runner.thread)
        runner.give(tick)
        return runner

    def _run_tick(self, tick: Tick, runner: Runner) -> None:
        """On a runner: run the tick's collectors from ``tick.index`` on."""
        guard = self.guard
        while True:
            with tick.lock:
                if tick.index >= len(tick.collectors) or runner.retired:
                    return
                collector = tick.collectors[tick.index]
            name = collector.name

            def late(result: Any, name: str = name, at: float = tick.now) -> None:
                self._late_results[name] = (result, at)

            try:
                result = guard.call(
                    name, f"collector {name!r}", collector.collect, tick.now, on_late=late
                )
            except Stuck as stuck:
                with tick.lock:
                    tick.late[name] = stuck.running_s
            except Exception as exc:
                message = describe_failure(exc)
                with tick.lock:
                    tick.errors[name] = message
                self._failures.failed(name, message, exc)
            else:
                with tick.lock:
                    if tick.index < len(tick.collectors):
                        tick.groups[name] = result
                self._failures.recovered(name)
            with tick.lock:
                if tick.index < len(tick.collectors) and tick.collectors[tick.index] is collector:
                    tick.index += 1

    def _runner_exits(self, runner: Runner) -> None:
        """On a runner told to exit: close the collectors if the sampler is stopping and
        none of them is still in a call (a stuck call keeps its collector open)."""
        if self._stop.is_set():
            self._close_collectors()

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sysmon-sampler", daemon=True)
        self._thread.start()
        self._threads.append(self._thread)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop sampling and close the collectors. Waits at most about ``timeout``
        seconds, never for a stuck call (whose thread is a daemon). Idempotent."""
        self._stop.set()
        tick = self._tick
        if tick is not None:
            tick.done.set()
        deadline = self._clock() + timeout
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - self._clock()))
        runner, self._runner = self._runner, None
        if runner is None:
            self._close_collectors()
            return
        if not runner.busy:
            runner.give(None)  # it closes the collectors, then exits
        # a busy runner closes them after its tick; a stuck one is not waited for
        runner.thread.join(max(0.0, deadline - self._clock()))

    def _close_collectors(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if close is None:
                continue
            if self.guard.busy(collector.name):
                self.log.debug("sysmon: collector %r is in a call; not closed", collector.name)
                continue
            try:
                close()
            except Exception:
                self.log.debug("sysmon: closing collector %r failed", collector.name, exc_info=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def threads(self) -> list[threading.Thread]:
        """This sampler's live threads (scheduler, runner, threads in stuck calls)."""
        self._threads = [t for t in self._threads if t.is_alive()]
        return list(self._threads)

    def _run(self) -> None:
        next_tick = self._clock()
        while not self._stop.is_set():
            try:
                with self._tick_lock:
                    status = self._sample()
                if self._stop.is_set():
                    return
                self._on_sample(status)
            except Exception:  # the loop must survive a failing consumer too
                self.log.exception("sysmon: sampler tick failed")
            next_tick += self.interval
            now = self._clock()
            if now >= next_tick + self.interval:
                # A whole slot passed without its tick (the machine stalled): skip the
                # ticks whose slots are over, never queue them. A tick that is only late
                # within its slot runs at once.
                missed = int((now - next_tick) // self.interval)
                self.skipped_ticks += missed
                next_tick += missed * self.interval
            self._stop.wait(max(0.0, next_tick - now))
