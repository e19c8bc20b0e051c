"""Fan-out, history and slow subscribers, with recording senders (no server)."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import Any

import pytest
from tornado.websocket import (
    WebSocketProtocol13,
    _PerMessageDeflateCompressor,
    _WebSocketParams,
)

from jupyter_server_ext.broadcaster import SystemStatusBroadcaster
from jupyter_server_ext.fanout import Deflate, Frame, NotShareable, framing
from sysmon_nb.protocol import Status


def sample(seq: int) -> Status:
    return Status(
        seq=seq,
        time=1000.0 + seq,
        host="h",
        interval=1.0,
        groups={"cpu": {"percent": float(seq)}, "memory": {"total_bytes": seq}},
    )


class Recorder:
    """A connection that takes every frame at once."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)

    @property
    def seqs(self) -> list[int]:
        return [json.loads(f.text)["seq"] for f in self.frames]


class Stalled:
    """A connection whose writes never complete until ``release`` (a client not reading)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.frames: list[Frame] = []
        self.futures: list[asyncio.Future[None]] = []

    def __call__(self, frame: Frame) -> asyncio.Future[None]:
        self.frames.append(frame)
        future = self.loop.create_future()
        self.futures.append(future)
        return future

    def release(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


def test_same_subscription_shares_one_encoded_frame() -> None:
    b = SystemStatusBroadcaster(history=10, buffer_size=4)
    clients = [Recorder() for _ in range(3)]
    for c in clients:
        b.subscribe(c, ("cpu",))
    other = Recorder()
    b.subscribe(other, ("memory",))
    b.publish(sample(1))
    assert all(len(c.frames) == 1 for c in clients)
    # the very same string object: encoded once for the set, not once per client
    assert clients[0].frames[0] is clients[1].frames[0] is clients[2].frames[0]
    assert set(json.loads(clients[0].frames[0].text)) >= {"cpu"}
    assert "memory" not in json.loads(clients[0].frames[0].text)
    assert "cpu" not in json.loads(other.frames[0].text)


def test_history_is_bounded_oldest_first_and_subset() -> None:
    b = SystemStatusBroadcaster(history=5, buffer_size=4)
    for seq in range(1, 21):
        b.publish(sample(seq))
    past = b.history(3, ("memory",))
    assert [s.seq for s in past] == [18, 19, 20]
    assert all(set(s.groups) == {"memory"} for s in past)
    assert [s.seq for s in b.history(100, ("cpu",))] == [16, 17, 18, 19, 20]
    assert b.history(0, ("cpu",)) == []
    assert b.latest is not None and b.latest.seq == 20


def test_history_zero_keeps_nothing_but_latest() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=4)
    b.publish(sample(1))
    assert b.history(10, ("cpu",)) == []
    assert b.latest is not None


def test_unsubscribe_and_change() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=4)
    rec = Recorder()
    sub = b.subscribe(rec, ("cpu",))
    b.publish(sample(1))
    b.change(sub, ("memory",))
    b.publish(sample(2))
    assert "memory" in json.loads(rec.frames[-1].text) and "cpu" not in json.loads(
        rec.frames[-1].text
    )
    b.unsubscribe(sub)
    b.unsubscribe(sub)  # idempotent
    b.publish(sample(3))
    assert rec.seqs == [1, 2]
    assert len(b) == 0


async def test_a_stalled_client_delays_nobody_and_holds_a_bounded_buffer() -> None:
    loop = asyncio.get_running_loop()
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    stalled = Stalled(loop)
    slow = b.subscribe(stalled, ("cpu",))
    fast = Recorder()
    b.subscribe(fast, ("cpu",))
    for seq in range(1, 101):
        b.publish(sample(seq))
    assert fast.seqs == list(range(1, 101))  # every frame, in order, none lost
    assert len(stalled.frames) == 1  # one write in flight, never acknowledged
    assert slow.pending == 3  # bounded: 3 queued, whatever the backlog
    assert slow.lagged == 96  # 100 published - 1 in flight - 3 queued
    # the client resumes: it gets the newest queued frames, in order
    for _ in range(10):
        stalled.release()
        await asyncio.sleep(0)
    assert [json.loads(f.text)["seq"] for f in stalled.frames] == [1, 98, 99, 100]
    assert slow.pending == 0


async def test_failed_write_drops_the_subscriber() -> None:
    loop = asyncio.get_running_loop()
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    stalled = Stalled(loop)
    sub = b.subscribe(stalled, ("cpu",))
    b.publish(sample(1))
    stalled.futures[0].set_exception(ConnectionResetError("gone"))
    await asyncio.sleep(0)
    assert sub.closed
    b.publish(sample(2))
    assert len(b) == 0
    assert len(stalled.frames) == 1


def test_send_that_raises_drops_only_that_subscriber_and_tells_its_connection() -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    told: list[BaseException] = []

    def broken(frame: Frame) -> Any:
        raise RuntimeError("a bug")

    b.subscribe(broken, ("cpu",), on_error=told.append)
    ok = Recorder()
    b.subscribe(ok, ("cpu",))
    b.publish(sample(1))
    b.publish(sample(2))
    assert ok.seqs == [1, 2]
    assert len(b) == 1
    assert [str(e) for e in told] == ["a bug"]  # once, not once per sample


async def test_a_write_that_fails_later_tells_the_connection() -> None:
    loop = asyncio.get_running_loop()
    b = SystemStatusBroadcaster(history=0, buffer_size=3)
    stalled = Stalled(loop)
    told: list[BaseException] = []
    sub = b.subscribe(stalled, ("cpu",), on_error=told.append)
    b.publish(sample(1))
    stalled.futures[0].set_exception(ConnectionResetError("gone"))
    await asyncio.sleep(0)
    assert sub.closed and isinstance(told[0], ConnectionResetError)


def test_a_send_error_with_nobody_to_tell_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = SystemStatusBroadcaster(history=0, buffer_size=3)

    def broken(frame: Frame) -> Any:
        raise RuntimeError("a bug")

    b.subscribe(broken, ("cpu",))
    with caplog.at_level(logging.WARNING, logger="sysmon_nb.broadcaster"):
        b.publish(sample(1))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "a bug" in caplog.records[0].getMessage()


def test_history_frame_is_encoded_once_until_the_next_sample() -> None:
    b = SystemStatusBroadcaster(history=10, buffer_size=3)
    for seq in range(1, 6):
        b.publish(sample(seq))
    first = b.history_frame(3, ("cpu",))
    assert b.history_frame(3, ("cpu",)) is first  # shared
    assert b.history_frame(300, ("cpu",)) is not first  # another length (5 kept)
    assert b.history_frame(300, ("cpu",)) is b.history_frame(5, ("cpu",))  # capped alike
    assert b.history_frame(3, ("memory",)) is not first  # another subscription
    body = json.loads(first.text)
    assert body["type"] == "history" and [s["seq"] for s in body["samples"]] == [3, 4, 5]
    assert all(set(s) >= {"cpu"} and "memory" not in s for s in body["samples"])
    b.publish(sample(6))  # a new sample: what was kept is stale
    fresh = b.history_frame(3, ("cpu",))
    assert fresh is not first
    assert [s["seq"] for s in json.loads(fresh.text)["samples"]] == [4, 5, 6]
    b.history_frames_kept = 0  # the uncached path, for the benchmark's reference
    assert b.history_frame(3, ("cpu",)) is not b.history_frame(3, ("cpu",))


def test_history_frames_kept_are_bounded() -> None:
    b = SystemStatusBroadcaster(history=50, buffer_size=3)
    for seq in range(1, 51):
        b.publish(sample(seq))
    for count in range(1, 51):
        b.history_frame(count, ("cpu",))
    assert len(b._history_frames) <= b.history_frames_kept


# -- frames built once (fanout) --------------------------------------------------------


def tornado_frame(text: str, compressed: bool) -> bytes:
    """What tornado's own write path puts on the wire for ``text`` to one client."""
    written: list[bytes] = []

    class Stream:
        def write(self, data: bytes) -> None:
            written.append(data)

    class Handler:
        pass

    params = _WebSocketParams(compression_options={} if compressed else None)
    proto = WebSocketProtocol13(Handler(), False, params)  # type: ignore[arg-type]
    proto.stream = Stream()  # type: ignore[assignment]
    if compressed:
        proto._create_compressors("server", {"server_no_context_takeover": None}, {})
    message = text.encode()
    flags = 0
    if proto._compressor is not None:
        message = proto._compressor.compress(message)
        flags = proto.RSV1
    proto._write_frame(True, 0x1, message, flags)
    return written[0]


