"""StatusClient: the kernel side of ``sysmon/ws``.

It opens the WebSocket with the credentials in the ``Authorization`` header, decodes
every frame with :mod:`sysmon_nb.protocol`, and reconnects after a dropped connection
with exponential backoff and full jitter (0.5 s doubling to 30 s). On reconnect it asks
for the samples it missed (``history=N``) and drops any it has already seen. It never
reconnects after a refusal: HTTP 403 (or any other 4xx) before the upgrade, or a close
with 4401 (credentials expired) or 4403 (admin rights withdrawn).

Two ways to read it::

    async for status in StatusClient(url, token):      # Status objects, history unrolled
        print(status.groups["cpu"]["percent"])

    async for message in client.messages():            # Hello, History, Status, ...
        ...

Why not ``async for ws in websockets.connect(...)``: that loop reconnects at once after
an established connection drops, keeps one URI for every attempt (we ask for a different
``history=N`` each time) and does not say how long it will wait. We reuse its judgement
of which connection errors are transient (:func:`websockets.client.process_exception`).

Errors::

    ClientError         anything that stops the client for good
    └── RefusedError    the server said no (403, 4xx, 4401, 4403); ``reason`` says why
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from .protocol import (
    CLOSE_CREDENTIALS_EXPIRED,
    CLOSE_NOT_ADMIN,
    Hello,
    History,
    ProtocolError,
    ServerMessage,
    Status,
    decode,
)

log = logging.getLogger("sysmon_nb.client")

#: Backoff: the first retry waits up to this long, doubling per failed attempt...
BACKOFF_INITIAL = 0.5
#: ...up to this cap (seconds).
BACKOFF_MAX = 30.0
#: Most samples asked for when catching up after a reconnect.
MAX_CATCH_UP = 720

_REFUSING_CLOSE_CODES = {
    CLOSE_CREDENTIALS_EXPIRED: "credentials expired",
    CLOSE_NOT_ADMIN: "administrator rights withdrawn",
}

Phase = Literal["connecting", "connected", "reconnecting", "refused", "stopped"]


class ClientError(Exception):
    """The client stopped for good; ``reason`` is fit to show the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedError(ClientError):
    """The server refused this client; reconnecting would be refused again."""


@dataclass(frozen=True)
class ConnectionState:
    """Where the client stands. ``retry_at`` is a ``time.time()`` while reconnecting."""

    phase: Phase
    reason: str = ""
    retry_at: float | None = None

    def describe(self, now: float | None = None) -> str:
        """A short phrase for a header: ``connected``, ``reconnecting in 3 s``, ..."""
        if self.phase == "reconnecting" and self.retry_at is not None:
            wait = max(0.0, self.retry_at - (time.time() if now is None else now))
            return f"reconnecting in {math.ceil(wait)} s"
        if self.phase == "refused":
            return f"refused: {self.reason}"
        if self.phase == "stopped" and self.reason:
            return f"stopped: {self.reason}"
        return self.phase


