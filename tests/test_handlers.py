"""sysmon/ws and sysmon/api/status through a real jupyter_server and real clients.

Every test here runs twice: on the fast path (frames written directly, tornado internals
checked at start-up) and on tornado's public ``write_message`` path (``fast_path =
False``, what a tornado without those internals gets)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import logging
import os
import socket
import time
from typing import Any, ClassVar

import pytest
import websockets
from jupyter_server.auth import IdentityProvider, User
from tornado.httpclient import HTTPClientError
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from jupyter_server_ext import fanout
from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.handlers import MAX_UNREAD_REPLY_BYTES
from sysmon_nb import __version__
from sysmon_nb.protocol import BY_NAME_ONLY, GROUPS, PROTOCOL_VERSION, Status, decode

from .conftest import TEST_INTERVAL, eventually, recv_json, recv_type

HEADER_KEYS = {"type", "seq", "time", "host", "interval", "errors", "stale", "skipped_ticks"}


@pytest.fixture(params=["fast", "public"])
def write_path(request: pytest.FixtureRequest) -> str:
    """Which write path the server uses: ``fast`` (the default) or ``public``."""
    return str(request.param)


@pytest.fixture
def sysmon_config(request: pytest.FixtureRequest, write_path: str) -> dict[str, Any]:
    """conftest's ``sysmon_config``, on the write path of ``write_path``."""
    return {"fast_path": write_path == "fast", **getattr(request, "param", {})}


#: For a test of the fast path alone (its public-path twin would check nothing, or what
#: tornado's own protocol does: it drops the socket without a close frame).
fast_path_only = pytest.mark.parametrize("write_path", ["fast"])


async def assert_still_serving(connect: Any) -> None:
    """A fresh admin client still gets hello and a status frame."""
    async with connect("metrics=cpu") as ws:
        assert (await recv_json(ws))["type"] == "hello"
        status = await recv_type(ws, "status")
        assert "cpu" in status