@pytest.mark.parametrize("size", [10, 125, 126, 2000, 70000])
def test_frame_bytes_match_tornados_plain_and_deflated(size: int) -> None:
    text = json.dumps({"type": "status", "pad": "é" + "x" * size})
    frame = Frame(text)
    assert frame.wire() == tornado_frame(text, compressed=False)
    deflate = Deflate(level=6, mem_level=8, wbits=15)
    assert frame.wire(deflate) == tornado_frame(text, compressed=True)
    # built once per framing, then shared
    assert frame.wire() is frame.wire()
    assert frame.wire(deflate) is frame.wire(Deflate(6, 8, 15))
    deflated = frame.wire(deflate)
    assert deflated[0] == 0xC1  # FIN, RSV1 (compressed), text
    length = deflated[1] & 0x7F
    body = deflated[{126: 4, 127: 10}.get(length, 2) :]
    assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff").decode() == text


def test_framing_refuses_a_connection_with_its_own_deflate_context() -> None:
    class Conn:
        _compressor = None

    assert framing(Conn()) is None
    conn = Conn()
    conn._compressor = _PerMessageDeflateCompressor(persistent=False, max_wbits=12)  # type: ignore[assignment]
    assert framing(conn) == Deflate(level=6, mem_level=8, wbits=12)
    conn._compressor = _PerMessageDeflateCompressor(persistent=True, max_wbits=15)  # type: ignore[assignment]
    with pytest.raises(NotShareable):
        framing(conn)
