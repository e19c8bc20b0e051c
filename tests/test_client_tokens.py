"""StatusClient with a ``token_source`` (what the fleet gives each server's stream): the
credential is asked for before each connection, ``reconnect()`` moves the stream to the
next one at once, a connection that opened with a replaced credential is never read,
and a token source that refuses stops the client without connecting. Real websockets
servers in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from sysmon_nb.client import RefusedError, StatusClient
from sysmon_nb.protocol import Hello, Status, encode

from .conftest import eventually


def hello() -> str:
    return encode(Hello(server="t", host="fake", interval=0.05, metrics=("cpu",),
                        subscribed=("cpu",), server_id="one"))  # fmt: skip


class Server:
    """Serves each connection a hello then a sample every 50 ms; records each request's
    ``Authorization`` and path. ``hold`` (when set) keeps handshakes waiting."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.seq = 0

    async def process_request(self, connection: ServerConnection, request: Any) -> None:
        self.seen.append((request.headers.get("Authorization", ""), request.path))
        if self.hold is not None:
            await self.hold.wait()

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(hello())
        with contextlib.suppress(Exception):
            while True:
                self.seq += 1
                sample = Status(seq=self.seq, time=float(self.seq), host="fake",
                                interval=0.05, groups={"cpu": {"percent": 1.0}})  # fmt: skip
                await ws.send(encode(sample))
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    async with serve(server.handler, "127.0.0.1", 0, process_request=server.process_request) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        yield server, f"ws://127.0.0.1:{port}/sysmon/ws"


class Tokens:
    """A token source handing out ``t1``, ``t2``... (the next one after ``bump()``)."""

    def __init__(self) -> None:
        self.n = 1
        self.asked = 0

    async def __call__(self) -> str:
        self.asked += 1
        return f"t{self.n}"

    def bump(self) -> None:
        self.n += 1


async def test_reconnect_moves_the_stream_to_the_next_credential_at_once() -> None:
    tokens = Tokens()
    async with running() as (server, url):
        client = StatusClient(url, token_source=tokens, history=1,
                              backoff=lambda n: 60.0)  # fmt: skip
        samples: list[Status] = []
        reading = asyncio.ensure_future(collect(client, samples))
        try:
            await eventually(lambda: len(samples) >= 3)
            assert client.credential == "t1" and client.connections == 1
            tokens.bump()
            await client.reconnect()
            await eventually(lambda: client.connections == 2 and client.credential == "t2")
            count = len(samples)
            await eventually(lambda: len(samples) > count + 2)  # the stream goes on
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    # no backoff wait (it would be 60 s), and the samples missed were asked for
    assert [auth for auth, _ in server.seen] == ["token t1", "token t2"]
    assert "history=" in server.seen[1][1]
    seqs = [s.seq for s in samples]
    assert seqs == sorted(set(seqs))  # nothing seen twice across the reconnect
    assert client.credential is None  # no connection any more


async def test_a_connection_opened_with_a_replaced_credential_is_closed_unread() -> None:
    tokens = Tokens()
    async with running() as (server, url):
        server.hold = asyncio.Event()
        client = StatusClient(url, token_source=tokens, backoff=lambda n: 60.0)
        messages: list[Any] = []
        reading = asyncio.ensure_future(collect_messages(client, messages))
        try:
            await eventually(lambda: len(server.seen) == 1)  # opening with t1
            assert client.credential == "t1"
            tokens.bump()
            await client.reconnect()  # no connection yet: nothing to close
            server.hold.set()
            await eventually(lambda: client.credential == "t2" and len(messages) >= 2)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    assert [auth for auth, _ in server.seen] == ["token t1", "token t2"]
    assert client.connections == 1  # the t1 connection's hello was never read


async def test_a_token_source_that_refuses_stops_the_client_without_connecting() -> None:
    async def refuse() -> str:
        raise RefusedError("the fleet's token may not read cat/")

    async with running() as (server, url):
        client = StatusClient(url, token_source=refuse)
        with pytest.raises(RefusedError, match="may not read cat/"):
            await collect(client, [])
    assert server.seen == [] and client.state.phase == "refused"
    assert client.state.describe() == "refused: the fleet's token may not read cat/"


async def test_a_token_source_that_fails_is_retried_like_a_failed_connection() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("the hub is restarting")
        return "t1"

    async with running() as (server, url):
        retries: list[int] = []
        client = StatusClient(url, token_source=flaky,
                              backoff=lambda n: retries.append(n) or 0.01)  # fmt: skip
        messages: list[Any] = []
        reading = asyncio.ensure_future(collect_messages(client, messages))
        try:
            await eventually(lambda: len(messages) >= 1)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    assert retries == [0, 1] and [auth for auth, _ in server.seen] == ["token t1"]


def test_a_token_and_a_token_source_are_one_too_many() -> None:
    from sysmon_nb.client import ClientError

    async def source() -> str:
        return "x"

    with pytest.raises(ClientError, match="not both"):
        StatusClient("ws://h/sysmon/ws", "t", token_source=source)


async def collect(client: StatusClient, into: list[Status]) -> None:
    async for status in client:
        into.append(status)


async def collect_messages(client: StatusClient, into: list[Any]) -> None:
    async for message in client.messages():
        into.append(message)
