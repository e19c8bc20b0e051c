"""Frames built once and written to many connections.

tornado's ``write_message`` frames the message, compresses it with the connection's
own deflate context, and wraps the write in a task, for every connection. A broadcast
sends every connection the same message, so here a message's wire bytes are built once
(:class:`Frame`), compressed once for all connections that agreed to
``server_no_context_takeover`` (which :class:`SysmonProtocol` negotiates), and
:func:`write_frame` hands the same bytes to each socket: straight to the socket when
nothing is buffered for it, through the connection's stream otherwise, so order, flow
control, pings and the close handshake stay tornado's.

Nothing on the wire changes: the frames are byte for byte what ``write_message`` sends
to a connection without deflate context takeover.

:class:`SysmonProtocol` also ends a connection properly where tornado drops it: an
oversized message (1009) or invalid UTF-8 (1007) gets its close frame, and the server
reads and discards what the client was still sending before closing the socket
(closing it with unread data would send a TCP reset that destroys the close frame on
its way: the client would see 1006).

All of this reaches into tornado's internals. :func:`missing_internals` checks, once at
start-up, that they are there; where they are not, the extension uses tornado's public
``write_message`` path and its own protocol and compression instead.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import sys
import zlib
from typing import Any, NamedTuple

import tornado.websocket
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol13

from sysmon_nb.protocol import CLOSE_INVALID_DATA

_FIN = 0x80
_RSV1 = 0x40
_TEXT = 0x1
_PING = 0x9

#: A complete ping frame with no payload (control frames are never compressed).
PING_FRAME = bytes([_FIN | _PING, 0])

#: After sending a close frame to a client that is still sending, how long (s) and how
#: many bytes the server reads and discards, waiting for the client to finish, before it
#: closes the socket anyway.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024

#: What the direct path calls or reads on tornado's classes (methods, and attributes of
#: a protocol and a deflate compressor as tornado builds them).
PROTOCOL_METHODS = ("_create_compressors", "_handle_message", "_abort", "is_closing")
PROTOCOL_ATTRIBUTES = ("_compressor", "_wire_bytes_out", "client_terminated", "server_terminated")
COMPRESSOR_ATTRIBUTES = ("_compressor", "_compression_level", "_mem_level", "_max_wbits")


def missing_internals() -> list[str]:
    """The tornado internals the direct path needs that this tornado lacks: ``[]`` when
    every one is there. Cheap; called once at start-up."""
    missing = [
        f"WebSocketProtocol13.{name}"
        for name in PROTOCOL_METHODS
        if not callable(getattr(WebSocketProtocol13, name, None))
    ]
    if not callable(getattr(WebSocketHandler, "_detach_stream", None)):
        missing.append("WebSocketHandler._detach_stream")
    if "socket" not in inspect.signature(IOStream).parameters:
        missing.append("IOStream.socket")
    try:
        params = tornado.websocket._WebSocketParams(compression_options={})
        protocol = WebSocketProtocol13(_NoHandler(), False, params)  # type: ignore[arg-type]
        missing += [
            f"WebSocketProtocol13().{name}"
            for name in PROTOCOL_ATTRIBUTES
            if not hasattr(protocol, name)
        ]
        compressor = tornado.websocket._PerMessageDeflateCompressor(persistent=False, max_wbits=15)
        missing += [
            f"_PerMessageDeflateCompressor().{name}"
            for name in COMPRESSOR_ATTRIBUTES
            if not hasattr(compressor, name)
        ]
    except (AttributeError, TypeError, ValueError) as err:
        missing.append(f"tornado.websocket internals ({type(err).__name__}: {err})")
    return missing


class _NoHandler:
    """Stands in for a handler while a protocol object is built to be inspected."""


class Deflate(NamedTuple):
    """The compressor settings a connection's permessage-deflate frames are built with."""

    level: int
    mem_level: int
    wbits: int


def _header(first: int, length: int) -> bytes:
    """A server frame's header (servers never mask)."""
    if length < 126:
        return struct.pack("!BB", first, length)
    if length <= 0xFFFF:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def deflate_payload(payload: bytes, deflate: Deflate) -> bytes:
    """``payload`` compressed as one permessage-deflate message without context."""
    compressor = zlib.compressobj(deflate.level, zlib.DEFLATED, -deflate.wbits, deflate.mem_level)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # RFC 7692 7.2.1: drop the trailing 00 00 ff ff