async def refused(connect: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Status code and JSON body of an upgrade the server refuses."""
    with pytest.raises(websockets.InvalidStatus) as excinfo:
        async with connect(*args, **kwargs):
            pass
    response = excinfo.value.response
    return response.status_code, json.loads(response.body)


# -- the stream -----------------------------------------------------------------------


async def test_hello_is_first_and_describes_the_server(connect: Any, sysmon: Any) -> None:
    async with connect() as ws:
        hello = await recv_json(ws)
    assert hello["type"] == "hello"
    assert hello["protocol"] == PROTOCOL_VERSION
    assert hello["server"] == __version__
    assert hello["host"] == sysmon.host
    assert hello["interval"] == TEST_INTERVAL
    assert hello["metrics"] == list(GROUPS)
    # every group but those sent only when named (counters)
    assert hello["subscribed"] == [g for g in GROUPS if g not in BY_NAME_ONLY]
    assert hello["expires_at"] is None


async def test_status_frames_arrive_at_the_interval_with_every_group(connect: Any) -> None:
    async with connect() as ws:
        await recv_json(ws)  # hello
        frames = [await recv_type(ws, "status") for _ in range(4)]
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(frames)]
    assert all(0.5 * TEST_INTERVAL < gap < 6 * TEST_INTERVAL for gap in gaps), gaps
    last = frames[-1]
    assert last["errors"] == {}
    assert set(last) == HEADER_KEYS | (set(GROUPS) - set(BY_NAME_ONLY))
    # Values are real readings of this machine, in the units the contract names.
    assert last["memory"]["total_bytes"] > 0
    assert 0 <= last["cpu"]["percent"] <= 100
    assert last["cpu"]["count"] >= 1
    assert last["processes"]["count"] > 1
    assert isinstance(decode(json.dumps(last)), Status)


async def test_history_on_connect_is_oldest_first_then_live(connect: Any, sysmon: Any) -> None:
    await eventually(lambda: sysmon.broadcaster.published >= 4)
    async with connect("history=3&metrics=memory") as ws:
        hello = await recv_json(ws)
        history = await recv_json(ws)
        live = await recv_type(ws, "status")
    assert hello["subscribed"] == ["memory"]
    assert history["type"] == "history"
    samples = history["samples"]
    assert len(samples) == 3
    seqs = [s["seq"] for s in samples]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(set(s) == HEADER_KEYS | {"memory"} for s in samples)
    assert live["seq"] > seqs[-1]


@pytest.mark.parametrize("sysmon_config", [{"history": 3}], indirect=True)
async def test_history_larger_than_kept_is_capped(connect: Any, sysmon: Any) -> None:
    await eventually(lambda: sysmon.broadcaster.published >= 5)
    async with connect("history=100000") as ws:
        await recv_json(ws)
        history = await recv_json(ws)
    assert history["type"] == "history"
    assert len(history["samples"]) == 3


@pytest.mark.parametrize("sysmon_config", [{"history": 0}], indirect=True)
async def test_history_asked_of_a_server_that_keeps_none_is_empty(connect: Any) -> None:
    async with connect("history=10&metrics=cpu") as ws:
        await recv_json(ws)
        history = await recv_json(ws)
        assert history == {"type": "history", "samples": []}
        assert (await recv_json(ws))["type"] == "status"


async def test_selective_subscription_and_subscribe_message(connect: Any) -> None:
    async with connect("metrics=memory,cpu") as ws:
        hello = await recv_json(ws)
        assert hello["subscribed"] == ["cpu", "memory"]
        status = await recv_type(ws, "status")
        assert set(status) == HEADER_KEYS | {"cpu", "memory"}

        await ws.send(json.dumps({"type": "subscribe", "metrics": ["disk", "network"]}))
        answer = await recv_type(ws, "subscribed")
        assert answer["metrics"] == ["disk", "network"]
        status = await recv_type(ws, "status")
        assert set(status) == HEADER_KEYS | {"disk", "network"}


async def test_two_clients_with_the_same_subscription_get_identical_frames(
    connect: Any,
) -> None:
    async with connect("metrics=memory") as a, connect("metrics=memory") as b:
        await recv_json(a)
        await recv_json(b)
        frames_a = {f["seq"]: f for f in [await recv_type(a, "status") for _ in range(4)]}
        frames_b = {f["seq"]: f for f in [await recv_type(b, "status") for _ in range(4)]}
    common = set(frames_a) & set(frames_b)
    assert len(common) >= 2
    assert all(frames_a[seq] == frames_b[seq] for seq in common)


async def test_jupyter_group_counts_a_real_kernel(connect: Any, jp_fetch: Any) -> None:
    reply = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(reply.body)["id"]
    try:
        async with connect("metrics=jupyter") as ws:
            await recv_json(ws)
            for _ in range(40):
                jupyter = (await recv_type(ws, "status"))["jupyter"]
                usage = jupyter["kernel_usage"]
                if usage and usage[0]["cpu_percent"] is not None:
                    break
        assert jupyter["kernels"] == 1
        assert usage[0]["id"] == kernel_id
        assert usage[0]["pid"] > 0
        assert usage[0]["rss_bytes"] > 1_000_000
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


# -- refusals before the upgrade ------------------------------------------------------


async def test_no_credentials_is_403_and_others_keep_streaming(connect: Any) -> None:
    code, _ = await refused(connect, headers={})
    assert code == 403
    await assert_still_serving(connect)


async def test_wrong_token_is_403(connect: Any) -> None:
    code, _ = await refused(connect, headers={"Authorization": "token not-the-token"})
    assert code == 403
    await assert_still_serving(connect)


@pytest.mark.parametrize("sysmon_config", [{"allow_owner": False}], indirect=True)
async def test_non_admin_is_403_with_a_json_reason(
    connect: Any, jp_fetch: Any, sysmon: Any
) -> None:
    code, body = await refused(connect)
    assert code == 403
    assert "not an administrator" in body["message"]

    with pytest.raises(HTTPClientError) as http_err:
        await jp_fetch("sysmon", "api", "status")
    assert http_err.value.code == 403
    assert "not an administrator" in json.loads(http_err.value.response.body)["message"]
    # the server and the sampler carry on
    assert (await jp_fetch("api", "status")).code == 200
    published = sysmon.broadcaster.published
    await eventually(lambda: sysmon.broadcaster.published > published)


@pytest.mark.parametrize("query", ["metrics=cpu,bogus", "history=-1", "history=lots"])
async def test_bad_query_is_400_with_a_json_reason(connect: Any, query: str) -> None:
    code, body = await refused(connect, query)
    assert code == 400
    assert body["message"]
    await assert_still_serving(connect)


@pytest.mark.parametrize("sysmon_config", [{"max_connections": 2}], indirect=True)
async def test_max_connections_is_503_and_frees_up(connect: Any, sysmon: Any) -> None:
    async with connect() as a, connect() as b:
        await recv_json(a)
        await recv_json(b)
        code, body = await refused(connect)
        assert code == 503
        assert "too many" in body["message"]
        # the two admitted clients are unaffected
        await recv_type(a, "status")
        await recv_type(b, "status")
    await eventually(lambda: not sysmon.connections)
    await assert_still_serving(connect)


# -- bad client messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "bad_json"),
        (b"\x00\x01binary", "binary_frame"),
        ("[1, 2]", "not_an_object"),
        (json.dumps({"type": "shutdown"}), "unknown_type"),
        (json.dumps({"type": "subscribe"}), "bad_field"),
        (json.dumps({"type": "subscribe", "metrics": "cpu"}), "bad_field"),
        (json.dumps({"type": "subscribe", "metrics": ["cpu"], "x": 1}), "bad_field"),
        (json.dumps({"type": "subscribe", "metrics": ["nope"]}), "unknown_metric"),
    ],
)
async def test_malformed_message_gets_error_frame_and_stream_goes_on(
    connect: Any, message: str | bytes, code: str
) -> None:
    async with connect("metrics=cpu") as ws:
        await recv_json(ws)
        await ws.send(message)
        error = await recv_type(ws, "error")
        assert error["code"] == code
        assert error["message"] and "Traceback" not in error["message"]
        status = await recv_type(ws, "status")
        assert set(status) == HEADER_KEYS | {"cpu"}  # subscription unchanged


async def test_oversized_message_closes_1009_and_spares_others(connect: Any) -> None:
    async with connect("metrics=cpu") as bystander, connect() as ws:
        await recv_json(bystander)
        await recv_json(ws)
        await ws.send(json.dumps({"type": "subscribe", "metrics": ["cpu"] * 20000}))
        with pytest.raises(websockets.ConnectionClosed) as excinfo:
            for _ in range(50):
                await recv_json(ws)
        assert excinfo.value.rcvd is not None and excinfo.value.rcvd.code == 1009
        await recv_type(bystander, "status")


# -- failures and shutdown -------------------------------------------------------------


class _Broken:
    name = "gpu"

    def collect(self, now: float) -> dict[str, Any]:
        raise CollectorError("NVML error on GPU: GPU is lost")


async def test_failing_collector_is_reported_and_others_publish(connect: Any, sysmon: Any) -> None:
    collectors = sysmon.sampler.collectors
    index = next(i for i, c in enumerate(collectors) if c.name == "gpu")
    collectors[index] = _Broken()
    async with connect("metrics=gpu,memory") as ws:
        await recv_json(ws)
        for _ in range(10):
            status = await recv_type(ws, "status")
            if status["errors"]:
                break
    assert status["errors"] == {"gpu": "NVML error on GPU: GPU is lost"}
    assert "gpu" not in status
    assert status["memory"]["total_bytes"] > 0
    assert sysmon.sampler.running


async def test_status_api_returns_latest_sample(jp_fetch: Any, sysmon: Any) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    reply = await jp_fetch("sysmon", "api", "status", params={"metrics": "memory,cpu"})
    body = json.loads(reply.body)
    assert body["type"] == "status"
    assert set(body) == HEADER_KEYS | {"cpu", "memory"}
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_status_api_without_credentials_is_403(jp_fetch: Any, sysmon: Any) -> None:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("sysmon", "api", "status", headers={"Authorization": ""})
    assert err.value.code == 403


async def test_shutdown_closes_every_socket_with_1001(
    connect: Any, sysmon: Any, jp_serverapp: Any
) -> None:
    async with connect() as a, connect("metrics=cpu") as b:
        await recv_json(a)
        await recv_json(b)
        await jp_serverapp._cleanup()
        for ws in (a, b):
            with pytest.raises(websockets.ConnectionClosed) as excinfo:
                for _ in range(50):
                    await recv_json(ws)
            assert excinfo.value.rcvd is not None
            assert excinfo.value.rcvd.code == 1001
    assert not sysmon.sampler.running
    assert not sysmon.connections


# -- connection details ----------------------------------------------------------------


def negotiated_extensions(ws: Any) -> list[str]:
    return [type(ext).__name__ for ext in ws.protocol.extensions]


async def test_compression_by_default_when_offered(connect: Any, sysmon: Any) -> None:
    assert sysmon.compression is True
    async with connect("metrics=cpu") as ws:  # the client offers permessage-deflate
        assert negotiated_extensions(ws) == ["PerMessageDeflate"]
        assert (await recv_json(ws))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
    async with connect("metrics=cpu", compression=None) as plain:  # not offered: plain
        assert negotiated_extensions(plain) == []
        assert "cpu" in await recv_type(plain, "status")


@pytest.mark.parametrize("sysmon_config", [{"compression": False}], indirect=True)
async def test_no_compression_when_turned_off(connect: Any) -> None:
    async with connect("metrics=cpu") as ws:  # the client offers permessage-deflate
        assert negotiated_extensions(ws) == []
        assert (await recv_json(ws))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")


async def test_closed_connection_leaves_nothing(connect: Any, sysmon: Any) -> None:
    async with connect() as ws:
        await recv_json(ws)
        (handler,) = sysmon.connections
        assert handler.ping_callback is None  # no timer per connection: one for all
    await eventually(lambda: not sysmon.connections and len(sysmon.broadcaster) == 0)


@pytest.mark.parametrize(
    "server_config",
    [{"tornado_settings": {"ws_ping_interval": 200, "ws_ping_timeout": 600}}],
    indirect=True,
)
async def test_one_keepalive_timer_pings_everyone_and_drops_the_silent(
    connect: Any, sysmon: Any, open_raw: Any
) -> None:
    async with connect("metrics=cpu") as ws:
        await recv_json(ws)
        started = time.monotonic()
        (handler,) = sysmon.connections
        first_pong = handler.last_pong
        # The websockets client answers the server's pings: its pongs keep arriving.
        await eventually(lambda: handler.last_pong > first_pong)
        # A client that never answers (nor reads) is closed after ws_ping_timeout...
        silent = await open_raw("metrics=cpu")
        try:
            await eventually(lambda: len(sysmon.connections) == 2)
            await eventually(lambda: len(sysmon.connections) == 1, timeout=10)
        finally:
            silent.close()
        # ...while the answering one keeps streaming.
        assert "cpu" in await recv_type(ws, "status")
        assert time.monotonic() - started > 0.6


def raw_client(port: int, path: str, token: str) -> socket.socket:
    """A WebSocket client by hand: handshake, then nothing is ever read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.fixture
def open_raw(jp_http_port: int, jp_base_url: str, jp_auth_header: Any) -> Any:
    """Opens a hand-made client on ``sysmon/ws?<query>`` (see ``raw_client``)."""

    async def open_(query: str) -> socket.socket:
        path = f"{jp_base_url}sysmon/ws?{query}"
        token = jp_auth_header["Authorization"]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, raw_client, jp_http_port, path, token)

    return open_


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def test_client_that_sends_but_never_reads_is_closed_not_buffered(
    connect: Any, sysmon: Any, open_raw: Any
) -> None:
    async with connect("metrics=cpu") as bystander:
        await recv_json(bystander)
        loop = asyncio.get_running_loop()
        sock = await open_raw("metrics=memory")
        sock.setblocking(False)
        await eventually(lambda: any(h._metrics == ("memory",) for h in sysmon.connections))
        (handler,) = [h for h in sysmon.connections if h._metrics == ("memory",)]
        handler.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        frame = masked_text_frame(b"not json")
        sent = 0

        def condemned() -> bool:
            return handler.ws_connection is None or handler.ws_connection.is_closing()

        sent = 0
        try:
            # Bounded in time; each send yields to the server, which yields once per
            # message it answers. About 4,000 messages are enough here.
            deadline = loop.time() + 30
            while loop.time() < deadline and not condemned():
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, frame), 2.0)
                except asyncio.TimeoutError:
                    break  # the server stopped reading from it: it must be closing it
                sent += 1
                await asyncio.sleep(0)
        except OSError:
            pass  # the server may already have shut the connection
        try:
            await eventually(condemned, timeout=15)
        finally:
            sock.close()
        assert handler._unread_reply_bytes <= MAX_UNREAD_REPLY_BYTES + 1000, sent
        await recv_type(bystander, "status")  # everyone else is still served


