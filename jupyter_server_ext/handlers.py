"""The routes: ``sysmon/ws`` (WebSocket) and ``sysmon/api/status`` (latest sample).

Both follow jupyter_server's own handlers: authentication first (``ws_authenticated``
/ ``web.authenticated``), then the server's authorizer for ``read`` on ``sysmon``,
then our admin policy (:mod:`.admission`); the WebSocket then takes a connection slot
(:mod:`.slots`). Refusals are JSON, before any upgrade.
"""

from __future__ import annotations

import asyncio
import copy
import sys
import time
from typing import Any

from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import httputil, web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClosedError,
    WebSocketHandler,
    WebSocketProtocol,
    WebSocketProtocol13,
)

from sysmon_nb.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    MAX_MESSAGE_BYTES,
    Error,
    Hello,
    ProtocolError,
    Subscribed,
    decode_client,
    dumps,
    encode,
    parse_history,
    parse_metrics,
    quote,
)

from .admission import ADMIN, AUTH_RESOURCE, SysmonRoute
from .auth import CredentialsWatcher, watch_credentials
from .broadcaster import Subscriber
from .fanout import PING_FRAME, Frame, NotShareable, SysmonProtocol, framing, write_frame
from .slots import Refusal, Slot, identity_of

#: Bytes of replies (``error``, ``subscribed``) a client may leave unread, that is queued
#: in the server because its socket buffers are full, before it is closed with 1008: a
#: client that sends but never reads must not grow the server's write buffer. Replies
#: the socket took at once are not counted, so a burst from a client that reads is all
#: answered, however many messages it holds.
MAX_UNREAD_REPLY_BYTES = 64 * 1024

#: A client's ignored messages are logged at most once per this many seconds per
#: connection; the ones in between are counted, and the count is logged with the next
#: line or when the connection closes.
BAD_MESSAGE_LOG_SECONDS = 60.0
#: Characters of an ignored message's description that reach the log.
MAX_LOGGED_CHARS = 200

#: A connection's framing not known yet / it compresses with a context of its own.
_UNKNOWN: Any = object()
_OWN_CONTEXT: Any = object()


