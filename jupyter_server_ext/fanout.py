"""Frames built once and written to many connections.

tornado's ``write_message`` frames the message, compresses it with the connection's
own deflate context, and wraps the write in a task, for every connection. A broadcast
sends every connection the same message, so here a message's wire bytes are built once
(:class:`Frame`), compressed once for all connections that agreed to
``server_no_context_takeover`` (which :class:`SharedDeflateProtocol` negotiates), and
:func:`write_frame` hands the same bytes to each socket: straight to the socket when
nothing is buffered for it, through the connection's stream otherwise, so order, flow
control, pings and the close handshake stay tornado's.

Nothing on the wire changes: the frames are byte for byte what ``write_message`` sends
to a connection without deflate context takeover.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NamedTuple

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol13

_FIN = 0x80
_RSV1 = 0x40
_TEXT = 0x1
_PING = 0x9

#: A complete ping frame with no payload (control frames are never compressed).
PING_FRAME = bytes([_FIN | _PING, 0])


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


class SharedDeflateProtocol(WebSocketProtocol13):
    """tornado's protocol, accepting permessage-deflate without context takeover.

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
    if type(stream) is IOStream and not stream.writing():
        try:
            sent = stream.socket.send(data)
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