# -- JupyterHub-shaped identities ------------------------------------------------------


class HubStyleIdentityProvider(IdentityProvider):
    """Authenticates like jupyterhub.singleuser's provider: a token names a hub user
    model (``user.hub_user``), and the provider has a ``hub_auth``. The real hub runs in
    the security tests; this one checks how the handler treats hub-shaped users."""

    hub_auth = object()
    models: ClassVar[dict[str, dict[str, Any]]] = {
        "hub-admin": {"name": "root", "admin": True, "groups": []},
        "hub-ops": {"name": "olga", "admin": False, "groups": ["ops"]},
        "hub-user": {"name": "bob", "admin": False, "groups": ["students"]},
        "hub-owner": {"name": "owner", "admin": False, "groups": []},
    }

    async def get_user(self, handler: Any) -> User | None:
        scheme, _, token = handler.request.headers.get("Authorization", "").partition(" ")
        model = self.models.get(token) if scheme.lower() == "token" else None
        return None if model is None else HubUser(model)


class HubUser(User):
    def __init__(self, hub_user: dict[str, Any]) -> None:
        self.hub_user = hub_user
        super().__init__(username=hub_user["name"])


HUB = {"identity_provider_class": HubStyleIdentityProvider}


@pytest.mark.parametrize("server_config", [HUB], indirect=True)
@pytest.mark.parametrize("sysmon_config", [{"admin_groups": ["ops"]}], indirect=True)
@pytest.mark.parametrize(
    ("token", "admitted"),
    [("hub-admin", True), ("hub-ops", True), ("hub-user", False), ("hub-owner", False)],
)
async def test_hub_users_by_admin_flag_and_groups_owner_not_by_default(
    connect: Any, sysmon: Any, token: str, admitted: bool
) -> None:
    assert sysmon.allow_owner is False  # under JupyterHub the default flips
    headers = {"Authorization": f"token {token}"}
    if admitted:
        async with connect("metrics=cpu", headers=headers) as ws:
            assert (await recv_json(ws))["type"] == "hello"
            assert "cpu" in await recv_type(ws, "status")
    else:
        code, body = await refused(connect, headers=headers)
        assert code == 403
        assert "not an administrator" in body["message"]


