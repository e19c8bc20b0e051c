"""StatusClient: the kernel side of ``sysmon/ws``.

It opens the WebSocket with the credentials in the ``Authorization`` header, decodes
every frame with :mod:`sysmon_nb.protocol` (which checks every field's type: a frame
that breaks the protocol is dropped and logged, and the connection goes on), and
reconnects after a dropped connection with exponential backoff and full jitter (0.5 s
doubling to 30 s). On reconnect it asks
for the samples it missed (``history=N``, N from the time since the last sample arrived,
on this kernel's monotonic clock) and drops any it has already seen. It never
reconnects after a refusal: HTTP 403 (or any other 4xx) before the upgrade, or a close
with 4401 (credentials expired) or 4403 (admin rights withdrawn).

Samples are told apart by the server process (``hello.server_id``) and ``seq``, never by
``time``: the server's clock may step back or forward, and a sample is new when its
``seq`` is past the newest seen from that server process. A restarted server is a new
``server_id`` whose ``seq`` starts over. An older server that sends no ``server_id`` is
told apart by ``seq`` and ``time`` together: a sample is a repeat only when neither is
past the newest seen.

Credentials: a JWT (three base64url parts, the first a JSON header) is sent as
``Authorization: Bearer <jwt>``, anything else as ``token <value>`` (Jupyter and
JupyterHub tokens); ``scheme`` overrides. A client whose credential changes (the fleet's
per-server hub tokens, rotated before they expire) takes a ``token_source`` instead: it
is awaited before each connection, and :meth:`StatusClient.reconnect` makes the client
connect again at once with what it returns next.

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
import base64
import binascii
import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from .protocol import (
    CLOSE_CREDENTIALS_EXPIRED,
    CLOSE_NOT_ADMIN,
    Hello,
    History,
    LogLimiter,
    ProtocolError,
    ServerMessage,
    Status,
    Subscribe,
    decode,
    encode,
)

log = logging.getLogger("sysmon_nb.client")

#: Backoff: the first retry waits up to this long, doubling per failed attempt...
BACKOFF_INITIAL = 0.5
#: ...up to this cap (seconds).
BACKOFF_MAX = 30.0
#: Most samples asked for when catching up after a reconnect.
MAX_CATCH_UP = 720
#: Largest frame accepted (bytes): a history of 720 samples of a big host (the counters
#: of 128 CPUs, every kernel) passes websockets' default of 1 MiB.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Frames that break the protocol are logged at most once per this many seconds per
#: client (with the count of those not logged).
DROPPED_LOG_SECONDS = 60.0
#: The oldest websockets this client works with (pyproject.toml's floor).
MIN_WEBSOCKETS = (14, 2)

_REFUSING_CLOSE_CODES = {
    CLOSE_CREDENTIALS_EXPIRED: "credentials expired",
    CLOSE_NOT_ADMIN: "administrator rights withdrawn",
}

Phase = Literal["connecting", "connected", "reconnecting", "refused", "stopped"]

#: ``Authorization`` schemes, by the name ``scheme=`` and ``%sysmon --scheme`` take.
SCHEMES = {"token": "token", "bearer": "Bearer"}

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class ClientError(Exception):
    """The client stopped for good; ``reason`` is fit to show the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefusedError(ClientError):
    """The server refused this client; reconnecting would be refused again. ``code`` is
    the HTTP status or the close code of the refusal, when there was one."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


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


def _b64url_json(part: str) -> Any:
    """A base64url part of a JWT, decoded as JSON (None when it is not)."""
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        return None


def looks_like_jwt(value: str) -> bool:
    """True for a compact JWT: three base64url parts, the first a JSON object (its header).

    Jupyter and JupyterHub tokens have no dots, so they never look like one."""
    parts = value.split(".")
    return (
        len(parts) == 3
        and all(_B64URL.fullmatch(p) for p in parts[:2])
        and (parts[2] == "" or _B64URL.fullmatch(parts[2]) is not None)
        and isinstance(_b64url_json(parts[0]), dict)
    )


def jwt_expires_at(value: str) -> float | None:
    """The ``exp`` claim of a JWT, read without checking it (the server checks); None when
    ``value`` is no JWT or has no numeric ``exp``. Only used to say why a server refused."""
    if not looks_like_jwt(value):
        return None
    payload = _b64url_json(value.split(".")[1])
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


def authorization(token: str, scheme: str | None = None) -> str:
    """The ``Authorization`` header value for ``token``.

    ``scheme`` is ``"token"`` or ``"bearer"`` (any case); None picks ``Bearer`` for a JWT
    (what JWT identity providers read) and ``token`` for anything else."""
    if scheme is None:
        scheme = "bearer" if looks_like_jwt(token) else "token"
    name = SCHEMES.get(scheme.lower())
    if name is None:
        raise ClientError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    return f"{name} {token}"


def _refusal(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and reason, if ``exc`` means the server will not take this client."""
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
            return status, f"HTTP {status}" + (f": {message}" if message else "")
    return None


