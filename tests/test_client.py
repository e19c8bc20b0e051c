"""StatusClient against a real jupyter_server, and against small real websockets servers
for the cases a healthy server never produces (4401/4403, bad frames, a dropped link)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from sysmon_nb.client import (
    MAX_FRAME_BYTES,
    ClientError,
    ConnectionState,
    RefusedError,
    StatusClient,
    authorization,
    endpoint_url,
    full_jitter,
    jwt_expires_at,
    looks_like_jwt,
)
from sysmon_nb.protocol import (
    BY_NAME_ONLY,
    CLOSE_CREDENTIALS_EXPIRED,
    CLOSE_NOT_ADMIN,
    Hello,
    History,
    Status,
    Subscribed,
    encode,
)

from . import jwt_tools
from .conftest import eventually
from .servers import TOKEN, JupyterProcess, free_port

# -- pure parts -------------------------------------------------------------------------


def test_full_jitter_doubles_from_half_a_second_to_thirty() -> None:
    top = [full_jitter(n, rng=lambda: 1.0) for n in range(9)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert [full_jitter(n, rng=lambda: 0.0) for n in range(3)] == [0.0, 0.0, 0.0]
    assert all(0 <= full_jitter(n) <= min(30.0, 0.5 * 2**n) for n in range(40))
    assert full_jitter(10_000, rng=lambda: 1.0) == 30.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8888/", "ws://127.0.0.1:8888/sysmon/ws"),
        ("https://hub.example/user/ann/", "wss://hub.example/user/ann/sysmon/ws"),
        ("http://h:1/base?token=abc", "ws://h:1/base/sysmon/ws"),
        ("ws://h:1/x/sysmon/ws", "ws://h:1/x/sysmon/ws"),
    ],
)
def test_endpoint_url(url: str, expected: str) -> None:
    assert endpoint_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://h/", "127.0.0.1:8888", ""])
def test_endpoint_url_refuses_what_is_not_a_server_url(url: str) -> None:
    with pytest.raises(ClientError, match="not a server URL"):
        endpoint_url(url)


def test_states_describe_themselves() -> None:
    assert ConnectionState("connected").describe() == "connected"
    assert ConnectionState("reconnecting", "x", 112.2).describe(now=100.0) == "reconnecting in 13 s"
    assert ConnectionState("refused", "HTTP 403: no").describe() == "refused: HTTP 403: no"


def test_a_jwt_is_told_from_a_jupyter_token() -> None:
    jwt = jwt_tools.token()
    assert looks_like_jwt(jwt)
    assert looks_like_jwt(jwt_tools.raw_token({"alg": "none"}, {"sub": "x"}))  # no signature
    for other in ("0123456789abcdef" * 3, "a.b.c", "x" * 40 + ".y.z", "", "..", jwt + ".x"):
        assert not looks_like_jwt(other), other
    assert jwt_expires_at(jwt_tools.token(exp=1234)) == 1234.0
    assert jwt_expires_at(jwt_tools.token(exp=None)) is None
    assert jwt_expires_at("not-a-jwt") is None


def test_a_jwt_goes_as_bearer_unless_the_scheme_says_otherwise() -> None:
    jwt = jwt_tools.token()
    assert authorization(jwt) == f"Bearer {jwt}"
    assert authorization("abc123") == "token abc123"
    assert authorization(jwt, "token") == f"token {jwt}"
    assert authorization(jwt, "TOKEN") == f"token {jwt}"
    assert authorization("abc123", "bearer") == "Bearer abc123"
    with pytest.raises(ClientError, match="scheme must be one of token, bearer"):
        authorization("abc123", "basic")


# -- a real jupyter_server (pytest-jupyter) --------------------------------------------


@pytest.fixture
def client_for(
    sysmon: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str, jp_auth_header: Any
) -> Callable[..., StatusClient]:
    token = jp_auth_header["Authorization"].split(" ", 1)[1]

    def make(**kwargs: Any) -> StatusClient:
        return StatusClient(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", token, **kwargs)

    return make


async def take(stream: AsyncIterator[Any], count: int, timeout: float = 20.0) -> list[Any]:
    """The next ``count`` items of ``stream``, bounded in time; the stream is closed."""
    items: list[Any] = []

    async def run() -> None:
        async with contextlib.aclosing(stream) as s:  # type: ignore[type-var]
            async for item in s:
                items.append(item)
                if len(items) >= count:
                    return

    await asyncio.wait_for(run(), timeout)
    return items


async def test_receives_hello_then_status_from_a_real_server(
    client_for: Callable[..., StatusClient], sysmon: Any
) -> None:
    states: list[str] = []
    client = client_for(metrics=["cpu", "memory"], on_state=lambda s: states.append(s.phase))
    assert "token" not in client.url
    hello, first, second = await take(client.messages(), 3)
    assert isinstance(hello, Hello) and hello.host == sysmon.host
    assert hello.subscribed == ("cpu", "memory")
    assert isinstance(first, Status) and isinstance(second, Status)
    assert set(second.groups) == {"cpu", "memory"}
    assert second.seq > first.seq
    assert states == ["connected"]
    await eventually(lambda: not sysmon.connections)  # closing the stream closed the socket


async def test_excluded_groups_are_dropped_from_what_the_server_offers(
    client_for: Callable[..., StatusClient], sysmon: Any
) -> None:
    """``exclude`` narrows the subscription after hello: the server then streams, and so
    samples (``wanted``), everything but the excluded groups."""
    client = client_for(exclude=("processes", "users"))
    messages = await take(client.messages(), 8)
    subscribed = [m for m in messages if isinstance(m, Subscribed)]
    assert len(subscribed) == 1
    streamed = set(sysmon.metrics) - set(BY_NAME_ONLY)  # counters: only when named
    assert set(subscribed[0].metrics) == streamed - {"processes", "users"}
    after = [m for m in messages[messages.index(subscribed[0]) :] if isinstance(m, Status)]
    assert after and all(not {"processes", "users"} & set(s.groups) for s in after)
    assert "cpu" in after[-1].groups


async def test_included_groups_are_added_where_the_server_offers_them(
    client_for: Callable[..., StatusClient], sysmon: Any
) -> None:
    """``include`` adds a group sent only when named (``counters``) after hello, and
    a group the server does not offer is never asked for."""
    client = client_for(exclude=("processes", "users"), include=("counters", "no-such"))
    messages = await take(client.messages(), 10)
    (subscribed,) = [m for m in messages if isinstance(m, Subscribed)]
    streamed = set(sysmon.metrics) - set(BY_NAME_ONLY) - {"processes", "users"}
    assert set(subscribed.metrics) == streamed | {"counters"}
    after = [m for m in messages[messages.index(subscribed) :] if isinstance(m, Status)]
    assert any("counters" in s.groups for s in after)


async def test_history_comes_first_oldest_first(
    client_for: Callable[..., StatusClient], sysmon: Any
) -> None:
    await eventually(lambda: sysmon.broadcaster.published >= 5)
    client = client_for(metrics=["memory"], history=4)
    samples = await take(aiter(client), 6)
    assert all(isinstance(s, Status) for s in samples)
    times = [s.time for s in samples]
    assert times == sorted(times) and len(set(times)) == 6
    assert client.asked_history == 4


@pytest.mark.parametrize("sysmon_config", [{"allow_owner": False}], indirect=True)
async def test_a_403_is_final_says_why_and_the_server_serves_on(
    client_for: Callable[..., StatusClient], sysmon: Any, jp_fetch: Any
) -> None:
    retries: list[int] = []
    states: list[ConnectionState] = []
    client = client_for(backoff=lambda n: retries.append(n) or 0.0, on_state=states.append)
    with pytest.raises(RefusedError) as err:
        await take(client.messages(), 1)
    assert err.value.reason.startswith("HTTP 403")
    assert "not an administrator" in err.value.reason
    assert retries == []  # never tried again
    assert client.state.phase == "refused"
    assert states[-1].describe().startswith("refused: HTTP 403")
    # The server carries on for everyone else.
    assert (await jp_fetch("api", "status")).code == 200
    published = sysmon.broadcaster.published
    await eventually(lambda: sysmon.broadcaster.published > published)


async def test_a_wrong_token_is_refused_too(
    sysmon: Any, http_server_client: Any, jp_http_port: int, jp_base_url: str
) -> None:
    client = StatusClient(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", "wrong-token")
    with pytest.raises(RefusedError, match="HTTP 403"):
        await take(client.messages(), 1)


# -- small real websockets servers -------------------------------------------------------


def hello(interval: float = 1.0, server_id: str | None = None) -> str:
    """A hello; without ``server_id``, as an older server sends it."""
    return encode(
        Hello(
            server="t",
            host="fake",
            interval=interval,
            metrics=("cpu",),
            subscribed=("cpu",),
            server_id=server_id,
        )
    )


def status(seq: int, at: float) -> Status:
    return Status(seq=seq, time=at, host="fake", interval=1.0, groups={"cpu": {"percent": 1.0}})


@contextlib.asynccontextmanager
async def fake_server(
    handler: Callable[[ServerConnection, int], Any],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A websockets server on a free port; ``handler(ws, n)`` serves connection ``n``.
    Yields its URL and the request paths it saw."""
    paths: list[str] = []

    async def serve_one(ws: ServerConnection) -> None:
        paths.append(ws.request.path if ws.request else "")
        await handler(ws, len(paths))

    async with serve(serve_one, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/sysmon/ws", paths


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (CLOSE_CREDENTIALS_EXPIRED, "credentials expired"),
        (CLOSE_NOT_ADMIN, "administrator rights withdrawn"),
    ],
)
async def test_closed_with_4401_or_4403_is_final(code: int, reason: str) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(hello())
        await ws.close(code, "by the test")

    retries: list[int] = []
    async with fake_server(handler) as (url, paths):
        client = StatusClient(url, "t", backoff=lambda n: retries.append(n) or 0.0)
        seen: list[Any] = []

        async def read_all() -> None:
            async for message in client.messages():
                seen.append(message)

        with pytest.raises(RefusedError) as err:
            await asyncio.wait_for(read_all(), 10)
        await asyncio.sleep(0.3)  # time enough for a wrong reconnect to show
        assert len(paths) == 1
    assert [type(m) for m in seen] == [Hello]
    assert err.value.reason == f"{reason} (by the test)"
    assert client.state.describe() == f"refused: {reason} (by the test)"
    assert retries == []