@pytest.mark.parametrize("server_config", [HUB], indirect=True)
@pytest.mark.parametrize("hub_user_env", ["owner"], indirect=True)
@pytest.mark.parametrize("sysmon_config", [{"allow_owner": True}], indirect=True)
async def test_hub_owner_when_allowed_but_not_other_users(connect: Any) -> None:
    async with connect("metrics=cpu", headers={"Authorization": "token hub-owner"}) as ws:
        assert (await recv_json(ws))["type"] == "hello"
    code, _ = await refused(connect, headers={"Authorization": "token hub-user"})
    assert code == 403


# -- the fan-out's write path (frames built once, written to every socket) ---------------


def read_frames(sock: socket.socket, seconds: float) -> list[str]:
    """The text frames a raw client receives over ``seconds`` (server frames: unmasked,
    uncompressed)."""
    sock.settimeout(0.2)
    data = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    texts = []
    while len(data) >= 2:
        assert data[0] == 0x81, data[:2]  # FIN, text
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            break
        texts.append(data[start : start + length].decode())
        data = data[start + length :]
    return texts


async def test_compressed_and_plain_clients_get_the_same_text(
    connect: Any, write_path: str
) -> None:
    small_window = ClientPerMessageDeflateFactory(server_max_window_bits=10)
    async with (
        connect("metrics=cpu,memory,processes") as deflated,
        connect("metrics=cpu,memory,processes", compression=None) as plain,
        connect(
            "metrics=cpu,memory,processes", compression=None, extensions=[small_window]
        ) as narrow,
    ):
        (ext,) = deflated.protocol.extensions
        # one compressed frame serves every client: no server context between messages
        # (tornado's own compression, on the public path, keeps a context per client)
        shared = ext.remote_no_context_takeover and ext.local_no_context_takeover
        assert shared is (write_path == "fast")
        assert negotiated_extensions(plain) == []
        assert negotiated_extensions(narrow) == ["PerMessageDeflate"]
        texts: dict[str, dict[int, str]] = {}
        for name, ws in (("deflated", deflated), ("plain", plain), ("narrow", narrow)):
            got = texts.setdefault(name, {})
            for _ in range(20):
                text = await asyncio.wait_for(ws.recv(), 10)
                frame = json.loads(text)
                if frame["type"] == "status":
                    got[frame["seq"]] = text
                if len(got) >= 3:
                    break
    common = set(texts["deflated"]) & set(texts["plain"]) & set(texts["narrow"])
    assert common
    for seq in common:  # the very same text, whatever the framing
        assert texts["deflated"][seq] == texts["plain"][seq] == texts["narrow"][seq]
    # and a client message still goes through the (context-free) inflater
    async with connect("metrics=cpu") as ws:
        await ws.send(json.dumps({"type": "subscribe", "metrics": ["memory"]}))
        assert (await recv_type(ws, "subscribed"))["metrics"] == ["memory"]


