"""The routes: ``sysmon/ws`` (WebSocket) and ``sysmon/api/status`` (latest sample).

Both follow jupyter_server's own handlers: authentication first (``ws_authenticated``
/ ``web.authenticated``), then the server's authorizer for ``read`` on ``sysmon``,
then our admin policy. Refusals are JSON, before any upgrade.
"""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import httputil, web
from tornado.ioloop import IOLoop
from tornado.websocket import (
    WebSocketClosedError,
    WebSocketHandler,
    WebSocketProtocol,
    WebSocketProtocol13,
)

from sysmon_nb.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    MAX_MESSAGE_BYTES,
    Error,
    Hello,
    History,
    ProtocolError,
    Subscribed,
    decode_client,
    dumps,
    encode,
    parse_history,
    parse_metrics,
)

from .auth import CredentialsWatcher, watch_credentials
from .broadcaster import Subscriber
from .fanout import PING_FRAME, Frame, NotShareable, SharedDeflateProtocol, framing, write_frame
from .hub_scopes import HubReader, with_readers

if TYPE_CHECKING:
    from .app import SysmonExtension

AUTH_RESOURCE = "sysmon"

#: Replies (``error``, ``subscribed``) a client may leave unflushed before it is closed:
#: a client that sends but never reads must not grow the server's write buffer.
MAX_UNREAD_REPLIES = 32

#: A connection's framing not known yet / it compresses with a context of its own.
_UNKNOWN: Any = object()
_OWN_CONTEXT: Any = object()


class _SysmonAuthMixin:
    """The checks shared by both routes: authorizer, then admin policy."""

    extension: SysmonExtension

    def initialize(self, extension: SysmonExtension) -> None:
        self.extension = extension

    @property
    def identity_provider(self) -> Any:
        """The server's, admitting ``custom:sysmon:read`` hub tokens here only."""
        return with_readers(super().identity_provider)  # type: ignore[misc]

    async def _authorize_admin(self) -> None:
        handler: Any = self
        user = handler.current_user
        if isinstance(user, HubReader):
            return  # the hub granted custom:sysmon:read for this server (hub_scopes)
        allowed = await ensure_async(
            handler.authorizer.is_authorized(handler, user, "read", AUTH_RESOURCE)
        )
        if not allowed:
            raise web.HTTPError(403, "not authorized to read system status")
        decision = self.extension.policy.check(user)
        if not decision.allowed:
            handler.log.warning(
                "sysmon: refused %s: %s", handler.request.remote_ip, decision.reason
            )
            raise web.HTTPError(403, decision.reason)


