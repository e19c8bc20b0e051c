"""Hostile and broken clients cost little and end properly, through a real server: bad
messages are logged rarely and quoted briefly, nothing is parsed once a connection is
condemned, a reading client's bursts are all answered, oversized messages and invalid
UTF-8 get their close codes, and a failing send closes only that connection with 1011.

Every test runs on both write paths (see ``test_handlers``)."""

# The fixtures imported from test_handlers are parameters of the tests below.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from jupyter_server_ext import handlers as handlers_module
from sysmon_nb.protocol import MAX_MESSAGE_BYTES, MAX_QUOTED_CHARS

from .conftest import TEST_INTERVAL, eventually, recv_json, recv_type
from .test_handlers import (  # noqa: F401  (fixtures: both write paths, raw clients)
    fast_path_only,
    masked_text_frame,
    open_raw,
    sysmon_config,
    write_path,
)

#: Just under the 64 KiB limit, and naming an unknown metric: a server that quotes what
#: it refuses would echo all of it.
BIG_BAD = json.dumps({"type": "subscribe", "metrics": ["x" * (MAX_MESSAGE_BYTES - 64)]})


class Records(logging.Handler):
    """Every record the server logs (its ``ServerApp`` and ``SysmonExtension`` loggers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]

    def size_bytes(self) -> int:
        return sum(len(self.format(r)) + 1 for r in self.records)


@pytest.fixture
def server_log(sysmon: Any) -> Iterator[Records]:
    """The server's log records from now on (its start has configured logging)."""
    records = Records()
    loggers = [logging.getLogger("ServerApp"), logging.getLogger("SysmonExtension")]
    for logger in loggers:
        logger.addHandler(records)
    yield records
    for logger in loggers:
        logger.removeHandler(records)


async def follow(ws: Any, seqs: list[int]) -> None:
    """Record the seq of every status frame ``ws`` receives, until cancelled."""
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "status":
            seqs.append(frame["seq"])


async def test_a_flood_of_bad_messages_costs_one_log_line_and_spares_the_others(
    server_log: Records, connect: Any, sysmon: Any
) -> None:
    async with (
        connect("metrics=cpu") as bystander,
        connect("metrics=cpu", max_size=None) as flooder,
    ):
        await recv_json(bystander)
        await recv_json(flooder)
        errors: list[dict[str, Any]] = []

        async def read_answers() -> None:
            async for text in flooder:
                answer = json.loads(text)
                if answer["type"] == "error":
                    errors.append(answer)

        seen: list[int] = []
        tasks = [asyncio.create_task(read_answers()), asyncio.create_task(follow(bystander, seen))]
        before = server_log.size_bytes()
        sent, end = 0, time.monotonic() + 8 * TEST_INTERVAL
        while time.monotonic() < end:
            await flooder.send(BIG_BAD)
            sent += 1
        await eventually(lambda: len(errors) == sent)
        during = server_log.size_bytes() - before
        for task in tasks:
            task.cancel()
    # the bystander's frames kept coming, in order, at the interval
    assert len(seen) >= 4, seen
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    # every bad message was answered, briefly: ~100 characters of its content at most
    assert all(e["code"] == "unknown_metric" for e in errors)
    assert max(e["message"].count("x") for e in errors) <= MAX_QUOTED_CHARS
    assert max(len(e["message"]) for e in errors) < 300
    assert sent > 50
    # one line for the whole flood (and one more at close with the count), not one each
    assert during < 10_000, during
    (line,) = server_log.matching("ignored a message from")
    assert len(line.getMessage()) < 400
    await eventually(lambda: server_log.matching("more ignored messages"))
    (closing,) = server_log.matching("more ignored messages")
    assert f"; {sent - 1} more ignored messages" in closing.getMessage()


async def test_a_burst_of_subscribes_from_a_reader_is_all_answered(connect: Any) -> None:
    async with connect("metrics=cpu") as ws:
        await recv_json(ws)
        wanted = [["cpu"], ["memory"], ["cpu", "memory"], ["disk"]]
        for i in range(40):
            await ws.send(json.dumps({"type": "subscribe", "metrics": wanted[i % 4]}))
        answers = []
        for _ in range(400):
            frame = await recv_json(ws)
            if frame["type"] == "subscribed":
                answers.append(frame["metrics"])
                if len(answers) == 40:
                    break
        assert answers == [wanted[i % 4] for i in range(40)]
        assert set(await recv_type(ws, "status")) >= {"disk"}  # and it streams on


