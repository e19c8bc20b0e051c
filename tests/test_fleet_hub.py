"""The fleet against a real JupyterHub (tests/hub.py): seven servers of six users, an
admin's token, a user's token, and read-only ``custom:sysmon:read`` tokens; the servers'
own tokens the fleet mints (what a server replaced by its user captures, rotation,
revocation); the hub exporter service scraped by a real Prometheus; and
notebooks/fleet.ipynb in JupyterLab in Chromium against the same hub (one hub for the
module: starting the servers is the slow part).

Users: ``ada`` is a hub admin; ``rita`` reads sysmon through the ``readers`` group
(role ``sysmon-reader``: ``custom:sysmon:read``, ``list:users``, ``read:servers``);
ben, cat, dan, eve and fay run servers (ben a named one too, ``gpu``); gus starts while
the fleet runs and fay stops; bob replaces his server with a listener. Services:
``sysmon-exporter`` (managed: jupyter_server_ext.hub_exporter, minting the servers'
tokens for the user ``sysmon-metrics``), ``prometheus`` (may access the exporter only)
and ``watcher`` (reads and lists, but cannot own minted tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from benchmarks.widget import counting_comms
from sysmon_nb import magic
from sysmon_nb.fleet import FleetClient, FleetRefusedError
from sysmon_nb.fleet_table import FleetView
from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

from .conftest import eventually, recv_json, recv_type
from .hub import Hub, Listener, free_port
from .prom_server import Prometheus, promtool_remarks, until
from .servers import ROOT, TOKEN, isolated_env
from .test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, need_chromium, wait, wait_kernel_idle

REVALIDATE_INTERVAL = 1.0
RUNNING = [("ben", ""), ("ben", "gpu"), ("cat", ""), ("dan", ""), ("eve", ""), ("fay", "")]
READER_SCOPES = ["custom:sysmon:read", "list:users", "read:servers"]
#: A fleet's token also mints its servers' tokens (for its own user).
FLEET_SCOPES = [*READER_SCOPES, "tokens!user=rita"]
EXPORTER = "sysmon-exporter"
PROMETHEUS_TOKEN = secrets.token_hex(16)
WATCHER_TOKEN = secrets.token_hex(16)


def services(hub_url: str) -> list[dict[str, Any]]:
    """The exporter (managed by the hub, as docs/prometheus-hub.md configures it), the
    token Prometheus scrapes it with, and a service that may read but not mint."""
    exporter = [
        *(sys.executable, "-m", "jupyter_server_ext.hub_exporter", f"--hub-url={hub_url}/"),
        *("--token-owner=sysmon-metrics", "--refresh-interval=1"),
    ]
    return [
        {"name": EXPORTER, "url": f"http://127.0.0.1:{free_port()}", "command": exporter},
        {"name": "prometheus", "api_token": PROMETHEUS_TOKEN},
        {"name": "watcher", "api_token": WATCHER_TOKEN},
    ]


ROLES = [
    {"name": "sysmon-reader", "scopes": READER_SCOPES, "groups": ["readers"]},
    {"name": "sysmon-exporter",
     "scopes": [*READER_SCOPES, "tokens!user=sysmon-metrics"], "services": [EXPORTER]},
    {"name": "sysmon-metrics", "scopes": ["custom:sysmon:read"], "users": ["sysmon-metrics"]},
    {"name": "prometheus", "scopes": [f"access:services!service={EXPORTER}"],
     "services": ["prometheus"]},
    {"name": "watcher", "scopes": READER_SCOPES, "services": ["watcher"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = Hub(
        tmp_path_factory.mktemp("fleet-hub"),
        users={"ada", "rita", "ben", "cat", "dan", "eve", "fay", "gus", "bob"},
        admins={"ada"},
        groups={"readers": {"users": ["rita"]}, "gpu-users": {"users": ["ben"]}},
        roles=ROLES,
        sysmon={
            "interval": 0.5,
            "metrics": ["cpu", "memory", "disk", "jupyter", "counters"],
            "revalidate_interval": REVALIDATE_INTERVAL,
        },
        # A server replaced by its user keeps its route, as a pod whose process was
        # swapped does: the hub does not notice within the tests.
        extra="c.Spawner.poll_interval = 3600",
    )
    running.services = services(running.url)
    try:
        running.start()
        running.start_servers([*RUNNING, ("bob", "")])
        yield running
    finally:
        running.stop()


def ws_url(hub: Hub, user: str, name: str = "") -> str:
    server = f"{user}/{name}/" if name else f"{user}/"
    return f"ws://127.0.0.1:{hub.public_port}/user/{server}sysmon/ws?metrics=cpu"


def connect(hub: Hub, token: str, user: str, name: str = "") -> Any:
    return websockets.connect(
        ws_url(hub, user, name),
        additional_headers={"Authorization": f"token {token}"},
        open_timeout=30,
    )


def get(hub: Hub, path: str, token: str) -> tuple[int, str]:
    """GET ``path`` under the proxy (``user/ben/api/kernels``): (status, body)."""
    request = urllib.request.Request(
        f"{hub.url}/{path}", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode(errors="replace")


async def refused(hub: Hub, token: str, user: str, name: str = "") -> tuple[int, str]:
    with pytest.raises(websockets.InvalidStatus) as excinfo:
        async with connect(hub, token, user, name):
            pass
    response = excinfo.value.response
    return response.status_code, response.body.decode(errors="replace")


async def closed_code(ws: Any, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    with pytest.raises(websockets.ConnectionClosed) as excinfo:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
    assert excinfo.value.rcvd is not None, "closed without a close frame"
    return excinfo.value.rcvd.code, excinfo.value.rcvd.reason


def streaming(fleet: FleetClient, keys: list[tuple[str, str]]) -> bool:
    return all(k in fleet.servers and fleet.servers[k].samples > 0 for k in keys)


async def watch(fleet: FleetClient) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(fleet.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.timeout(300)
async def test_admin_fleet_follows_servers_that_stop_and_start(hub: Hub) -> None:
    token = hub.new_token("ada")["token"]
    fleet = FleetClient(hub.url, token, refresh_interval=0.5)
    task = await watch(fleet)
    try:
        await eventually(lambda: streaming(fleet, RUNNING), timeout=60)
        # users without a running server are listed, stopped
        assert fleet.servers[("ada", "")].state() == "stopped"
        assert fleet.servers[("gus", "")].hub_state == "stopped"
        summary = fleet.servers[("ben", "gpu")].summary
        assert summary is not None and summary.cpu_percent is not None
        assert summary.kernels == 0
        assert fleet.owner is not None and fleet.owner["name"] == "ada"

        hub.stop_server("fay")
        code, _ = hub.api("POST", "/users/gus/server")
        assert code in (201, 202)
        await eventually(lambda: fleet.servers[("fay", "")].state() == "stopped", timeout=60)
        assert fleet.servers[("fay", "")].task is None
        await eventually(lambda: streaming(fleet, [("gus", "")]), timeout=120)
        assert fleet.servers[("gus", "")].state() == "connected"
    finally:
        await stop(task)
    assert all(s.task is None for s in fleet.servers.values())


@pytest.mark.timeout(120)
async def test_a_users_own_token_is_refused_naming_the_scopes(hub: Hub) -> None:
    token = hub.new_token("cat")["token"]
    fleet = FleetClient(hub.url, token, refresh_interval=0.1)
    with pytest.raises(FleetRefusedError) as excinfo:
        await asyncio.wait_for(fleet.run(), 30)
    assert "'cat'" in excinfo.value.reason
    assert "list:users" in excinfo.value.reason
    assert fleet.listings == 0 and not fleet.servers
    # a token the hub does not know at all
    fleet = FleetClient(hub.url, "not-a-token")
    with pytest.raises(FleetRefusedError, match="refused this token"):
        await asyncio.wait_for(fleet.run(), 30)
    # list and read, but neither access:servers nor custom:sysmon:read
    token = hub.new_token("rita", ["list:users", "read:servers"])["token"]
    with pytest.raises(FleetRefusedError, match=r"custom:sysmon:read \(or access:servers\)"):
        await asyncio.wait_for(FleetClient(hub.url, token).run(), 30)


def not_allowing(hub: Hub, user: str) -> int:
    """How many times the single-user servers logged the hub provider's refusal of
    ``user`` (their output goes to the hub's log)."""
    return hub.log_path.read_text(errors="replace").count(f"Not allowing user {user}")


@pytest.mark.timeout(180)
async def test_a_read_only_token_streams_every_server_and_nothing_else(hub: Hub) -> None:
    token = hub.new_token("rita", FLEET_SCOPES)["token"]
    refusals_logged = not_allowing(hub, "rita")
    fleet = FleetClient(hub.url, token, refresh_interval=1.0)
    task = await watch(fleet)
    try:
        await eventually(lambda: len(fleet.servers) > 0, timeout=30)
        ready = [k for k, s in fleet.servers.items() if s.hub_state == "ready"]
        assert set(RUNNING) - {("fay", "")} <= set(ready)
        await eventually(lambda: streaming(fleet, ready), timeout=60)
    finally:
        await stop(task)
    # the same token reads sysmon's latest sample, and nothing else on the server
    code, body = get(hub, "user/ben/sysmon/api/status", token)
    assert code == 200 and "cpu" in json.loads(body)
    # a reader on the sysmon routes is not a refusal: no "Not allowing user" line
    assert not_allowing(hub, "rita") == refusals_logged
    for path in ("user/ben/api/kernels", "user/ben/api/contents", "user/ben/gpu/api/sessions"):
        code, _ = get(hub, path, token)
        assert code == 403, path
    # ...while every other route refuses it as the hub's provider does, with that line
    await eventually(lambda: not_allowing(hub, "rita") >= refusals_logged + 3, timeout=10)
    code, _ = hub.api("GET", "/users", token=token)
    assert code == 200


@pytest.mark.timeout(180)
async def test_read_only_refusals_filters_and_revocation(hub: Hub) -> None:
    # filtered to one user: that user's servers, named included; nobody else's
    only_ben = hub.new_token("rita", ["custom:sysmon:read!user=ben"])["token"]
    for name in ("", "gpu"):
        async with connect(hub, only_ben, "ben", name) as ws:
            assert (await recv_json(ws, timeout=30))["type"] == "hello"
    code, body = await refused(hub, only_ben, "cat")
    assert code == 403
    assert "needs access:servers or custom:sysmon:read!server=cat/" in body
    # filtered to one server
    ben_default = hub.new_token("rita", ["custom:sysmon:read!server=ben/"])["token"]
    async with connect(hub, ben_default, "ben") as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
    assert (await refused(hub, ben_default, "ben", "gpu"))[0] == 403
    # filtered to a group holding ben: refused, the server cannot resolve a group (fail closed)
    by_group = hub.new_token("rita", ["custom:sysmon:read!group=gpu-users"])["token"]
    code, body = await refused(hub, by_group, "ben")
    assert code == 403 and "needs access:servers or custom:sysmon:read!server=ben/" in body
    assert get(hub, "user/ben/sysmon/api/status", by_group)[0] == 403
    # without the scope: refused, and no other route lets it in either
    no_read = hub.new_token("rita", ["read:servers"])["token"]
    assert (await refused(hub, no_read, "ben"))[0] == 403
    assert get(hub, "user/ben/sysmon/api/status", no_read)[0] == 403
    # another user's (non-admin) token on ben's server
    assert (await refused(hub, hub.new_token("cat")["token"], "ben"))[0] == 403

    # revoked while connected: 4401 within a re-check
    reader = hub.new_token("rita", ["custom:sysmon:read"])
    async with connect(hub, reader["token"], "dan") as ws:
        assert (await recv_json(ws, timeout=30))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
        code, _ = hub.api("DELETE", f"/users/rita/tokens/{reader['id']}")
        assert code == 204
        code, reason = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
        assert (code, reason) == (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")
    assert get(hub, "user/dan/sysmon/api/status", reader["token"])[0] == 403

    # the scope withdrawn while connected (rita leaves the readers group): 4403
    reader = hub.new_token("rita", ["custom:sysmon:read"])
    try:
        async with connect(hub, reader["token"], "eve") as ws:
            assert (await recv_json(ws, timeout=30))["type"] == "hello"
            code, _ = hub.api("DELETE", "/groups/readers/users", {"users": ["rita"]})
            assert code == 200
            code, reason = await closed_code(ws, timeout=REVALIDATE_INTERVAL + 20)
            assert (code, reason) == (CLOSE_NOT_ADMIN, "no longer holds custom:sysmon:read")
    finally:
        hub.api("POST", "/groups/readers/users", {"users": ["rita"]})


@pytest.mark.timeout(180)
async def test_picking_a_server_opens_its_dashboard_fed_by_that_server(hub: Hub) -> None:
    picked, other = ("ben", "gpu"), ("cat", "")
    with counting_comms():
        fleet = FleetClient(hub.url, hub.new_token("ada")["token"], refresh_interval=1.0)
        view = FleetView(fleet, interval=0.5).start()
        try:
            await eventually(lambda: streaming(fleet, [picked, other]), timeout=60)
            await eventually(lambda: ("ben", "gpu") in [o[1] for o in view.pick.options])
            view.pick.value = picked  # what selecting it in the front end does
            monitor = view.monitor
            assert monitor is not None and view.detail.children[1] is monitor.dashboard
            label = view.detail.children[0].value
            assert (
                label.startswith("<b>dashboard of ben/gpu</b> http://")
                and "/user/ben/gpu/" in label
            )
            assert monitor.client.url == f"ws://127.0.0.1:{hub.public_port}/user/ben/gpu/sysmon/ws"
            await eventually(lambda: len(monitor.dashboard.samples) >= 2, timeout=60)
            # the dashboard borrows the server's own token, never the fleet's
            assert fleet.tokens is not None
            token = fleet.tokens.current(picked)
            assert token is not None and monitor.client.credential == token.token
            assert token.scope == "access:servers!server=ben/gpu"
            # the samples come from that server process (its hello's server_id), no other
            hello, fleet_hello = monitor.client.hello, fleet.servers[picked].client.hello
            assert hello is not None and fleet_hello is not None
            assert hello.server_id == fleet_hello.server_id is not None
            other_hello = fleet.servers[other].client.hello
            assert other_hello is not None and other_hello.server_id != hello.server_id
            assert monitor in magic.running  # listed by %sysmon status

            view.pick.value = other  # another server: the first dashboard stops
            second = view.monitor
            assert second is not None and second is not monitor
            assert view.detail.children[1] is second.dashboard
            assert "<b>dashboard of cat</b>" in view.detail.children[0].value
            await eventually(lambda: monitor.task.done() and len(second.dashboard.samples) >= 1,
                             timeout=60)  # fmt: skip
            view.pick.value = None
            assert view.monitor is None and view.detail.children == ()
            await eventually(lambda: second.task.done())
        finally:
            await view.wait_stopped()
    assert all(s.task is None for s in fleet.servers.values())


@pytest.mark.timeout(180)
async def test_the_views_status_counts_servers_a_filtered_token_may_not_read(hub: Hub) -> None:
    token = hub.new_token(
        "rita", ["custom:sysmon:read!user=ben", "list:users", "read:servers", "tokens!user=rita"]
    )
    with counting_comms():
        fleet = FleetClient(hub.url, token["token"], refresh_interval=1.0)
        view = FleetView(fleet, interval=0.5).start()
        try:
            await eventually(lambda: fleet.listings > 0, timeout=30)
            ready = [k for k, s in fleet.servers.items() if s.hub_state == "ready"]
            bens = [k for k in ready if k[0] == "ben"]
            assert len(bens) == 2 and len(ready) > 2
            await eventually(lambda: streaming(fleet, bens), timeout=60)
            others = [fleet.servers[k] for k in ready if k[0] != "ben"]
            await eventually(lambda: all(s.client is None or s.client.state.phase == "refused"
                                         for s in others), timeout=60)  # fmt: skip
            assert view.describe() == (
                f"{len(fleet.servers)} servers, {len(ready)} ready, 2 streaming,"
                f" {len(ready) - 2} refused"
            )
            # never even connected: the fleet sends them no token at all
            assert "refused: the fleet's token may not read" in others[0].state()
            view.redraw()
            assert f"{len(ready) - 2} refused" in view.header.value
        finally:
            await view.wait_stopped()


def granted(model: dict[str, Any]) -> list[str]:
    """A token's scopes, less those that only identify its owner (every token has them)."""
    identify = {f"read:users:{field}!user={model['name']}" for field in ("name", "groups")}
    return [scope for scope in model["scopes"] if scope not in identify]


def useless_elsewhere(hub: Hub, token: str, victim: str) -> None:
    """``token``, captured at ``victim``'s server, opens nothing anywhere else."""
    code, model = hub.api("GET", "/user", token=token)
    assert code == 200 and isinstance(model, dict)  # still live: the hub knows it
    owner = model["name"]
    assert owner not in (victim, "cat"), model
    (scope,) = granted(model)
    assert scope.endswith(f"!server={victim}/"), model
    # the hub's API: no new token, no user list, no other user
    assert hub.api("POST", f"/users/{owner}/tokens", {}, token=token)[0] == 403
    assert hub.api("GET", "/users", token=token)[0] in (403, 404)
    assert hub.api("GET", "/users/cat", token=token)[0] in (403, 404)
    assert hub.api("DELETE", f"/users/{victim}/server", token=token)[0] in (403, 404)
    # another user's server, and that server's sysmon
    for path in ("user/cat/api/kernels", "user/cat/api/contents", "user/cat/sysmon/api/status",
                 "user/ben/gpu/sysmon/api/status"):  # fmt: skip
        assert get(hub, path, token)[0] == 403, path


@pytest.mark.timeout(240)
async def test_a_server_replaced_by_its_user_captures_only_tokens_useless_elsewhere(
    hub: Hub,
) -> None:
    """bob kills his server and listens on its port (as its user can): the admin's fleet,
    a reader's fleet and the hub exporter each send it a token minted for bob's server
    alone; none of their own tokens arrives, and what arrives opens nothing else."""
    admin = hub.new_token("ada")["token"]
    reader = hub.new_token("rita", FLEET_SCOPES)["token"]
    fleets = [FleetClient(hub.url, t, refresh_interval=1.0) for t in (admin, reader)]
    tasks = [await watch(fleet) for fleet in fleets]
    listener: Listener | None = None
    owners: dict[str, str] = {}  # captured token -> its owner
    try:
        for fleet in fleets:  # both stream bob's server: his server admits the tokens
            await eventually(lambda f=fleet: streaming(f, [("bob", "")]), timeout=60)
        pid, port = hub.server_process("bob")
        os.kill(pid, signal.SIGKILL)
        listener = Listener(port)

        def captured() -> bool:
            assert listener is not None
            for token in listener.tokens() - owners.keys():
                code, model = hub.api("GET", "/user", token=token)
                owners[token] = model["name"] if code == 200 and model else "?"
            return {"ada", "rita", "sysmon-metrics"} <= set(owners.values())

        await eventually(captured, timeout=60)
        heads = "".join(listener.heads)
        for own in (admin, reader, hub.service_token, PROMETHEUS_TOKEN):
            assert own not in heads
        assert "?" not in owners.values(), "an unknown credential reached the listener"
        for token in owners:
            useless_elsewhere(hub, token, "bob")
            # the captured admin token identifies ada as admin (the server admitted her
            # as an administrator through it), and opens bob's sysmon stream only
            code, model = hub.api("GET", "/user", token=token)
            if model["name"] == "ada":
                assert model["admin"] is True and "groups" in model
                assert granted(model) == ["access:servers!server=bob/"]
            code, _ = await refused(hub, token, "cat")
            assert code == 403
    finally:
        for task in tasks:
            await stop(task)
        if listener is not None:
            listener.close()
        hub.stop_server("bob")
    # every token the fleets minted was revoked when they closed
    for token in owners:
        if owners[token] in ("ada", "rita"):
            assert hub.api("GET", "/user", token=token)[0] == 403


LIFETIME = 12  # s: each server's token is replaced 6-9 s after it was minted


def tokens_of(hub: Hub, user: str) -> dict[str, str]:
    """The live tokens of ``user`` a fleet minted: id -> note."""
    code, body = hub.api("GET", f"/users/{user}/tokens")
    assert code == 200 and isinstance(body, dict)
    return {t["id"]: t["note"] for t in body["api_tokens"] if "sysmon fleet:" in t["note"]}


@pytest.mark.timeout(180)
async def test_tokens_are_rotated_before_they_expire_and_revoked_on_close(hub: Hub) -> None:
    fleet = FleetClient(hub.url, hub.new_token("rita", FLEET_SCOPES)["token"],
                        refresh_interval=1.0, token_lifetime=LIFETIME)  # fmt: skip
    task = await watch(fleet)
    minted: set[str] = set()
    try:
        await eventually(lambda: fleet.listings > 0, timeout=30)
        ready = [k for k, s in fleet.servers.items() if s.hub_state == "ready"]
        await eventually(lambda: streaming(fleet, ready), timeout=60)
        started = time.monotonic()
        assert fleet.tokens is not None
        first = {t.server: t.id for t in fleet.tokens.held()}
        assert set(first) == set(ready) and set(first.values()) <= set(tokens_of(hub, "rita"))
        # past the first tokens' expiry and a re-check: each stream kept going, new tokens
        await eventually(
            lambda: time.monotonic() - started > LIFETIME + REVALIDATE_INTERVAL + 1
            and fleet.tokens is not None and fleet.tokens.rotated >= len(ready),
            timeout=90,
        )  # fmt: skip
        minted |= {t.id for t in fleet.tokens.held()} | set(first.values())
        counts = {k: fleet.servers[k].samples for k in ready}
        await eventually(lambda: all(fleet.servers[k].samples > counts[k] for k in ready), 30)
        for key in ready:
            server = fleet.servers[key]
            assert server.error is None and server.client is not None, key
            assert server.client.state.phase == "connected", (key, server.state())
            assert server.client.connections >= 2  # reconnected with its new token
            current = fleet.tokens.current(key)
            assert current is not None and current.id != first[key]
        # the replaced tokens are revoked: the hub lists the ones in use only
        await eventually(lambda: not set(first.values()) & set(tokens_of(hub, "rita")), 30)
        minted |= {t.id for t in fleet.tokens.held()}
    finally:
        await stop(task)
    assert tokens_of(hub, "rita") == {} and len(minted) >= 2 * len(ready)  # revoked on close
    assert fleet.tokens is not None and fleet.tokens.held() == []


@pytest.mark.timeout(120)
async def test_a_token_the_hub_will_not_narrow_is_refused_saying_what_it_needs(
    hub: Hub,
) -> None:
    no_tokens = hub.new_token("rita", READER_SCOPES)["token"]
    with pytest.raises(FleetRefusedError, match=r"lacks tokens!user=rita") as excinfo:
        await asyncio.wait_for(FleetClient(hub.url, no_tokens).run(), 30)
    assert "per-server tokens" in excinfo.value.reason
    with pytest.raises(FleetRefusedError, match="the hub mints tokens for users only"):
        await asyncio.wait_for(FleetClient(hub.url, WATCHER_TOKEN).run(), 30)
    fleet = FleetClient(hub.url, WATCHER_TOKEN, token_owner="sysmon-metrics")
    with pytest.raises(FleetRefusedError, match=r"lacks tokens!user=sysmon-metrics"):
        await asyncio.wait_for(fleet.run(), 30)
    assert not fleet.servers and fleet.listings == 0


def scrape_exporter(hub: Hub, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{hub.url}/services/{EXPORTER}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


@pytest.mark.timeout(180)
def test_prometheus_scrapes_every_server_through_the_hub_exporter_only(
    hub: Hub, tmp_path: Path
) -> None:
    """Prometheus holds a token that opens the exporter service and nothing else; the
    exporter streams every server with tokens minted for each one."""
    token_file = tmp_path / "hub-token"
    token_file.write_text(PROMETHEUS_TOKEN)
    prometheus = Prometheus(
        tmp_path,
        "  - job_name: jupyterhub\n"
        f"    metrics_path: /services/{EXPORTER}/metrics\n"
        f"    authorization: {{credentials_file: {token_file}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{hub.public_port}']}}]\n",
    )
    try:
        ready = {k for k, r in hub_servers(hub).items() if r}
        assert {("ben", ""), ("ben", "gpu"), ("cat", "")} <= ready

        def labelled() -> set[tuple[str, str]] | None:
            # a default server's hub_server is "": Prometheus stores an empty label as none
            found = {(r["metric"]["hub_user"], r["metric"].get("hub_server", ""))
                     for r in prometheus.query("sysmon_memory_total_bytes")}  # fmt: skip
            return found if ready <= found else None

        found = until(labelled, "every ready server's series in Prometheus", timeout=90)
        assert all(k in found for k in ready)
        until(lambda: prometheus.query('up{job="jupyterhub"} == 1'), "a scrape that worked")
        # the per-CPU counters, which a server streams only when they are named
        cores = until(
            lambda: prometheus.query('sysmon_cpu_seconds_total{hub_user="ben",hub_server="gpu"}'),
            "the per-CPU counters of ben/gpu",
        )
        assert cores and all("user" not in r["metric"] for r in cores)
        until(lambda: prometheus.query('sysmon_hub_server_up{hub_user="cat"} == 1'), "cat up")
    finally:
        prometheus.stop()
    code, body = scrape_exporter(hub, PROMETHEUS_TOKEN)
    assert code == 200 and b'hub_user="cat"' in body
    assert [r for r in promtool_remarks(body) if "sysmon_" in r] == []
    # nobody else reads it: no token, a user's, a reader's, the hub's own refused
    assert scrape_exporter(hub, None)[0] == 403
    for other in (hub.new_token("cat")["token"], hub.new_token("rita", FLEET_SCOPES)["token"]):
        code, body = scrape_exporter(hub, other)
        assert code == 403 and b"access:services!service=sysmon-exporter" in body
    # a token in the URL is not read (nor logged)
    assert get(hub, f"services/{EXPORTER}/metrics?token={PROMETHEUS_TOKEN}", "")[0] == 403
    # ...and the Prometheus token opens nothing but the exporter
    assert get(hub, "user/cat/sysmon/api/status", PROMETHEUS_TOKEN)[0] == 403
    assert hub.api("GET", "/users", token=PROMETHEUS_TOKEN)[0] in (403, 404)
    # stopped by SIGTERM (as the hub stops it), the exporter revokes what it minted (the
    # hub then starts a new one, which mints its own)
    minted = tokens_of(hub, "sysmon-metrics")
    assert minted
    exporter = exporter_process(hub)
    exporter.send_signal(signal.SIGTERM)
    exporter.wait(30)  # not our child: its exit status is the hub's to read
    assert not minted.keys() & tokens_of(hub, "sysmon-metrics").keys()
    assert PROMETHEUS_TOKEN not in hub.log_path.read_text(errors="replace")


def exporter_process(hub: Hub) -> Any:
    """The exporter service the hub started (a psutil.Process)."""
    import psutil

    assert hub.process is not None
    for child in psutil.Process(hub.process.pid).children(recursive=True):
        if "jupyter_server_ext.hub_exporter" in " ".join(child.cmdline()):
            return child
    raise AssertionError("the hub runs no exporter")


FLEET_ROWS = """() => Array.from(document.querySelectorAll('table.sysmon-fleet')).map(
    t => Array.from(t.querySelectorAll('tr')).slice(1).map(
        r => [r.className, ...Array.from(r.cells).map(c => c.innerText)]))"""


def hub_servers(hub: Hub) -> dict[tuple[str, str], bool]:
    """Every (user, server) the hub lists, stopped default servers included: ready?"""
    code, users = hub.api("GET", "/users?include_stopped_servers=1")
    assert code == 200 and isinstance(users, list)
    listed = {}
    for user in users:
        servers = user.get("servers") or {}
        if "" not in servers:
            listed[(user["name"], "")] = False
        for name, server in servers.items():
            listed[(user["name"], name)] = bool(server.get("ready"))
    return listed


@pytest.mark.timeout(300)
def test_the_fleet_notebook_in_jupyterlab_shows_a_row_per_server(
    hub: Hub, jupyter: Any, tmp_path: Path
) -> None:
    """fleet.ipynb run in JupyterLab in Chromium, the kernel holding an admin's token:
    both tables list every server of the hub, each ready one streaming; picking one
    under "dashboard" draws its charts below."""
    from playwright.sync_api import sync_playwright

    need_chromium()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "fleet.ipynb", root / "fleet.ipynb")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = isolated_env(
        tmp_path,
        PYTHONPATH=pythonpath,
        SYSMON_HUB_URL=f"{hub.url}/",
        SYSMON_HUB_TOKEN=hub.new_token("ada")["token"],
    )
    lab = jupyter("--LabApp.expose_app_in_browser=True", app="jupyterlab", root_dir=root,
                  interval=None, env=env)  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            page.goto(f"{lab.url}lab/tree/fleet.ipynb?token={TOKEN}", timeout=90_000)
            wait_kernel_idle(page)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.add_style_tag(content=".Toastify { display: none !important; }")

            def full_tables() -> Any:
                expected = hub_servers(hub)
                tables = page.evaluate(FLEET_ROWS)
                if len(tables) != 2:
                    return None
                for rows in tables:
                    shown = {(r[1], r[2]): r for r in rows}
                    if len(rows) != len(expected) or set(shown) != set(expected):
                        return None
                    for key, ready in expected.items():
                        row = shown[key]
                        live = row[3] == "connected" and row[4] != "" and row[0] != "d"
                        if live != ready:
                            return None
                return tables

            tables = wait(page, full_tables, "a row per server, each ready one streaming", 120)
            assert sum(r[0] != "d" for r in tables[0]) >= 5  # at least five servers live
            header = page.locator(".jp-OutputArea-output:has(table.sysmon-fleet)").first
            assert " ready, " in header.inner_text() and " streaming" in header.inner_text()
            # pick ben's gpu server in the first view's "dashboard" list: its charts below
            first_view = page.locator(".jp-OutputArea-output:has(table.sysmon-fleet)").first
            first_view.locator(".widget-dropdown select").nth(1).select_option(label="ben/gpu")
            wait(
                page,
                lambda: first_view.locator(".bqplot path.line").count()
                and all(first_view.evaluate(
                    "o => Array.from(o.querySelectorAll('.bqplot path.line'))"
                    ".slice(0, 1).map(p => p.getAttribute('d') || '')")),
                "the picked server's charts to draw",
                90,
            )  # fmt: skip
            assert "dashboard of ben/gpu" in first_view.inner_text()
            # The picture: the table, the picked server's header and its first chart.
            SHOTS.mkdir(parents=True, exist_ok=True)
            first_view.evaluate("o => o.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1500)
            box = first_view.bounding_box()
            chart = first_view.locator(".bqplot").first.bounding_box()
            assert box is not None and chart is not None
            bottom = chart["y"] + chart["height"] + 36  # its legend, under it
            clip = {
                "x": box["x"],
                "y": box["y"],
                "width": box["width"],
                "height": bottom - box["y"],
            }
            page.screenshot(path=str(SHOTS / "fleet.png"), clip=clip)
            page.screenshot(path=str(SHOTS / "fleet-page.png"))
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            assert errors == 0, "a cell failed in the browser"
        finally:
            browser.close()
    assert (SHOTS / "fleet.png").stat().st_size > 10_000