async def test_a_history_frame_larger_than_a_mebibyte_is_read() -> None:
    """720 samples of a large host pass websockets' default 1 MiB frame limit: the
    client takes frames up to MAX_FRAME_BYTES (a default client closed with 1009)."""
    now = time.time()
    samples = [
        Status(seq=i, time=now - 720 + i, host="fake", interval=1.0,
               groups={"cpu": {"percent": 1.0, "per_cpu": [12.5] * 512}})
        for i in range(720)
    ]  # fmt: skip
    frame = encode(History(samples=tuple(samples)))
    assert 1 << 20 < len(frame) < MAX_FRAME_BYTES

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(hello())
        await ws.send(frame)
        await ws.wait_closed()

    async with fake_server(handler) as (url, _):
        client = StatusClient(url, "t", history=720)
        messages = await asyncio.wait_for(take(client.messages(), 2), 20)
    assert isinstance(messages[1], History) and len(messages[1].samples) == 720


async def test_invalid_frames_are_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    bad = [
        "not json",
        b"\x00binary",
        json.dumps({"type": "bogus"}),
        json.dumps({"type": "status", "seq": "one", "time": now}),
        json.dumps([1, 2]),
    ]

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(hello())
        for frame in bad:
            await ws.send(frame)
        await ws.send(encode(status(1, now)))
        await ws.wait_closed()

    caplog.set_level(logging.INFO, "sysmon_nb.client")
    async with fake_server(handler) as (url, _):
        client = StatusClient(url, "t")
        messages = await take(client.messages(), 2)
    assert [type(m) for m in messages] == [Hello, Status]
    assert client.skipped == len(bad)
    # One line when frames start breaking the protocol (not one per frame), one when
    # they fit again, with the count.
    dropped = [r for r in caplog.records if "dropped a frame" in r.message]
    assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
    assert "(bad_json): frame is not valid JSON" in dropped[0].message
    again = [r for r in caplog.records if "sends valid frames again" in r.message]
    assert [r.message for r in again] == [
        f"sysmon: {client.url} sends valid frames again (5 dropped)"
    ]