class StatusClient:
    """A reconnecting subscriber to a sysmon server.

    ``url`` is the server's URL (or its ``sysmon/ws`` URL); ``token`` goes in the
    ``Authorization`` header, as ``Bearer`` when it is a JWT and ``token`` otherwise;
    ``scheme`` (``"token"`` or ``"bearer"``) overrides that guess. ``metrics`` picks
    groups (empty: all) and ``exclude`` drops groups from what the server offers;
    ``include`` adds groups the server offers but streams only when named (``counters``);
    ``history`` asks for that many past samples on the first connection;
    ``open_limit``, a semaphore shared by many clients, is held while opening a
    connection. ``on_state`` is called with each
    :class:`ConnectionState`. Iterate it with ``async for``; cancel the iterating task
    (or ``aclose()`` the iterator) to stop: the socket is closed on the way out.

    ``token_source``, instead of ``token``, is awaited for the credential before each
    connection (while ``open_limit`` is held); it raises :class:`RefusedError` to refuse
    the client for good, and any other exception is retried like a failed connection.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        scheme: str | None = None,
        metrics: Iterable[str] = (),
        exclude: Iterable[str] = (),
        include: Iterable[str] = (),
        history: int = 0,
        max_catch_up: int = MAX_CATCH_UP,
        on_state: Callable[[ConnectionState], None] | None = None,
        backoff: Callable[[int], float] = full_jitter,
        open_timeout: float = 10.0,
        open_limit: asyncio.Semaphore | None = None,
        compression: str | None = "deflate",
        token_source: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        if token and token_source is not None:
            raise ClientError("give a token or a token_source, not both")
        self.url = endpoint_url(url)
        self._token = token
        self._scheme = scheme
        self._headers = {"Authorization": authorization(token, scheme)} if token else {}
        #: Awaited for the credential before each connection (see the class docstring).
        self.token_source = token_source
        #: The token of the connection opening or open now (None between connections).
        self.credential: str | None = None
        self._ws: Any = None
        #: Bumped by :meth:`reconnect`: a connection opened before the bump is closed.
        self._generation = 0
        self.metrics = tuple(metrics)
        #: Groups never streamed, whatever the server offers (see :meth:`_narrow`); a
        #: server that sends them anyway has them dropped unchecked.
        self.exclude = frozenset(exclude)
        #: Groups added to the subscription when the server offers them (see :meth:`_narrow`).
        self.include = tuple(include)
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
        #: The server process whose samples were seen last (``hello.server_id``; None for
        #: a server that sends none), and the newest ``seq`` seen from it.
        self.server_id: str | None = None
        self.last_seq: int | None = None
        #: The server's time of the newest sample seen (shown, never used to drop one).
        self.last_time: float | None = None
        #: When the newest sample arrived, on this kernel's monotonic clock.
        self.last_arrival: float | None = None
        #: Frames that did not decode (logged and skipped).
        self.skipped = 0
        #: Frames dropped since the last good one, and their rate-limited log.
        self._dropping = 0
        self._drop_log = LogLimiter(log, DROPPED_LOG_SECONDS)
        #: Samples dropped because they had been seen already (catch-up overlap).
        self.repeats = 0
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

        _check_websockets(websockets.__version__)
        process_exception = _process_exception()
        attempt = 0
        try:
            while True:
                url = self._url_for_attempt()
                generation = self._generation
                try:
                    async with self.open_limit or contextlib.nullcontext():
                        headers = await self._current_headers()
                        ws = await websockets.connect(
                            url,
                            additional_headers=headers,
                            open_timeout=self.open_timeout,
                            compression=self.compression,
                            max_size=MAX_FRAME_BYTES,
                            user_agent_header=f"sysmon-nb/{_version()}",
                        )
                except RefusedError as err:  # from the token source
                    self._refuse(err.reason)
                    raise
                except Exception as exc:
                    self.credential = None
                    refusal = _refusal(exc)
                    if refusal is not None:
                        reason = self._explain(*refusal)
                        self._refuse(reason)
                        raise RefusedError(reason, refusal[0]) from exc
                    if process_exception(exc) is not None and not _is_dropped(exc):
                        self._set_state(ConnectionState("stopped", str(exc)))
                        raise ClientError(f"cannot connect to {self.url}: {exc}") from exc
                    attempt = await self._wait(attempt, f"connection failed: {exc}")
                    continue

                self._ws = ws
                async with ws:
                    # Not read at all when new credentials came while it was opening.
                    if generation == self._generation:
                        try:
                            async for frame in ws:
                                message = self._accept(frame)
                                del frame  # nothing of a sample stays alive between frames
                                if message is None:
                                    continue
                                if isinstance(message, Hello):
                                    attempt = 0
                                    await self._narrow(ws, message)
                                yield message
                                del message
                        except websockets.ConnectionClosed:
                            pass
                self._ws = self.credential = None
                if generation != self._generation:
                    log.debug("sysmon: %s: reconnecting with new credentials", self.url)
                    continue
                code, why = ws.close_code, ws.close_reason
                if code in _REFUSING_CLOSE_CODES:
                    reason = _REFUSING_CLOSE_CODES[code] + (f" ({why})" if why else "")
                    self._refuse(reason)
                    raise RefusedError(reason, code)
                attempt = await self._wait(attempt, f"connection closed ({code} {why})".strip())
        finally:
            self._ws = self.credential = None

    async def reconnect(self) -> None:
        """Close the connection now open or opening, and open the next one at once, with
        a fresh credential from ``token_source`` (the samples missed in between are asked
        for, as after any reconnect). Returns once the old connection is closed."""
        self._generation += 1
        ws = self._ws
        if ws is not None:
            await ws.close(1000, "new credentials")

    # -- internals -------------------------------------------------------------------

    async def _current_headers(self) -> dict[str, str]:
        """The headers of the next connection: the token source's credential, if any."""
        if self.token_source is None:
            self.credential = self._token
            return self._headers
        try:
            token = await self.token_source()
        except RefusedError:
            raise
        except Exception as err:
            raise ConnectionError(f"no credentials: {err}") from err
        self.credential = token
        return {"Authorization": authorization(token, self._scheme)}

    async def _narrow(self, ws: Any, hello: Hello) -> None:
        """Subscribe to what the server streams less ``exclude``, plus the groups of
        ``include`` it offers: a client that wants "everything but the process list" cannot
        name groups a server may not have, so it takes the server's offer and drops the
        rest (which lets the server skip the process walk nobody reads)."""
        keep = tuple(g for g in hello.subscribed if g not in self.exclude)
        extra = tuple(
            g
            for g in self.include
            if g in hello.metrics and g not in hello.subscribed and g not in self.exclude
        )
        if keep and (extra or len(keep) < len(hello.subscribed)):  # empty would mean "all"
            await ws.send(encode(Subscribe(metrics=keep + extra)))

    def _url_for_attempt(self) -> str:
        query: dict[str, Any] = {}
        if self.metrics:
            query["metrics"] = ",".join(self.metrics)
        history = self.history if self.last_arrival is None else self._missed()
        self.asked_history = history
        if history:
            query["history"] = history
        return f"{self.url}?{urlencode(query)}" if query else self.url

    def _missed(self) -> int:
        """How many samples were taken since the newest one arrived (plus one spare).

        Measured on this kernel's monotonic clock: the server's clock may have stepped."""
        if self.last_arrival is None or self.hello is None or self.max_catch_up == 0:
            return 0
        gap = max(0.0, time.monotonic() - self.last_arrival)
        return min(self.max_catch_up, math.ceil(gap / self.hello.interval) + 1)

    def _explain(self, status: int, reason: str) -> str:
        """A refusal's reason; a 401/403 to a JWT whose ``exp`` has passed says so."""
        expires_at = jwt_expires_at(self._token) if self._token else None
        if status in (401, 403) and expires_at is not None and expires_at <= time.time():
            ago = time.time() - expires_at
            return f"credentials expired ({reason}; the JWT's exp passed {ago:.0f} s ago)"
        return reason

    def _accept(self, frame: str | bytes) -> ServerMessage | None:
        """Decode one frame; None for an invalid frame or only samples already seen.

        A frame that breaks the protocol (a field of the wrong type included: see
        :mod:`sysmon_nb.schema`) is dropped and the connection goes on. The first one
        is logged at once, the next ones once per :data:`DROPPED_LOG_SECONDS` with how
        many were dropped in between, and the first good frame after them says so."""
        try:
            message = decode(frame, self.exclude)
        except ProtocolError as err:
            self.skipped += 1
            self._dropping += 1
            self._drop_log.log(
                logging.WARNING,
                "sysmon: dropped a frame from %s that breaks the protocol (%s): %s",
                self.url,
                err.code,
                err.message,
            )
            return None
        if self._dropping:
            log.info("sysmon: %s sends valid frames again (%d dropped)", self.url, self._dropping)
            self._dropping = 0
            self._drop_log.reset()
        if isinstance(message, Hello):
            self.hello = message
            self.connections += 1
            if message.server_id != self.server_id:
                if self.last_seq is not None:
                    log.info("sysmon: %s is a new server process; its seq starts over", self.url)
                self.server_id = message.server_id
                self.last_seq = self.last_time = None
            self._set_state(ConnectionState("connected"))
        elif isinstance(message, History):
            fresh = tuple(s for s in message.samples if self._take(s))
            message = History(samples=fresh)
        elif isinstance(message, Status) and not self._take(message):
            return None
        return message

    def _take(self, sample: Status) -> bool:
        """Whether ``sample`` is new (then it becomes the newest seen)."""
        if self.last_seq is not None and sample.seq <= self.last_seq:
            # The same server process: a repeat. A server without server_id may have
            # restarted (its seq starts over): then its clock says the sample is newer.
            old_time = self.last_time is not None and sample.time <= self.last_time
            if self.server_id is not None or old_time:
                self.repeats += 1
                return False
        self.last_seq, self.last_time = sample.seq, sample.time
        self.last_arrival = time.monotonic()
        return True

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