class StatusWebSocketHandler(SysmonRoute, WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``GET sysmon/ws``: hello, optional history, then a status frame per sample."""

    auth_resource = AUTH_RESOURCE
    write_error = APIHandler.write_error

    _subscriber: Subscriber | None = None
    _metrics: tuple[str, ...] = ()
    _history: int | None = None
    _slot: Slot | None = None
    _counted = False
    _unread_reply_bytes = 0
    _bad_logged_at: float | None = None
    _bad_unlogged = 0
    _failed = False
    _watcher: CredentialsWatcher | None = None
    _framing: Any = _UNKNOWN  # found on the connection's first broadcast frame

    def set_default_headers(self) -> None:
        """Undo JupyterHandler's page headers, meaningless for a WebSocket."""

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE_BYTES

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.extension.compression else None

    @property
    def fast_path(self) -> bool:
        """Whether frames take the direct path (see :mod:`.fanout`); if not, everything
        goes through tornado's public ``write_message`` and its own protocol."""
        return self.extension.use_fast_path

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """On the fast path, our protocol: deflate without context takeover so that one
        compressed frame serves every client, and proper close frames (see
        :mod:`.fanout`). Keep-alive pings are the extension's (one timer for every
        connection), so tornado's own ping task, which would read the mixin's
        milliseconds as seconds, is not started."""
        protocol = super().get_websocket_protocol()
        if self.fast_path and type(protocol) is WebSocketProtocol13:
            params = copy.copy(protocol.params)
            params.ping_interval = params.ping_timeout = None
            return SysmonProtocol(self, False, params)
        return protocol

    async def pre_get(self) -> None:
        access = await self._authorize_admin()
        ext = self.extension
        try:
            self._metrics = parse_metrics(self.get_argument("metrics", ""), ext.metrics)
            asked = parse_history(self.get_argument("history", "0"), sys.maxsize)
        except ProtocolError as err:
            raise web.HTTPError(400, err.message) from None
        # Asked for history: always answer with a history frame, capped to what is kept.
        self._history = min(asked, ext.history) if asked else None
        identity = identity_of(self.current_user, ext.policy.single_user_provider)
        slot = ext.slots.take(identity, admin=access == ADMIN)
        if isinstance(slot, Refusal):
            raise web.HTTPError(slot.status, slot.reason)
        self._slot = slot
        ext.connections.add(self)
        self._counted = True

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        try:
            await super().get(*args, **kwargs)
        finally:
            # get() returns when the connection ends, or at once if the upgrade failed.
            self._release()

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Not WebSocketMixin.open: it starts a ping timer per connection. The extension
        # pings every connection from one timer instead (keepalive below), by its rules.
        self.last_ping = self.last_pong = IOLoop.current().time()
        ext = self.extension
        self._watcher = watch_credentials(
            self, ext.policy, ext.revalidate_interval, ext.readers, ext.hub_outage_grace
        )
        hello = Hello(
            server=ext.version,
            host=ext.host,
            interval=ext.interval,
            metrics=tuple(ext.metrics),
            subscribed=self._metrics,
            expires_at=self._watcher.expires_at,
            server_id=ext.server_id,
        )
        try:
            self._send_frame(Frame(encode(hello)))
            if self._history is not None:
                # Encoded once per (subscription, length) until the next sample, and its
                # wire bytes built once per framing: a reconnect storm costs one encoding.
                self._send_frame(ext.broadcaster.history_frame(self._history, self._metrics))
        except WebSocketClosedError:
            return
        self._subscriber = ext.broadcaster.subscribe(
            self._send_frame, self._metrics, on_error=self._send_failed
        )
        self._watcher.start()

    async def on_message(self, message: str | bytes) -> None:
        self._answer(message)
        # tornado reads the next message only once this returns, and a message already
        # buffered is read without going back to the event loop: yield once, so that a
        # client sending as fast as it can leaves every other connection its turn.
        await asyncio.sleep(0)

    def _answer(self, message: str | bytes) -> None:
        conn = self.ws_connection
        if conn is None or conn.is_closing() or self._failed:
            return  # condemned: nothing more is parsed, logged or answered
        try:
            request = decode_client(message, self.extension.metrics)
        except ProtocolError as err:
            self._note_ignored(err)
            self._reply(encode(Error(code=err.code, message=err.message)))
            return
        if self._subscriber is not None:
            self.extension.broadcaster.change(self._subscriber, request.metrics)
        self._metrics = request.metrics
        self._reply(encode(Subscribed(metrics=request.metrics)))

    def on_close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._bad_unlogged:
            self.log.info(
                "sysmon: %s closed; %d more ignored messages from it were not logged",
                self.request.remote_ip,
                self._bad_unlogged,
            )
            self._bad_unlogged = 0
        self._release()

    def _note_ignored(self, err: ProtocolError) -> None:
        """Log an ignored client message: one line per connection per
        ``BAD_MESSAGE_LOG_SECONDS``, cut short, with the count of those not logged."""
        now = time.monotonic()
        last = self._bad_logged_at
        if last is not None and now - last < BAD_MESSAGE_LOG_SECONDS:
            self._bad_unlogged += 1
            return
        unlogged, self._bad_unlogged, self._bad_logged_at = self._bad_unlogged, 0, now
        self.log.info(
            "sysmon: ignored a message from %s (%s): %s%s",
            self.request.remote_ip,
            err.code,
            quote(err.message, MAX_LOGGED_CHARS),
            f" ({unlogged} more ignored since the last such line)" if unlogged else "",
        )

    def _send_failed(self, err: BaseException) -> None:
        """The broadcaster could not hand this connection a frame: unless the socket
        simply went away (its close path follows), close with 1011 and say why once."""
        if isinstance(err, (WebSocketClosedError, StreamClosedError)) or self._failed:
            return
        self._failed = True
        self.log.warning(
            "sysmon: closing %s with 1011: sending it a frame failed: %r",
            self.request.remote_ip,
            err,
            exc_info=err,
        )
        self.close(CLOSE_INTERNAL_ERROR, "internal error")

    def keepalive(self, now: float, interval_ms: float, timeout_ms: float) -> None:
        """Ping the client, or close the connection if its pongs stopped coming.

        Called by the extension's one keep-alive timer for every connection, with
        ``WebSocketMixin.send_ping``'s rules (and jupyter_server's ``ws_ping_interval``
        and ``ws_ping_timeout``); the ping's prebuilt frame takes the same direct path
        as status frames.
        """
        conn = self.ws_connection
        if conn is None:
            return
        if conn.client_terminated:
            self.close()
            return
        since_pong = 1e3 * (now - self.last_pong)
        since_ping = 1e3 * (now - self.last_ping)
        if since_ping < 2 * interval_ms and since_pong > timeout_ms:
            self.log.warning("sysmon: WebSocket ping timeout after %i ms", since_pong)
            self.close()
            return
        try:
            if self.fast_path:
                write_frame(conn, PING_FRAME)
            else:
                self.ping(b"")
        except WebSocketClosedError:
            return
        self.last_ping = now

    def close_going_away(self) -> None:
        """Close with 1001 because the server is shutting down."""
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def _release(self) -> None:
        sub = self._subscriber
        if sub is not None:
            self.extension.broadcaster.unsubscribe(sub)
            self._subscriber = None
            if sub.lagged:
                self.log.info(
                    "sysmon: %s read too slowly; %d of %d frames were dropped (newest kept)",
                    self.request.remote_ip,
                    sub.lagged,
                    sub.lagged + sub.delivered,
                )
        if self._slot is not None:
            self.extension.slots.release(self._slot)
            self._slot = None
        if self._counted:
            self.extension.connection_closed(self)
            self._counted = False

    def _reply(self, text: str) -> None:
        """Answer a client message, unless the client has stopped reading its answers:
        judged by the bytes of replies queued in the server for it, that is written
        while its stream holds what the socket could not take (``IOStream.writing``)."""
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        if stream is None or not stream.writing():
            self._unread_reply_bytes = 0  # everything written so far went out
        elif self._unread_reply_bytes > MAX_UNREAD_REPLY_BYTES:
            self.log.warning(
                "sysmon: closing %s with 1008: %d bytes of replies unread",
                self.request.remote_ip,
                self._unread_reply_bytes,
            )
            self.close(CLOSE_POLICY_VIOLATION, "too many unread replies")
            return
        frame = Frame(text)
        try:
            self._send_frame(frame)
        except WebSocketClosedError:
            return
        if stream is not None and stream.writing():
            self._unread_reply_bytes += len(frame)

    def _send(self, frame: str) -> Any:
        """Write a frame; returns the flush future, or raises if the socket is closed."""
        future = self.write_message(frame)
        future.add_done_callback(_retrieve)
        return future

    def _detach_stream(self) -> Any:
        """Called by tornado once the 101 answer is written: the answer's headers and
        cookies are never read again, so a long-lived connection does not keep them
        (on the fast path only: it reaches into tornado's internals)."""
        if self.fast_path:
            self._headers = httputil.HTTPHeaders()
            self.__dict__.pop("_new_cookie", None)
        return super()._detach_stream()

    def _send_frame(self, frame: Frame) -> Any:
        """Write a broadcast frame: the very bytes every other subscriber gets. Returns
        ``None`` when the socket took it at once, else the flush future; raises if the
        socket is closed."""
        conn = self.ws_connection
        if not self.fast_path:
            return self._send(frame.text)
        deflate = self._framing
        if deflate is _UNKNOWN:
            try:
                deflate = self._framing = framing(conn)
            except NotShareable:
                deflate = self._framing = _OWN_CONTEXT
        if deflate is _OWN_CONTEXT:
            return self._send(frame.text)
        future = write_frame(conn, frame.wire(deflate))
        if future is not None:
            future.add_done_callback(_retrieve)
        return future


def _retrieve(future: Any) -> None:
    # A write to a socket that went away fails; the close path handles it.
    if not future.cancelled():
        future.exception()


class StatusAPIHandler(SysmonRoute, APIHandler):
    """``GET sysmon/api/status``: the latest sample, same shape as a status frame.

    Every group asked for is in the answer, or in its ``errors`` saying why: an
    on-demand group (``processes``, ``users``) the newest sample lacks is waited for,
    one tick at most (``SysmonExtension.status_for_api``), and a caller that polls keeps
    it sampled between its calls (``SysmonExtension.want``)."""

    auth_resource = AUTH_RESOURCE
    #: watching the server is not using it: it must not keep an idle server from culling
    _track_activity = False

    @web.authenticated
    async def get(self) -> None:
        await self._authorize_admin()
        ext = self.extension
        try:
            metrics = parse_metrics(self.get_argument("metrics", ""), ext.metrics)
        except ProtocolError as err:
            raise web.HTTPError(400, err.message) from None
        # A caller is known by where it calls from and what it asks for (a username can
        # be new on each token request, and a proxy is every caller's address).
        ext.want(metrics, caller=f"rest {self.request.remote_ip} {','.join(metrics)}")
        answer = await ext.status_for_api(metrics)
        if answer is None:
            raise web.HTTPError(503, "no sample taken yet; try again in a moment")
        obj, stale_warning = answer
        self.set_header("Cache-Control", "no-store")
        if stale_warning is not None:
            self.set_header("Warning", stale_warning)
        self.finish(dumps(obj))