@pytest.mark.parametrize("sysmon_config", [{"client_buffer": 2}], indirect=True)
async def test_stalled_reader_gets_newest_frames_and_spares_the_others(
    connect: Any, sysmon: Any, open_raw: Any
) -> None:
    loop = asyncio.get_running_loop()
    async with connect("metrics=cpu") as bystander:
        await recv_json(bystander)
        sock = await open_raw("metrics=memory,processes")
        try:
            await eventually(lambda: any(h._metrics != ("cpu",) for h in sysmon.connections))
            (handler,) = [h for h in sysmon.connections if h._metrics != ("cpu",)]
            handler.ws_connection.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            stalled = handler._subscriber
            seen: list[int] = []

            async def follow() -> None:
                while not stalled.lagged:
                    seen.append((await recv_type(bystander, "status"))["seq"])

            await asyncio.wait_for(follow(), 45)  # until the stalled client loses frames
            assert stalled.pending <= 2  # bounded, whatever the backlog
            newest = sysmon.broadcaster.latest.seq
            # reading resumes; a receive window under one segment would crawl (TCP's
            # silly-window avoidance), so open it first
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            frames = await loop.run_in_executor(None, read_frames, sock, 3.0)
        finally:
            sock.close()
    # the bystander lost nothing while the other client stalled
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    seqs = [json.loads(t)["seq"] for t in frames if json.loads(t)["type"] == "status"]
    assert seqs == sorted(set(seqs))  # in order, no repeats
    assert max(b - a for a, b in itertools.pairwise(seqs)) > 1, seqs  # dropped
    assert seqs[-1] >= newest  # and it caught up on the newest
    await assert_still_serving(connect)