class StatusWebSocketHandler(_SysmonAuthMixin, WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``GET sysmon/ws``: hello, optional history, then a status frame per sample."""

    auth_resource = AUTH_RESOURCE
    write_error = APIHandler.write_error

    _subscriber: Subscriber | None = None
    _metrics: tuple[str, ...] = ()
    _history: int | None = None
    _counted = False
    _unread_replies = 0
    _watcher: CredentialsWatcher | None = None
    _framing: Any = _UNKNOWN  # found on the connection's first broadcast frame

    def set_default_headers(self) -> None:
        """Undo JupyterHandler's page headers, meaningless for a WebSocket."""

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE_BYTES

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.extension.compression else None

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """tornado's protocol, negotiating deflate without context takeover so that one
        compressed frame serves every client (see :mod:`.fanout`). Keep-alive pings are
        WebSocketMixin's (``ping_callback``), so tornado's own ping task, which reads
        the mixin's milliseconds as seconds, is not started."""
        protocol = super().get_websocket_protocol()
        if type(protocol) is WebSocketProtocol13:
            params = copy.copy(protocol.params)
            params.ping_interval = params.ping_timeout = None
            return SharedDeflateProtocol(self, False, params)
        return protocol

    async def pre_get(self) -> None:
        await self._authorize_admin()
        ext = self.extension
        try:
            self._metrics = parse_metrics(self.get_argument("metrics", ""), ext.metrics)
            asked = parse_history(self.get_argument("history", "0"), sys.maxsize)
        except ProtocolError as err:
            raise web.HTTPError(400, err.message) from None
        # Asked for history: always answer with a history frame, capped to what is kept.
        self._history = min(asked, ext.history) if asked else None
        if len(ext.connections) >= ext.max_connections:
            raise web.HTTPError(503, f"too many sysmon connections (max {ext.max_connections})")
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
        self._watcher = watch_credentials(self, ext.policy, ext.revalidate_interval)
        hello = Hello(
            server=ext.version,
            host=ext.host,
            interval=ext.interval,
            metrics=tuple(ext.metrics),
            subscribed=self._metrics,
            expires_at=self._watcher.expires_at,
            server_id=ext.server_id,
        )
        self._send(encode(hello))
        if self._history is not None:
            samples = ext.broadcaster.history(self._history, self._metrics)
            self._send(encode(History(samples=tuple(samples))))
        self._subscriber = ext.broadcaster.subscribe(self._send_frame, self._metrics)
        self._watcher.start()

    def on_message(self, message: str | bytes) -> None:
        try:
            request = decode_client(message, self.extension.metrics)
        except ProtocolError as err:
            self.log.info("sysmon: ignored client message (%s): %s", err.code, err.message)
            self._reply(encode(Error(code=err.code, message=err.message)))
            return
        if self._subscriber is not None:
            self.extension.broadcaster.change(self._subscriber, request.metrics)
        self._metrics = request.metrics
        self._reply(encode(Subscribed(metrics=request.metrics)))

    def on_close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._release()

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
            write_frame(conn, PING_FRAME)
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
        if self._counted:
            self.extension.connection_closed(self)
            self._counted = False

    def _reply(self, frame: str) -> None:
        """Answer a client message, unless the client has stopped reading its answers."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self._unread_replies >= MAX_UNREAD_REPLIES:
            self.log.warning(
                "sysmon: closing %s: %d replies unread", self.request.remote_ip, MAX_UNREAD_REPLIES
            )
            self.close(CLOSE_POLICY_VIOLATION, "too many unread replies")
            return
        self._unread_replies += 1
        self._send(frame).add_done_callback(self._reply_flushed)

    def _reply_flushed(self, future: Any) -> None:
        self._unread_replies -= 1

    def _send(self, frame: str) -> Any:
        """Write a frame; returns the flush future, or raises if the socket is closed."""
        future = self.write_message(frame)
        future.add_done_callback(_retrieve)
        return future

    def _detach_stream(self) -> Any:
        """Called by tornado once the 101 answer is written: the answer's headers and
        cookies are never read again, so a long-lived connection does not keep them."""
        self._headers = httputil.HTTPHeaders()
        self.__dict__.pop("_new_cookie", None)
        return super()._detach_stream()

    def _send_frame(self, frame: Frame) -> Any:
        """Write a broadcast frame: the very bytes every other subscriber gets. Returns
        ``None`` when the socket took it at once, else the flush future; raises if the
        socket is closed."""
        conn = self.ws_connection
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


class StatusAPIHandler(_SysmonAuthMixin, APIHandler):
    """``GET sysmon/api/status``: the latest sample, same shape as a status frame."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    async def get(self) -> None:
        await self._authorize_admin()
        ext = self.extension
        try:
            metrics = parse_metrics(self.get_argument("metrics", ""), ext.metrics)
        except ProtocolError as err:
            raise web.HTTPError(400, err.message) from None
        ext.want(metrics)
        answer = ext.status_for_api(metrics)
        if answer is None:
            raise web.HTTPError(503, "no sample taken yet; try again in a moment")
        obj, stale_warning = answer
        self.set_header("Cache-Control", "no-store")
        if stale_warning is not None:
            self.set_header("Warning", stale_warning)
        self.finish(dumps(obj))