class Frame:
    """One text message and its wire bytes, built on first use for each framing (plain,
    or deflated with given settings) and then shared by every connection."""

    __slots__ = ("_wire", "payload", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.payload = text.encode()
        self._wire: dict[Deflate | None, bytes] = {}

    def wire(self, deflate: Deflate | None = None) -> bytes:
        """The complete frame: header and (compressed) payload."""
        data = self._wire.get(deflate)
        if data is None:
            if deflate is None:
                data = _header(_FIN | _TEXT, len(self.payload)) + self.payload
            else:
                body = deflate_payload(self.payload, deflate)
                data = _header(_FIN | _RSV1 | _TEXT, len(body)) + body
            self._wire[deflate] = data
        return data

    def __len__(self) -> int:
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Frame({len(self.payload)} bytes)"


class SysmonProtocol(WebSocketProtocol13):
    """tornado's protocol, accepting permessage-deflate without context takeover, and
    sending the close frame tornado leaves out (1009 for every oversized message, 1007
    for invalid UTF-8).

    RFC 7692 lets a server add ``server_no_context_takeover`` (and
    ``client_no_context_takeover``) to its answer even when the client did not offer
    them. Without context takeover each message is compressed on its own, so one
    compressed frame serves every connection, and no connection keeps a deflate or
    inflate context between messages.
    """

    def _create_compressors(
        self,
        side: str,
        agreed_parameters: dict[str, Any],
        compression_options: dict[str, Any] | None = None,
    ) -> None:
        if side == "server":
            # The handshake answer is built from this dict after this call.
            agreed_parameters["server_no_context_takeover"] = None
            agreed_parameters["client_no_context_takeover"] = None
        super()._create_compressors(side, agreed_parameters, compression_options)

    # -- ending a connection properly ------------------------------------------------

    _lingering = False
    _linger_task: asyncio.Task[None] | None = None

    def _abort(self) -> None:
        """tornado calls this to drop the connection at once: after sending 1009 for an
        oversized message, on invalid UTF-8 (with no close frame), and when the
        connection ends. Where a close frame is out and the client may still be sending,
        linger instead (see :meth:`_linger`)."""
        if self._lingering:
            return  # the linger task closes the stream when it is done
        stream = self.stream
        if isinstance(sys.exc_info()[1], UnicodeDecodeError) and not self.server_terminated:
            # tornado is handling a text message that is not UTF-8 (RFC 6455 8.1).
            self.close(CLOSE_INVALID_DATA, "text message is not valid UTF-8")
        if (
            self.server_terminated
            and not self.client_terminated
            and stream is not None
            and not stream.closed()
            and not stream.reading()
        ):
            self._lingering = True
            self.client_terminated = True  # tornado reads no further frame
            self._linger_task = asyncio.ensure_future(self._linger(stream))
            return
        super()._abort()

    async def _linger(self, stream: IOStream) -> None:
        """Flush our close frame, shut our side (the client sees it end), then read and
        discard what the client still sends until it closes (bounded in time and bytes),
        so that closing the socket sends no reset."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        budget = LINGER_BYTES
        try:
            await asyncio.wait_for(stream.write(b""), LINGER_SECONDS)
            sock = getattr(stream, "socket", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_WR)
            while budget > 0:
                chunk = await asyncio.wait_for(
                    stream.read_bytes(65536, partial=True), deadline - loop.time()
                )
                budget -= len(chunk)
        except (StreamClosedError, OSError, asyncio.TimeoutError):
            pass  # the client closed (what we waited for), or took too long
        finally:
            self._lingering = False
            super()._abort()


class NotShareable(Exception):
    """The connection compresses with a context of its own: use ``write_message``."""


def framing(conn: Any) -> Deflate | None:
    """How ``conn`` frames server messages: ``None`` for plain frames, or the deflate
    settings shared frames are compressed with. Raises :class:`NotShareable` when the
    connection keeps a deflate context (its frames are its own)."""
    compressor = getattr(conn, "_compressor", None)
    if compressor is None:
        return None
    try:
        if compressor._compressor is not None:
            raise NotShareable
        return Deflate(compressor._compression_level, compressor._mem_level, compressor._max_wbits)
    except AttributeError:
        raise NotShareable from None


def write_frame(conn: Any, data: bytes) -> Any:
    """Write a complete frame's bytes to a WebSocket connection.

    Returns ``None`` when the socket took all of it at once, else the stream's future,
    which resolves once the rest is written (a slow reader: the caller waits for it
    before writing more). Raises :class:`WebSocketClosedError` if the connection is
    closed or closing.
    """
    if conn is None or conn.is_closing():
        raise WebSocketClosedError()
    stream = conn.stream
    if stream.closed():
        raise WebSocketClosedError()
    sock = getattr(stream, "socket", None)
    if type(stream) is IOStream and sock is not None and not stream.writing():
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # the stream's own write meets the error and closes properly
        if sent == len(data):
            conn._wire_bytes_out += sent
            return None
        data = data[sent:]
        conn._wire_bytes_out += sent
    try:
        future = stream.write(data)
    except StreamClosedError:
        raise WebSocketClosedError() from None
    conn._wire_bytes_out += len(data)
    return future