async def test_a_connection_keeps_nothing_of_its_handshake_answer(
    connect: Any, sysmon: Any, write_path: str
) -> None:
    async with connect("metrics=cpu") as ws:
        assert (await recv_json(ws))["type"] == "hello"
        (handler,) = sysmon.connections
        # the 101 answer's headers and login cookie are gone once written (on the fast
        # path: this reaches into tornado, so the public path leaves them) ...
        dropped = not handler._headers and not hasattr(handler, "_new_cookie")
        assert dropped is (write_path == "fast")
        # ... and the connection streams on
        assert "cpu" in await recv_type(ws, "status")


# -- tornado internals, guarded -----------------------------------------------------------


def test_this_tornado_has_what_the_fast_path_needs() -> None:
    assert fanout.missing_internals() == []


async def test_the_server_takes_the_path_it_was_told(sysmon: Any, write_path: str) -> None:
    assert sysmon.use_fast_path is (write_path == "fast")


class StartupRecords(logging.Handler):
    """A log handler the extension's own logging config adds (so it sees start-up)."""

    records: ClassVar[list[logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: ``c.SysmonExtension.logging_config`` adding :class:`StartupRecords` to its log.
RECORD_STARTUP = {
    "logging_config": {
        "handlers": {"startup": {"class": f"{__name__}.StartupRecords", "level": "DEBUG"}},
        "loggers": {"SysmonExtension": {"handlers": ["console", "startup"]}},
    }
}


@pytest.fixture
def tornado_without_an_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later tornado, as the start-up check sees it: one method the fast path calls is
    gone. Ask for it before the server fixtures."""
    methods = (*fanout.PROTOCOL_METHODS, "_gone_in_a_later_tornado")
    monkeypatch.setattr(fanout, "PROTOCOL_METHODS", methods)
    monkeypatch.setattr(StartupRecords, "records", [])


@fast_path_only
@pytest.mark.parametrize("sysmon_config", [RECORD_STARTUP], indirect=True)
async def test_without_the_internals_the_public_path_serves_after_one_warning(
    tornado_without_an_internal: None, connect: Any, sysmon: Any, write_path: str
) -> None:
    assert sysmon.use_fast_path is False
    lines = [r for r in StartupRecords.records if "direct write path" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "WebSocketProtocol13._gone_in_a_later_tornado" in lines[0].getMessage()
    async with connect("metrics=cpu") as ws:
        (ext,) = ws.protocol.extensions  # tornado's own deflate: a context per client
        assert not ext.remote_no_context_takeover
        assert (await recv_json(ws))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
        await ws.send(json.dumps({"type": "subscribe", "metrics": ["memory"]}))
        assert (await recv_type(ws, "subscribed"))["metrics"] == ["memory"]
        assert "memory" in await recv_type(ws, "status")


# -- history, encoded once ------------------------------------------------------------------


@pytest.mark.parametrize("sysmon_config", [{"interval": 60.0}], indirect=True)
async def test_history_is_encoded_once_until_the_next_sample(
    connect: Any, sysmon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[Any] = []  # history frames built (from the samples' kept pieces)
    build = sysmon.broadcaster.history_pieces.frame

    def counting(*args: Any) -> Any:
        frame = build(*args)
        encoded.append(frame)
        return frame

    monkeypatch.setattr(sysmon.broadcaster.history_pieces, "frame", counting)
    await eventually(lambda: sysmon.broadcaster.published >= 1)

    async def history(query: str) -> dict[str, Any]:
        async with connect(query) as ws:
            await recv_json(ws)
            return await recv_json(ws)

    first = await history("history=5&metrics=cpu,memory")
    second = await history("history=5&metrics=memory,cpu")
    assert first == second and first["type"] == "history" and first["samples"]
    assert len(encoded) == 1  # the second client got the same frame
    await history("history=5&metrics=cpu")
    assert len(encoded) == 2  # another subscription is another frame
    newest = (await history("history=1&metrics=cpu"))["samples"]
    encodings = len(encoded)
    latest = sysmon.broadcaster.latest
    sysmon.broadcaster.publish(dataclasses.replace(latest, seq=latest.seq + 1))  # a new sample
    third = await history("history=5&metrics=cpu,memory")
    assert len(encoded) == encodings + 1
    assert len(third["samples"]) == len(first["samples"]) + 1
    after = (await history("history=1&metrics=cpu"))["samples"]  # same key, new content
    assert after[0]["seq"] == newest[0]["seq"] + 1