def _check_websockets(version: str) -> None:
    """Stop with a reason that says what to do when ``websockets`` is older than the floor
    (a kernel environment where pip did not upgrade it): older ones fail deep inside."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < MIN_WEBSOCKETS:
        need = ".".join(map(str, MIN_WEBSOCKETS))
        raise ClientError(
            f"websockets {version} is too old: sysmon-nb needs {need} or newer"
            f" (pip install -U 'websockets>={need}' in this kernel's environment)"
        )


def _process_exception() -> Callable[[Exception], Exception | None]:
    """websockets' own judgement of which connection errors are worth a retry.

    Public in ``websockets.client`` from 17.1, and in ``websockets.asyncio.client`` from
    14.0 (our floor is 14.2) to at least 17.4; the newer home first, the older as a
    fallback (``make test`` runs the first, ``make test-min`` the second).
    """
    try:
        from websockets.client import process_exception
    except ImportError:
        from websockets.asyncio.client import process_exception
    return process_exception


def _is_dropped(exc: BaseException) -> bool:
    """Errors of a handshake cut short (server restarting): worth a retry."""
    from websockets.exceptions import InvalidMessage

    return isinstance(exc, (InvalidMessage, EOFError, ConnectionError))


def _version() -> str:
    from ._version import __version__

    return __version__