def full_jitter(
    attempt: int,
    initial: float = BACKOFF_INITIAL,
    cap: float = BACKOFF_MAX,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in
    ``[0, min(cap, initial * 2**attempt)]`` ("full jitter")."""
    return rng() * min(cap, initial * 2.0 ** min(attempt, 64))


def endpoint_url(url: str) -> str:
    """The ``sysmon/ws`` URL for a server URL.

    ``http://host:8888/base/`` becomes ``ws://host:8888/base/sysmon/ws``; a ``ws(s)://``
    URL that already ends in ``sysmon/ws`` is kept. Any query string is dropped.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ClientError(f"not a server URL: {url!r} (expected http(s):// or ws(s)://)")
    path = parts.path
    if not path.rstrip("/").endswith("sysmon/ws"):
        path = path.rstrip("/") + "/sysmon/ws"
    return urlunsplit((scheme, parts.netloc, path.rstrip("/"), "", ""))


def _refusal(exc: BaseException) -> str | None:
    """The reason, if ``exc`` means the server will not take this client."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        if 400 <= status < 500:
            message = ""
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(response.body or b"{}").get("message") or "")
            if status == 404:
                message = message or "no sysmon endpoint here; is the extension enabled?"
            return f"HTTP {status}" + (f": {message}" if message else "")
    return None


class StatusClient:
    """A reconnecting subscriber to a sysmon server.

    ``url`` is the server's URL (or its ``sysmon/ws`` URL); ``token`` goes in the
    ``Authorization`` header (``scheme`` ``token`` for Jupyter tokens, ``Bearer`` for
    JWTs). ``metrics`` picks groups (empty: all); ``history`` asks for that many past
    samples on the first connection; ``open_limit``, a semaphore shared by many clients,
    is held while opening a connection. ``on_state`` is called with each
    :class:`ConnectionState`. Iterate it with ``async for``; cancel the iterating task
    (or ``aclose()`` the iterator) to stop: the socket is closed on the way out.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        scheme: str = "token",
        metrics: Iterable[str] = (),
        history: int = 0,
        max_catch_up: int = MAX_CATCH_UP,
        on_state: Callable[[ConnectionState], None] | None = None,
        backoff: Callable[[int], float] = full_jitter,
        open_timeout: float = 10.0,
        open_limit: asyncio.Semaphore | None = None,
        compression: str | None = "deflate",
    ) -> None:
        self.url = endpoint_url(url)
        self._headers = {"Authorization": f"{scheme} {token}"} if token else {}
        self.metrics = tuple(metrics)
        self.history = max(0, int(history))
        self.max_catch_up = max(0, int(max_catch_up))
        self.on_state = on_state
        self.backoff = backoff
        self.open_timeout = open_timeout
        #: Held while opening a connection: bounds how many clients open at once.
        self.open_limit = open_limit
        #: ``"deflate"`` offers permessage-deflate; None saves its memory per connection.
        self.compression = compression
        self.state = ConnectionState("connecting")
        self.hello: Hello | None = None
        #: Time of the newest sample seen; older ones arriving later are dropped.
        self.last_time: float | None = None
        #: Frames that did not decode (logged and skipped).
        self.skipped = 0
        #: Successful connections so far (1 after the first hello).
        self.connections = 0
        #: The ``history`` asked for on the most recent connection.
        self.asked_history = 0

    def __repr__(self) -> str:
        return f"<StatusClient {self.url} {self.state.describe()}>"

    # -- reading ---------------------------------------------------------------------

    async def __aiter__(self) -> AsyncGenerator[Status, None]:
        """Every new sample, oldest first; history is unrolled into its samples."""
        async with contextlib.aclosing(self.messages()) as messages:
            async for message in messages:
                if isinstance(message, History):
                    samples = list(reversed(message.samples))
                elif isinstance(message, Status):
                    samples = [message]
                else:
                    continue
                # Hold no sample while waiting for the next frame: a fleet of hundreds
                # of clients would otherwise keep each one's newest sample alive.
                del message
                while samples:
                    yield samples.pop()

    async def messages(self) -> AsyncGenerator[ServerMessage, None]:
        """Every decoded frame, across reconnects, without samples already seen.

        Ends by raising :class:`RefusedError` when the server refuses the client.
        """
        import websockets
        from websockets.client import process_exception

        attempt = 0
        while True:
            url = self._url_for_attempt()
            try:
                async with self.open_limit or contextlib.nullcontext():
                    ws = await websockets.connect(
                        url,
                        additional_headers=self._headers,
                        open_timeout=self.open_timeout,
                        compression=self.compression,
                        user_agent_header=f"sysmon-nb/{_version()}",
                    )
            except Exception as exc:
                reason = _refusal(exc)
                if reason is not None:
                    self._refuse(reason)
                    raise RefusedError(reason) from exc
                if process_exception(exc) is not None and not _is_dropped(exc):
                    self._set_state(ConnectionState("stopped", str(exc)))
                    raise ClientError(f"cannot connect to {self.url}: {exc}") from exc
                attempt = await self._wait(attempt, f"connection failed: {exc}")
                continue

            async with ws:
                try:
                    async for frame in ws:
                        message = self._accept(frame)
                        del frame  # nothing of a sample stays alive between frames
                        if message is None:
                            continue
                        if isinstance(message, Hello):
                            attempt = 0
                        yield message
                        del message
                except websockets.ConnectionClosed:
                    pass
            code, why = ws.close_code, ws.close_reason
            if code in _REFUSING_CLOSE_CODES:
                reason = _REFUSING_CLOSE_CODES[code] + (f" ({why})" if why else "")
                self._refuse(reason)
                raise RefusedError(reason)
            attempt = await self._wait(attempt, f"connection closed ({code} {why})".strip())

    # -- internals -------------------------------------------------------------------

    def _url_for_attempt(self) -> str:
        query: dict[str, Any] = {}
        if self.metrics:
            query["metrics"] = ",".join(self.metrics)
        history = self.history if self.last_time is None else self._missed()
        self.asked_history = history
        if history:
            query["history"] = history
        return f"{self.url}?{urlencode(query)}" if query else self.url

    def _missed(self) -> int:
        """How many samples were taken since the newest one seen (plus one spare)."""
        if self.last_time is None or self.hello is None or self.max_catch_up == 0:
            return 0
        gap = max(0.0, time.time() - self.last_time)
        return min(self.max_catch_up, math.ceil(gap / self.hello.interval) + 1)

    def _accept(self, frame: str | bytes) -> ServerMessage | None:
        """Decode one frame; None for an invalid frame or only samples already seen."""
        try:
            message = decode(frame)
        except ProtocolError as err:
            self.skipped += 1
            log.warning("sysmon: skipped an invalid frame (%s): %s", err.code, err.message)
            return None
        if isinstance(message, Hello):
            self.hello = message
            self.connections += 1
            self._set_state(ConnectionState("connected"))
        elif isinstance(message, History):
            fresh = tuple(s for s in message.samples if self._is_new(s))
            if fresh:
                self.last_time = fresh[-1].time
            message = History(samples=fresh)
        elif isinstance(message, Status):
            if not self._is_new(message):
                return None
            self.last_time = message.time
        return message

    def _is_new(self, sample: Status) -> bool:
        return self.last_time is None or sample.time > self.last_time

    async def _wait(self, attempt: int, why: str) -> int:
        delay = max(0.0, float(self.backoff(attempt)))
        log.info("sysmon: %s; reconnecting in %.1f s", why, delay)
        self._set_state(ConnectionState("reconnecting", why, time.time() + delay))
        await asyncio.sleep(delay)
        self._set_state(ConnectionState("connecting"))
        return attempt + 1

    def _refuse(self, reason: str) -> None:
        log.warning("sysmon: %s refused this client: %s", self.url, reason)
        self._set_state(ConnectionState("refused", reason))

    def _set_state(self, state: ConnectionState) -> None:
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("sysmon: on_state callback failed")


def _is_dropped(exc: BaseException) -> bool:
    """Errors of a handshake cut short (server restarting): worth a retry."""
    from websockets.exceptions import InvalidMessage

    return isinstance(exc, (InvalidMessage, EOFError, ConnectionError))


def _version() -> str:
    from ._version import __version__

    return __version__