async def test_a_dropped_connection_is_retried_with_backoff_and_asks_for_what_it_missed() -> None:
    start = time.time() + 3600  # the server's clock is an hour ahead: it must not matter

    async def handler(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send(hello(interval=0.1))
            await ws.send(encode(status(1, start - 5)))
            await asyncio.sleep(0.5)  # five intervals pass on this side after seq 1
            await ws.close(1011, "server error")
            return
        await ws.send(hello(interval=0.1))
        # What the client has seen (seq 1) and what it missed (2, 3), then live (4).
        missed = (status(1, start - 5), status(2, start - 4), status(3, start - 3))
        await ws.send(encode(History(samples=missed)))
        await ws.send(encode(status(4, start - 2)))
        await ws.wait_closed()

    retries: list[int] = []
    states: list[str] = []
    async with fake_server(handler) as (url, paths):
        client = StatusClient(
            url,
            "t",
            history=2,
            backoff=lambda n: retries.append(n) or 0.05,
            on_state=lambda s: states.append(s.describe(now=0)),
        )
        samples = await take(aiter(client), 4)
    assert [s.seq for s in samples] == [1, 2, 3, 4]  # no duplicate of seq 1
    assert paths[0].endswith("?history=2")
    # The last sample arrived 0.5 s (and a bit) before the reconnect, at 0.1 s per
    # sample: asks for 6 or more, whatever the server's clock says.
    asked = int(paths[1].split("history=")[1])
    assert 6 <= asked <= 60
    assert retries == [0]
    assert any(s.startswith("reconnecting in") for s in states)
    assert states.count("connected") == 2


async def test_the_authorization_header_follows_the_credential_and_the_scheme() -> None:
    seen: list[str] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        assert ws.request is not None
        seen.append(ws.request.headers.get("Authorization", ""))
        await ws.send(hello())
        await ws.wait_closed()

    jwt = jwt_tools.token()
    async with fake_server(handler) as (url, _):
        for token, scheme in ((jwt, None), ("abc", None), (jwt, "token"), ("abc", "bearer")):
            await take(StatusClient(url, token, scheme=scheme).messages(), 1)
    assert seen == [f"Bearer {jwt}", "token abc", f"token {jwt}", "Bearer abc"]


@pytest.mark.parametrize(
    ("exp_in_s", "reason"),
    [(-120, "credentials expired (HTTP 403; the JWT's exp passed 1"), (300, "HTTP 403")],
)
async def test_a_403_to_an_expired_jwt_says_the_credentials_expired(
    exp_in_s: int, reason: str
) -> None:
    def forbid(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "Forbidden\n")

    retries: list[int] = []
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=forbid) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        jwt = jwt_tools.token(exp=int(time.time()) + exp_in_s)
        client = StatusClient(
            f"ws://127.0.0.1:{port}/sysmon/ws", jwt, backoff=lambda n: retries.append(n) or 0.0
        )
        with pytest.raises(RefusedError) as err:
            await take(client.messages(), 1)
    assert err.value.reason.startswith(reason)
    assert client.state.describe().startswith(f"refused: {reason}")
    assert retries == []


