"""A real JupyterHub: hub, configurable-http-proxy, a local spawner and a single-user
server with sysmon, all reached through the hub's proxy.

Users: alice and carol are hub admins, bob a plain user (his server is the one
watched), olga a member of the ``ops`` group that ``admin_groups`` names; carol may
also use bob's server through a role, so she keeps access when her admin flag goes;
dave may use bob's server (shared access) and is no administrator; monitor holds
``custom:sysmon:read`` and nothing else. The hub itself is tests/hub.py's.

``test_hub_route`` is the hub's half of docs/security.md's route table: the probes and
expectations of tests/test_routes.py, through the hub's proxy to bob's server.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

from .conftest import recv_json, recv_type
from .hub import Hub
from .test_routes import EXPECTED, ROUTES, probe, request

#: Seconds between the single-user server's re-checks of hub credentials.
REVALIDATE_INTERVAL = 1.0


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = Hub(
        tmp_path_factory.mktemp("hub"),
        users={"alice", "bob", "olga", "carol", "dave", "monitor"},
        admins={"alice", "carol"},
        groups={"ops": {"users": ["olga"]}},
        roles=[
            {"name": "ops-on-bob", "scopes": ["access:servers!user=bob"], "groups": ["ops"]},
            {"name": "carol-on-bob", "scopes": ["access:servers!user=bob"], "users": ["carol"]},
            {"name": "dave-on-bob", "scopes": ["access:servers!user=bob"], "users": ["dave"]},
            {"name": "sysmon-reader", "scopes": ["custom:sysmon:read"], "users": ["monitor"]},
        ],
        sysmon={
            "interval": 0.5,
            "metrics": ["cpu", "memory"],
            "admin_groups": ["ops"],
            "revalidate_interval": REVALIDATE_INTERVAL,
        },
    )
    try:
        running.start()
        running.start_servers([("bob", "")])
        yield running
    finally:
        running.stop()


def sysmon_url(hub: Hub) -> str:
    return f"ws://127.0.0.1:{hub.public_port}/user/bob/sysmon/ws?metrics=cpu"


def connect(hub: Hub, token: str) -> Any:
    return websockets.connect(
        sysmon_url(hub), additional_headers={"Authorization": f"token {token}"}, open_timeout=30
    )


async def closed_code(ws: Any, timeout: float) -> tuple[int, str, float]:
    """Read until the server closes; (close code, reason, when)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(websockets.ConnectionClosed) as excinfo:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
    assert excinfo.value.rcvd is not None, "closed without a close frame"
    return excinfo.value.rcvd.code, excinfo.value.rcvd.reason, time.monotonic()


@pytest.mark.timeout(240)
async def test_jupyterhub_admins_groups_and_revocation(hub: Hub) -> None:
    alice = hub.new_token("alice")
    bob = hub.new_token("bob")
    olga = hub.new_token("olga")
    carol = hub.new_token("carol")

    # a hub admin streams status from bob's server
    async with connect(hub, alice["token"]) as ws:
        hello = await recv_json(ws, timeout=30)
        assert hello["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")

        # bob's own token reaches his server, but he is not an administrator
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with connect(hub, bob["token"]):
                pass
        assert excinfo.value.response.status_code == 403
        assert "not an administrator" in json.loads(excinfo.value.response.body)["message"]
        # ... and his server carries on serving the admin
        assert "cpu" in await recv_type(ws, "status")

        # revoking alice's token closes her open socket with 4401
        code, _ = hub.api("DELETE", f"/users/alice/tokens/{alice['id']}")
        assert code == 204
        revoked_at = time.monotonic()
        code, reason, closed_at = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert (code, reason) == (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")
        assert closed_at - revoked_at < REVALIDATE_INTERVAL + 5  # one re-check, on a busy machine

    # a member of an admin group is admitted; leaving the group closes with 4403
    async with connect(hub, olga["token"]) as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
        code, _ = hub.api("DELETE", "/groups/ops/users", {"users": ["olga"]})
        assert code == 200
        code, reason, _ = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert code == CLOSE_NOT_ADMIN
        assert reason in ("no longer an administrator", "no longer allowed on this server")

    # a hub admin whose admin flag is removed while connected: 4403
    async with connect(hub, carol["token"]) as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
        code, _ = hub.api("PATCH", "/users/carol", {"admin": False})
        assert code == 200
        code, reason, _ = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert (code, reason) == (CLOSE_NOT_ADMIN, "no longer an administrator")


def test_prometheus_scrapes_sysmon_metrics_with_a_reader_token(hub: Hub) -> None:
    """A ``custom:sysmon:read`` token as bearer credentials reads ``sysmon/metrics`` (the
    hub exporter's per-server tokens are such tokens, narrowed to one server); without
    one it is 403; and the server's own ``/metrics``, which its owner reads, carries none
    of sysmon's series."""
    token = hub.new_token("monitor")["token"]
    url = f"{hub.url}/user/bob/sysmon/metrics"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        body = reply.read().decode()
    assert "sysmon_memory_total_bytes" in body
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=20)
    assert refused.value.code == 403
    refused.value.close()
    owner = hub.new_token("bob")["token"]
    theirs = urllib.request.Request(
        f"{hub.url}/user/bob/metrics", headers={"Authorization": f"Bearer {owner}"}
    )
    with urllib.request.urlopen(theirs, timeout=20) as reply:
        assert "sysmon_" not in reply.read().decode()


# -- the route table's hub identities --------------------------------------------------------

#: identity (tests/test_routes.py's EXPECTED) -> hub user whose token it is (None: none)
HUB_IDENTITIES: dict[str, str | None] = {
    "admin": "alice",
    "reader": "monitor",
    "hub-owner": "bob",
    "plain-user": "dave",
    "hub-none": None,
}


@pytest.fixture(scope="module")
def hub_headers(hub: Hub) -> dict[str, dict[str, str]]:
    return {
        identity: {"Authorization": f"token {hub.new_token(user)['token']}"} if user else {}
        for identity, user in HUB_IDENTITIES.items()
    }


@pytest.fixture(scope="module")
def bob_kernel(hub: Hub, hub_headers: dict[str, dict[str, str]]) -> Iterator[str]:
    """A kernel in bob's server, for the channels probes."""
    base = f"{hub.url}/user/bob/"
    status, _, body = request(
        base + "api/kernels", "POST", hub_headers["hub-owner"], json.dumps({"name": "python3"})
    )
    assert status == 201, body
    kernel = json.loads(body)["id"]
    yield kernel
    request(f"{base}api/kernels/{kernel}", "DELETE", hub_headers["hub-owner"])


HUB_CELLS = [(identity, route) for identity in HUB_IDENTITIES for route in ROUTES]


@pytest.mark.timeout(240)  # run alone, the first cell starts the hub and bob's server
@pytest.mark.parametrize(("identity", "route"), HUB_CELLS, ids=[f"{i}-{r}" for i, r in HUB_CELLS])
def test_hub_route(
    hub: Hub, hub_headers: dict[str, dict[str, str]], bob_kernel: str, identity: str, route: str
) -> None:
    got = probe(f"{hub.url}/user/bob/", route, hub_headers[identity], bob_kernel)
    assert got == EXPECTED[identity][route], (identity, route, hub.log()[-2000:])
