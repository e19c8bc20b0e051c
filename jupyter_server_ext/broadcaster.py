"""SystemStatusBroadcaster: one sample in, one frame per subscription set out.

It never touches a connection: a subscriber is given a ``send(frame) -> Future | None``
callable by its connection. A :class:`~.fanout.Frame` is built once per subscription set
and the same object goes to every subscriber in it, so its wire bytes (plain or
compressed) are built once too. Everything here runs on the server's event loop.

Each subscriber has a bounded buffer. While its previous frame is still being written
(the client is slow or not reading), new frames queue there; when it is full the oldest
is dropped and counted in ``lagged``, so the newest data wins, a stalled client holds at
most ``buffer_size`` frames, and nobody else waits for it.

A send that fails drops that subscriber and tells its connection (``on_error``), which
closes itself: nothing is dropped silently. A history frame of any length is put
together from each sample's encoding and compressed blocks kept between connects
(:mod:`.history_frames`), and shared per (subscription set, length) until the next
sample.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sysmon_nb.protocol import History, Status, encode

from .fanout import Frame
from .history_frames import HistoryFrames

log = logging.getLogger("sysmon_nb.broadcaster")

Send = Callable[[Frame], "asyncio.Future[Any] | None"]
OnError = Callable[[BaseException], object]

#: History frames kept between two samples (distinct subscription sets and lengths).
HISTORY_FRAMES_KEPT = 8


class Subscriber:
    """One connection's place in the fan-out.

    A frame goes straight to the connection when nothing is queued or being written
    (the usual case); the bounded queue exists only while the connection lags.
    """

    __slots__ = (
        "_buffer_size",
        "_on_error",
        "_pending",
        "_send",
        "_writing",
        "closed",
        "delivered",
        "lagged",
        "metrics",
    )

    def __init__(
        self,
        send: Send,
        metrics: tuple[str, ...],
        buffer_size: int,
        on_error: OnError | None = None,
    ) -> None:
        self.metrics = metrics
        self.lagged = 0
        self.delivered = 0
        self.closed = False
        self._send = send
        self._on_error = on_error
        self._buffer_size = max(1, buffer_size)
        self._pending: deque[Frame] | None = None
        self._writing = False

    @property
    def pending(self) -> int:
        """Frames waiting for the connection to take them."""
        return len(self._pending) if self._pending is not None else 0

    def offer(self, frame: Frame) -> None:
        """Write ``frame``, or queue it while the connection is busy; drop the oldest
        queued frame if the queue is full."""
        if self.closed:
            return
        if not self._writing and not self._pending:
            self._write(frame)
            return
        pending = self._pending
        if pending is None:
            pending = self._pending = deque(maxlen=self._buffer_size)
        if len(pending) == pending.maxlen:
            self.lagged += 1
        pending.append(frame)
        self._pump()

    def close(self) -> None:
        self.closed = True
        self._pending = None

    def _pump(self) -> None:
        while not self._writing and self._pending and not self.closed:
            self._write(self._pending.popleft())
        if not self._pending:
            self._pending = None  # caught up: give the queue back

    def _write(self, frame: Frame) -> None:
        try:
            result = self._send(frame)
        except Exception as err:
            self._fail(err)
            return
        self.delivered += 1
        if result is not None:
            if result.done():
                self._consume(result)
            else:
                self._writing = True
                result.add_done_callback(self._written)

    def _written(self, result: Any) -> None:
        self._writing = False
        self._consume(result)
        self._pump()

    def _consume(self, result: Any) -> None:
        if result.cancelled():
            self.close()
        elif result.exception() is not None:
            self._fail(result.exception())

    def _fail(self, err: BaseException) -> None:
        """Stop sending and tell the connection, which closes itself (or, with nobody to
        tell, say so in the log)."""
        self.close()
        if self._on_error is None:
            log.warning("sysmon: dropped a subscriber whose send failed: %r", err)
            return
        try:
            self._on_error(err)
        except Exception:
            log.exception("sysmon: a connection failed to handle its send error")


class SystemStatusBroadcaster:
    """Keeps the history ring and the subscribers; ``publish`` fans a sample out."""

    def __init__(self, history: int, buffer_size: int) -> None:
        self._history: deque[Status] = deque(maxlen=history)
        self._buffer_size = buffer_size
        self._groups: dict[tuple[str, ...], set[Subscriber]] = {}
        self.latest: Status | None = None
        self.published = 0
        #: History frames kept until the next sample; 0 encodes every request anew, the
        #: whole frame (no piece is kept: the benchmark's reference).
        self.history_frames_kept = HISTORY_FRAMES_KEPT
        self._history_frames: dict[tuple[tuple[str, ...], int], Frame] = {}
        self.history_pieces = HistoryFrames(history)
        self._waiters: list[asyncio.Future[Status]] = []

    @property
    def subscribers(self) -> list[Subscriber]:
        return [s for group in self._groups.values() for s in group]

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def subscribe(
        self, send: Send, metrics: tuple[str, ...], on_error: OnError | None = None
    ) -> Subscriber:
        """Add a subscriber that receives every future sample restricted to ``metrics``.
        If a send fails, the subscriber is dropped and ``on_error(exception)`` called."""
        sub = Subscriber(send, metrics, self._buffer_size, on_error)
        self._groups.setdefault(metrics, set()).add(sub)
        return sub

    def change(self, sub: Subscriber, metrics: tuple[str, ...]) -> None:
        """Move ``sub`` to another subscription set."""
        self._discard(sub)
        sub.metrics = metrics
        self._groups.setdefault(metrics, set()).add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Remove ``sub``; it receives nothing more. Idempotent."""
        self._discard(sub)
        sub.close()

    def history(self, count: int, metrics: Iterable[str]) -> list[Status]:
        """Up to ``count`` most recent samples, oldest first, restricted to ``metrics``."""
        if count <= 0:
            return []
        wanted = tuple(metrics)
        samples = list(self._history)[-count:]
        return [s.subset(wanted) for s in samples]

    def history_frame(self, count: int, metrics: Iterable[str]) -> Frame:
        """The ``history`` frame of up to ``count`` most recent samples restricted to
        ``metrics``. Whatever ``count``, it costs no more than encoding and compressing
        the samples published since the last such frame, and two blocks of samples
        (:mod:`.history_frames`); the same frame is shared until the next sample, so
        clients reconnecting together cost one."""
        wanted = tuple(metrics)
        key = (wanted, min(max(count, 0), len(self._history)))
        if self.history_frames_kept <= 0:
            return Frame(encode(History(samples=tuple(self.history(count, wanted)))))
        frame = self._history_frames.get(key)
        if frame is None:
            frame = self.history_pieces.frame(self._history, self.published, key[1], wanted)
            if len(self._history_frames) >= self.history_frames_kept:
                del self._history_frames[next(iter(self._history_frames))]
            self._history_frames[key] = frame
        return frame

    def next_sample(self) -> asyncio.Future[Status]:
        """A future the next published sample resolves (on the event loop; cancel it
        to stop waiting)."""
        future: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(future)
        return future

    def publish(self, status: Status) -> None:
        """Record ``status`` and hand it to every subscriber, encoding it once per
        distinct subscription set."""
        self.latest = status
        self.published += 1
        self._history.append(status)
        self._history_frames.clear()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(status)
        for metrics, group in list(self._groups.items()):
            if not group:
                continue
            frame = Frame(encode(status.subset(metrics)))
            self.history_pieces.note(metrics, self.published - 1, frame.payload)
            for sub in list(group):
                sub.offer(frame)
                if sub.closed:
                    self._discard(sub)

    def _discard(self, sub: Subscriber) -> None:
        group = self._groups.get(sub.metrics)
        if group is not None:
            group.discard(sub)
            if not group:
                del self._groups[sub.metrics]

    def wanted(self) -> set[str]:
        """Every group some subscriber wants (the union of the subscription sets). Safe to
        call from another thread: the sets are copied in one step."""
        return {g for metrics, subs in list(self._groups.items()) if subs for g in metrics}