async def test_nothing_is_parsed_once_a_connection_is_condemned(
    connect: Any, sysmon: Any, open_raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []
    decode = handlers_module.decode_client

    def counting(message: Any, offered: Any) -> Any:
        parsed.append(message)
        return decode(message, offered)

    monkeypatch.setattr(handlers_module, "decode_client", counting)
    sock = await open_raw("metrics=memory")
    try:
        await eventually(lambda: any(h._metrics == ("memory",) for h in sysmon.connections))
        (handler,) = [h for h in sysmon.connections if h._metrics == ("memory",)]
        conn = handler.ws_connection
        handler.close(1008, "condemned")  # as for a client that stopped reading
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, masked_text_frame(b"not json") * 50)
        await eventually(lambda: conn.stream.closed(), timeout=15)
    finally:
        sock.close()
    assert parsed == []


@fast_path_only
async def test_oversized_messages_close_1009_whatever_their_size(
    connect: Any, write_path: str
) -> None:
    async with connect("metrics=cpu") as bystander:
        await recv_json(bystander)
        for size in (MAX_MESSAGE_BYTES + 1, 1024 * 1024):
            async with connect("metrics=cpu", compression=None) as ws:
                await recv_json(ws)
                with pytest.raises(websockets.ConnectionClosed) as excinfo:
                    await ws.send("x" * size)
                    for _ in range(50):
                        await recv_json(ws)
                assert excinfo.value.rcvd is not None, size  # a close frame, not 1006
                assert excinfo.value.rcvd.code == 1009
        assert "cpu" in await recv_type(bystander, "status")


@fast_path_only
async def test_invalid_utf8_closes_1007(connect: Any, write_path: str) -> None:
    async with connect("metrics=cpu") as bystander:
        await recv_json(bystander)
        for compression in (None, "deflate"):
            async with connect("metrics=cpu", compression=compression) as ws:
                await recv_json(ws)
                with pytest.raises(websockets.ConnectionClosed) as excinfo:
                    await ws.send(b'{"type": "\xff\xfe"}' + os.urandom(8), text=True)
                    for _ in range(50):
                        await recv_json(ws)
                assert excinfo.value.rcvd is not None and excinfo.value.rcvd.code == 1007
        assert "cpu" in await recv_type(bystander, "status")


async def test_a_send_that_fails_closes_that_connection_1011_and_says_so_once(
    server_log: Records, connect: Any, sysmon: Any
) -> None:
    async with connect("metrics=cpu") as bystander, connect("metrics=memory") as victim:
        await recv_json(bystander)
        await recv_json(victim)
        await eventually(lambda: any(h._metrics == ("memory",) for h in sysmon.connections))
        (handler,) = [h for h in sysmon.connections if h._metrics == ("memory",)]

        def broken(frame: Any) -> Any:
            raise RuntimeError("a bug in the write path")

        handler._subscriber._send = broken
        with pytest.raises(websockets.ConnectionClosed) as excinfo:
            for _ in range(20):
                await recv_json(victim)
        assert excinfo.value.rcvd is not None and excinfo.value.rcvd.code == 1011
        seen: list[int] = []
        watching = asyncio.create_task(follow(bystander, seen))
        await eventually(lambda: len(seen) >= 3)
        watching.cancel()
    (line,) = server_log.matching("sending it a frame failed")
    assert line.levelno == logging.WARNING
    assert "a bug in the write path" in line.getMessage()


def read_close_code(sock: socket.socket) -> tuple[int | None, bool]:
    """Everything the server sent ``sock`` (after the handshake): the close code among
    its frames (or None), and whether the connection ended with a reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(10)
    data, reset = b"", False
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        reset = True
    code = None
    while len(data) >= 2:  # server frames: unmasked
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if data[0] & 0x0F == 0x8:
            code = int.from_bytes(data[start : start + 2], "big")
        data = data[start + length :]
    return code, reset


@fast_path_only
async def test_a_refused_message_gets_its_1009_even_behind_a_backlog(
    connect: Any, sysmon: Any, open_raw: Any, write_path: str
) -> None:
    """A client that has not read for a while sends more than the limit (and is still
    sending when the server refuses it). Closing the socket at once, with what the
    client sent unread, resets the connection and throws away the frames still queued
    for it, the close frame among them: the client would see 1006."""
    sock = await open_raw("")
    try:
        await eventually(lambda: len(sysmon.connections) == 1)
        (handler,) = sysmon.connections
        stream = handler.ws_connection.stream
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await eventually(stream.writing)  # status frames are backing up
        size = 1024 * 1024
        header = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big") + os.urandom(4)
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        await loop.sock_sendall(sock, header + b"x" * 100_000)  # the rest never comes
        await eventually(lambda: not sysmon.connections)  # refused, and we read only now
        # (with buffers this small, TCP's silly-window avoidance would crawl: open them)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setblocking(True)
        code, reset = await loop.run_in_executor(None, read_close_code, sock)
    finally:
        sock.close()
    assert (code, reset) == (1009, False)
