"""Calls that may hang: the guard that knows them, and the runner threads that make them.

A tick's collectors run on a *runner* thread (:class:`Runner`), each call registered
with the :class:`CallGuard` under a key (a collector's name, or ``disk:<mount>`` for a
filesystem call on one mount). When the scheduler in :mod:`.sampler` gives up on a call
that missed its deadline, the guard marks it abandoned: the runner is retired and left
to it, and no call with that key starts again until it returns (:class:`Stuck`). When it
does return, its result is handed to ``on_late``, its return is logged, and the thread
unwinds (:class:`_Abandoned`).

:data:`INLINE` is the guard of a collector used outside a sampler: no deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CollectorError

if TYPE_CHECKING:
    from .sampler import Collector

#: The logger used when none is given (tests; the extension passes its own ``self.log``).
default_log = logging.getLogger("sysmon_nb.sampler")


class Stuck(CollectorError):
    """A call was not started because the previous call with its key has not returned."""

    def __init__(self, what: str, running_s: float) -> None:
        super().__init__(f"{what} has not returned for {running_s:.0f} s")
        self.what = what
        self.running_s = running_s


@dataclass(frozen=True)
class StuckCall:
    """A call that missed its tick's deadline, as told to ``Sampler(on_stuck=...)``."""

    key: str  #: the guard key: a group's name, or ``<group>:<detail>``
    group: str  #: the metric group the call was made for
    mount: str | None  #: the mount point, for a filesystem call of the ``disk`` group
    message: str  #: what happened, in words (as logged)
    time: float  #: unix s when it was given up on


class _Abandoned(BaseException):
    """Raised in a runner whose call returned after it was given up on: it unwinds the
    thread (a ``BaseException``, so that no collector's ``except Exception`` keeps it)."""


class Call:
    __slots__ = ("abandoned", "key", "logged", "started", "thread", "what")

    def __init__(self, key: str, what: str, started: float, thread: int) -> None:
        self.key = key
        self.what = what
        self.started = started
        self.thread = thread
        self.abandoned = False
        self.logged = False  # its "did not answer" line was logged: log its return too


class CallGuard:
    """Knows every guarded call in progress, which thread makes it, and which are stuck.

    ``call(key, what, fn, *args)`` runs ``fn`` on the calling thread. At most one call
    per key is in progress: while one is (a stuck filesystem call, say), another with the
    same key raises :class:`Stuck` at once instead of starting. ``abandon(thread)`` gives
    up on a thread's innermost call: when that call returns, its result is dropped, the
    return is logged, and the thread unwinds.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, log: logging.Logger = default_log
    ) -> None:
        self._clock = clock
        self.log = log
        self._lock = threading.Lock()
        self._active: dict[str, Call] = {}
        self._stacks: dict[int, list[Call]] = {}

    def call(
        self,
        key: str,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        on_late: Callable[[Any], None] | None = None,
    ) -> Any:
        """``fn(*args)``, registered under ``key``. If the call is given up on and later
        returns a result, ``on_late(result)`` gets it (a late reading is still a reading)."""
        thread = threading.get_ident()
        with self._lock:
            running = self._active.get(key)
            if running is not None:
                raise Stuck(what, self._clock() - running.started)
            call = self._active[key] = Call(key, what, self._clock(), thread)
            stack = self._stacks.get(thread)
            if stack is None:
                stack = self._stacks[thread] = []
            stack.append(call)
        result: Any = None
        try:
            result = fn(*args)
            return result
        finally:
            with self._lock:
                if self._active.get(key) is call:
                    del self._active[key]
                stack.pop()
                if not stack:
                    del self._stacks[thread]
            if call.abandoned:
                if on_late is not None and result is not None:
                    on_late(result)
                if call.logged:
                    self.log.info(
                        "sysmon: %s returned after %.1f s; it is read again from the next tick",
                        what,
                        self._clock() - call.started,
                    )
                raise _Abandoned  # the thread is no longer a runner: unwind it

    def abandon(self, thread: int) -> Call | None:
        """Give up on ``thread``'s innermost call (None if it is between calls)."""
        with self._lock:
            stack = self._stacks.get(thread)
            if not stack:
                return None
            call = stack[-1]
            call.abandoned = True
            # The calls around it (the disk collector around one mount's call) are over
            # for us: the thread will unwind through them without touching their state,
            # so a new runner may make them again.
            for outer in stack[:-1]:
                if self._active.get(outer.key) is outer:
                    del self._active[outer.key]
            return call

    def running_s(self, key: str) -> float | None:
        """How long the call with ``key`` has been running, or None if none is."""
        call = self._active.get(key)
        return None if call is None else self._clock() - call.started

    def busy(self, prefix: str) -> bool:
        """Whether a call whose key starts with ``prefix`` is in progress."""
        return any(k == prefix or k.startswith(prefix + ":") for k in list(self._active))

    @property
    def threads(self) -> int:
        """Threads inside a guarded call right now."""
        return len(self._stacks)


class InlineGuard:
    """The guard of a collector used outside a sampler (tests, one-off reads): calls
    ``fn`` directly, with no deadline."""

    def call(
        self,
        key: str,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        on_late: Callable[[Any], None] | None = None,
    ) -> Any:
        return fn(*args)


INLINE = InlineGuard()


class Tick:
    """One tick's work, shared by the scheduler and the runner(s) that run it."""

    __slots__ = ("collectors", "done", "errors", "groups", "index", "late", "lock", "now")

    def __init__(self, now: float, collectors: list[Collector]) -> None:
        self.now = now
        self.collectors = collectors
        self.index = 0
        self.groups: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.late: dict[str, float] = {}  # stuck groups: how long their call has run
        self.done = threading.Event()
        self.lock = threading.Lock()


class Runner:
    """One runner thread: takes a tick, runs its collectors from ``tick.index`` on.

    ``run_tick(tick, runner)`` does the work (the sampler's); ``on_exit(runner)`` is
    called on the thread as it exits when told to, when retired, or once ``stopping``
    is set. A thread whose call is given up on unwinds without calling either again.
    """

    def __init__(
        self,
        number: int,
        run_tick: Callable[[Tick, Runner], None],
        on_exit: Callable[[Runner], None],
        stopping: threading.Event,
    ) -> None:
        self._run_tick = run_tick
        self._on_exit = on_exit
        self._stopping = stopping
        self._ready = threading.Lock()
        self._ready.acquire()
        self._job: Tick | None = None
        self.busy = False
        self.retired = False
        self.thread = threading.Thread(
            target=self._run, name=f"sysmon-collect-{number}", daemon=True
        )
        self.thread.start()

    def give(self, tick: Tick | None) -> None:
        """Run ``tick`` (None: exit). Only while not busy."""
        self._job = tick
        self.busy = tick is not None
        self._ready.release()

    def _run(self) -> None:
        while True:
            self._ready.acquire()
            tick = self._job
            if tick is None or self.retired:
                self._on_exit(self)
                return
            try:
                self._run_tick(tick, self)
            except _Abandoned:
                return
            self.busy = False
            tick.done.set()
            if self.retired or self._stopping.is_set():
                self._on_exit(self)
                return