async def test_samples_are_told_apart_by_server_id_and_seq_not_time() -> None:
    """The server's clock steps back 20 s and forward 1 h: every sample is new. On
    reconnect the history overlaps what was seen: no sample twice. A restarted server
    (a new server_id) starts its seq over: all its samples are new."""
    t = time.time()
    first = (status(1, t), status(2, t - 20), status(3, t - 19), status(4, t + 3600))

    async def handler(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send(hello(0.1, server_id="A"))
            for sample in first:
                await ws.send(encode(sample))
            await ws.close(1011, "dropped")
        elif n == 2:
            await ws.send(hello(0.1, server_id="A"))
            await ws.send(encode(History(samples=(*first[1:], status(5, t + 3601)))))
            await ws.send(encode(status(6, t + 3602)))
            await ws.close(1011, "dropped")
        else:
            await ws.send(hello(0.1, server_id="B"))
            await ws.send(encode(History(samples=(status(1, t - 50), status(2, t - 49)))))
            await ws.wait_closed()

    async with fake_server(handler) as (url, _):
        client = StatusClient(url, "t", backoff=lambda n: 0.01)
        samples = await take(aiter(client), 8)
    assert [(s.seq, s.time - t) for s in samples] == [
        (1, 0.0), (2, -20.0), (3, -19.0), (4, 3600.0), (5, 3601.0), (6, 3602.0),
        (1, -50.0), (2, -49.0),
    ]  # fmt: skip
    assert client.repeats == 3
    assert client.server_id == "B"


async def test_an_older_server_without_server_id_still_works() -> None:
    """No server_id: a repeat is a sample whose seq and time are both not past the newest
    seen. A clock step back (seq goes on) and a restart (seq starts over, time goes on)
    are both new samples."""
    t = time.time()

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(hello(0.1))
        if n == 1:
            for sample in (status(1, t), status(2, t - 20)):
                await ws.send(encode(sample))
            await ws.close(1011, "dropped")
        else:  # restarted: seq starts over; a repeat of seq 2 first
            await ws.send(encode(History(samples=(status(2, t - 20), status(1, t + 5)))))
            await ws.wait_closed()

    async with fake_server(handler) as (url, _):
        client = StatusClient(url, "t", backoff=lambda n: 0.01)
        samples = await take(aiter(client), 3)
    assert [(s.seq, s.time - t) for s in samples] == [(1, 0.0), (2, -20.0), (1, 5.0)]
    assert client.repeats == 1 and client.server_id is None


async def test_connection_refused_is_retried_with_growing_backoff() -> None:
    port = free_port()  # nothing listens here
    retries: list[int] = []
    client = StatusClient(
        f"http://127.0.0.1:{port}/", "t", backoff=lambda n: retries.append(n) or 0.01
    )
    stream = client.messages()
    task = asyncio.ensure_future(stream.__anext__())
    await eventually(lambda: len(retries) >= 4)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stream.aclose()
    assert retries[:4] == [0, 1, 2, 3]
    assert client.state.phase in ("reconnecting", "connecting")


# -- a real server process, restarted ----------------------------------------------------


class Relay:
    """A TCP relay on a fixed port to a server that can be swapped: the client keeps one
    URL while the server behind it stops and a new one starts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target: int | None = None
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self, target: int) -> None:
        self.target = target
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.target is not None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self.writers -= {writer, up_writer}


@pytest.mark.timeout(150)
async def test_survives_a_server_restart_and_catches_up(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    first = await loop.run_in_executor(None, lambda: JupyterProcess(tmp_path / "a", interval=0.3))
    relay = Relay()
    second: JupyterProcess | None = None
    try:
        await relay.open(first.port)
        client = StatusClient(
            f"http://127.0.0.1:{relay.port}/", TOKEN, metrics=["cpu"], backoff=lambda n: 0.2
        )
        messages: list[Any] = []

        async def read() -> None:
            async for message in client.messages():
                messages.append(message)

        reader = asyncio.ensure_future(read())
        await eventually(lambda: sum(isinstance(m, Status) for m in messages) >= 2, 30)
        before = client.last_time
        assert before is not None

        await relay.close()
        await loop.run_in_executor(None, first.stop)
        second = await loop.run_in_executor(
            None, lambda: JupyterProcess(tmp_path / "b", interval=0.3)
        )
        # The new server samples for a while before the client can reach it again.
        await asyncio.sleep(1.5)
        await relay.open(second.port)

        def caught_up() -> bool:  # what the reader has seen, not the client's own state
            hellos = [i for i, m in enumerate(messages) if isinstance(m, Hello)]
            return len(hellos) >= 2 and any(isinstance(m, History) for m in messages[hellos[1] :])

        await eventually(caught_up, 30)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await relay.close()
        for server in (first, second):
            if server is not None:
                await loop.run_in_executor(None, server.stop)

    after = messages[[i for i, m in enumerate(messages) if isinstance(m, Hello)][1] :]
    assert isinstance(after[0], Hello)
    assert isinstance(after[1], History)
    caught_up = after[1].samples
    assert len(caught_up) >= 3  # what the new server sampled while we were away
    assert all(s.time > before for s in caught_up)
    assert client.asked_history >= 3
    times = [s.time for m in messages if isinstance(m, History) for s in m.samples] + [
        m.time for m in messages if isinstance(m, Status)
    ]
    assert len(times) == len(set(times))  # nothing twice
