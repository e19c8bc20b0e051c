"""The fleet without a hub: scopes, summaries, the table, discovery, and FleetClient
against the simulated hub of benchmarks/fleet_sim.py (pagination, bounded opening)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.fleet_sim import TOKEN
from benchmarks.widget import counting_comms
from sysmon_nb import fleet_table
from sysmon_nb.client import StatusClient
from sysmon_nb.discovery import DiscoveryError, discover_hub
from sysmon_nb.fleet import FleetClient, FleetServer, Summary, missing_scopes, summarize
from sysmon_nb.fleet_table import FleetView, render
from sysmon_nb.protocol import History, Status

from .conftest import eventually
from .servers import free_port


def test_missing_scopes_names_what_a_token_lacks() -> None:
    assert missing_scopes(["admin:users", "list:users", "read:servers", "access:servers"]) == []
    assert missing_scopes(["list:users!group=ops", "read:servers", "custom:sysmon:read"]) == []
    assert missing_scopes(["access:servers!user=bob", "read:servers!user=bob"]) == ["list:users"]
    assert missing_scopes([]) == [
        "list:users",
        "read:servers",
        "custom:sysmon:read (or access:servers)",
    ]
    assert missing_scopes(["list:users", "read:servers", "custom:sysmon"]) == [
        "custom:sysmon:read (or access:servers)"
    ]


def sample(**groups: Any) -> Status:
    return Status(seq=1, time=100.0, host="h", interval=5.0, groups=groups)


def test_summary_is_of_the_container_limit_when_there_is_one() -> None:
    s = summarize(
        sample(
            cpu={"percent": 10.0},
            memory={"percent": 20.0},
            container={
                "cpu_usage_cores": 1.5,
                "cpu_limit_cores": 2.0,
                "memory_used_bytes": 900,
                "memory_limit_bytes": 1000,
            },
            gpu={
                "devices": [
                    {"utilization_percent": 30.0, "memory_used_bytes": 8, "memory_total_bytes": 10}
                ]
            },
            disk={"mounts": [{"percent": 5.0}, {"percent": 95.0, "home": True}]},
            jupyter={"kernels": 3},
            alerts={"active": [{"name": "memory_high"}]},
        )
    )
    assert (s.cpu_percent, s.memory_percent, s.gpu_percent) == (75.0, 90.0, 80.0)
    assert (s.home_percent, s.kernels, s.alerts) == (95.0, 3, ("memory_high",))
    assert s.heaviest() == 95.0
    bare = summarize(sample(cpu={"percent": 10.0}, memory={"percent": 20.0}, container={}))
    assert (bare.cpu_percent, bare.memory_percent, bare.gpu_percent) == (10.0, 20.0, None)
    assert bare.home_percent is None and bare.alerts == ()


def row(user: str, state: str = "ready", **figures: Any) -> FleetServer:
    server = FleetServer(user, "", state, f"http://h/user/{user}/")
    if figures:
        server.summary = Summary(**figures)
        server.received_at = 1000.0
    return server


def test_the_table_sorts_heaviest_first_and_flags_rows_over_90() -> None:
    servers = [
        row("ann", cpu_percent=20.0, memory_percent=95.0),
        row("bo", cpu_percent=60.0, memory_percent=10.0),
        row("cy", "stopped"),
        row("di", cpu_percent=5.0, memory_percent=5.0, kernels=2),
    ]
    html = render(servers, "cpu", now=1003.0)
    order = [html.index(f"<td>{n}</td>") for n in ("bo", "ann", "di", "cy")]
    assert order == sorted(order)
    assert "<tr class=h><td>ann</td>" in html
    assert "<tr><td>bo</td>" in html
    assert "<tr class=d><td>cy</td><td></td><td>stopped</td>" in html
    assert "<td>3s</td>" in html
    assert "home %" not in html and "alerts" not in html  # no sample has them
    by_memory = render(servers, "memory", now=1003.0)
    assert by_memory.index("<td>ann</td>") < by_memory.index("<td>bo</td>")
    with_home = [*servers, row("ed", home_percent=91.0, alerts=("disk_full",))]
    html = render(with_home, "heaviest", now=1003.0)
    assert "<th>home %</th>" in html and "<th>alerts</th>" in html
    assert "<tr class=h><td>ed</td>" in html and "disk_full" in html
    assert "<td>&lt;x&gt;</td>" in render([row("<x>")], "cpu")


def test_the_views_summary_counts_streaming_and_refused_servers() -> None:
    from sysmon_nb.client import ConnectionState, StatusClient

    fleet = FleetClient("http://hub/", "secret-token")
    servers = {"ann": "connected", "bo": "connected", "cy": "refused", "di": "reconnecting"}
    for user, phase in servers.items():
        server = fleet.servers[(user, "")] = row(user, cpu_percent=1.0)
        server.client = StatusClient(server.url, "secret-token")
        server.client.state = ConnectionState(phase)  # type: ignore[arg-type]
    fleet.servers[("ed", "")] = row("ed", "stopped")
    fleet.servers[("bo", "")].received_at = None  # connected, no sample yet
    with counting_comms():
        view = FleetView(fleet)
        assert repr(view) == (
            "<sysmon fleet http://hub/: 5 servers, 4 ready, 1 streaming, 1 refused>"
        )
        fleet.listing_error = "HTTP 502"
        view.redraw()
        assert view.header.value.endswith(
            "4 ready, 1 streaming, 1 refused; the hub did not answer: HTTP 502"
        )
        view.error = "refused: this token cannot watch the hub's servers"
        assert repr(view).endswith(": stopped: refused: this token cannot watch the hub's servers>")
    assert "secret-token" not in repr(view) + view.header.value


def test_discover_hub_reads_its_two_variables_and_never_the_kernels_token() -> None:
    target = discover_hub(environ={"SYSMON_HUB_URL": "http://h/", "SYSMON_HUB_TOKEN": "t"})
    assert (target.url, target.token, target.source) == ("http://h/", "t", "SYSMON_HUB_URL")
    target = discover_hub("http://x/", environ={"MINE": "m"}, token_env="MINE")
    assert (target.url, target.token, target.source) == ("http://x/", "m", "arguments")
    with pytest.raises(DiscoveryError, match="SYSMON_HUB_TOKEN"):
        discover_hub(environ={"SYSMON_HUB_URL": "http://h/", "JUPYTERHUB_API_TOKEN": "k"})


@pytest.fixture
def simulated_hub(request: pytest.FixtureRequest) -> Iterator[str]:
    """benchmarks/fleet_sim.py: (users, interval) from indirect parametrize."""
    users, interval = getattr(request, "param", (450, 0.5))
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet_sim", str(users), str(port), str(interval)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None and sim.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}/"
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


class CountingSemaphore(asyncio.Semaphore):
    """A semaphore that remembers the most holders it had at once."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.holders = self.most = 0

    async def acquire(self) -> bool:
        await super().acquire()
        self.holders += 1
        self.most = max(self.most, self.holders)
        return True

    def release(self) -> None:
        self.holders -= 1
        super().release()


async def stopped(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.timeout(120)
async def test_every_page_listed_and_opening_bounded(simulated_hub: str) -> None:
    fleet = FleetClient(simulated_hub, TOKEN, max_opening=4, refresh_interval=60)
    fleet._opening = limit = CountingSemaphore(4)
    task = asyncio.get_running_loop().create_task(fleet.run())
    try:
        await eventually(lambda: len(fleet.servers) == 450, timeout=30)  # three pages
        await eventually(lambda: all(s.samples for s in fleet.servers.values()), timeout=60)
    finally:
        await stopped(task)
    assert 1 < limit.most <= 4
    assert fleet.listings == 1 and fleet.owner is not None
    assert all(s.task is None for s in fleet.servers.values())


def held_between_frames(fleet: FleetClient) -> tuple[int, list[str]]:
    """What the suspended readers of ``fleet`` (FleetClient._stream, StatusClient.__aiter__
    and .messages) hold of a frame or a sample while they wait for the next frame:
    (readers found, locals holding something)."""
    clients = [s.client for s in fleet.servers.values() if s.client is not None]
    readers, held = 0, []
    for obj in gc.get_objects():
        if type(obj) is types.AsyncGeneratorType:  # type(): no weak proxy is woken
            frame, code = obj.ag_frame, obj.ag_code
        elif type(obj) is types.CoroutineType:
            frame, code = obj.cr_frame, obj.cr_code
        else:
            continue
        if frame is None or code.co_name not in ("_stream", "__aiter__", "messages"):
            continue
        local = frame.f_locals
        owner = local.get("server").client if code.co_name == "_stream" else local.get("self")
        if not any(owner is c for c in clients):
            continue
        readers += 1
        for name, value in local.items():
            if (
                isinstance(value, (Status, History))
                or (isinstance(value, str) and '"status"' in value)
                or (isinstance(value, list) and value)
            ):
                held.append(f"{code.co_name}: {name}")
    return readers, held


@pytest.mark.timeout(60)
@pytest.mark.parametrize("simulated_hub", [(5, 0.2)], indirect=True)
async def test_between_frames_a_server_costs_its_summary_not_its_sample(
    simulated_hub: str,
) -> None:
    fleet = FleetClient(simulated_hub, TOKEN, refresh_interval=60)
    task = asyncio.get_running_loop().create_task(fleet.run())
    try:
        await eventually(
            lambda: len(fleet.servers) == 5 and all(s.samples >= 3 for s in fleet.servers.values()),
            timeout=30,
        )
        assert held_between_frames(fleet) == (15, [])  # three readers per server
        assert all(s.summary is not None for s in fleet.servers.values())
    finally:
        await stopped(task)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("simulated_hub", [(20, 0.2)], indirect=True)
async def test_the_view_redraws_once_per_interval_not_per_sample(
    simulated_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_table, "FILL_WINDOW_S", 0.0)
    with counting_comms() as counter:
        fleet = FleetClient(simulated_hub, TOKEN, refresh_interval=60)
        view = FleetView(fleet, interval=1.0)
        redraws = []
        original = view.redraw
        monkeypatch.setattr(view, "redraw", lambda now=None: (redraws.append(1), original(now)))
        view.start()
        try:
            await eventually(lambda: all(s.samples for s in fleet.servers.values())
                             and len(fleet.servers) == 20, timeout=30)  # fmt: skip
            before = (len(redraws), sum(s.samples for s in fleet.servers.values()))
            messages = counter["messages"]
            await asyncio.sleep(3.0)
            after = (len(redraws), sum(s.samples for s in fleet.servers.values()))
        finally:
            await view.wait_stopped()
    assert after[1] - before[1] >= 100  # 20 servers, 5 samples a second each
    assert 2 <= after[0] - before[0] <= 4  # one redraw per second
    assert counter["messages"] - messages <= 2 * 4
    assert "<tr class=d>" not in view.table.value or view.error is None


CHECK_FLEET = """
import asyncio, sysmon_nb.fleet_table as ft
for _ in range(600):
    if len(ft.running_fleets) == 2 and all(
        v.table.value.count("<tr") == 13 and "<tr class=d>" not in v.table.value
        for v in ft.running_fleets
    ):
        break
    await asyncio.sleep(0.05)
for v in ft.running_fleets:
    print(v.sort.value, v.table.value.count("<tr"), len(v.fleet.servers))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("simulated_hub", [(12, 0.5)], indirect=True)
def test_the_fleet_notebook_shows_every_server(simulated_hub: str, tmp_path: Any) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell

    from .servers import ROOT, execute, isolated_env, outputs_text

    nb = nbformat.read(ROOT / "notebooks" / "fleet.ipynb", as_version=4)
    nb.cells.append(new_code_cell(CHECK_FLEET))
    nb.cells.append(new_code_cell("%sysmon status"))
    env = isolated_env(tmp_path, SYSMON_HUB_URL=simulated_hub, SYSMON_HUB_TOKEN=TOKEN)
    execute(nb, tmp_path, env)
    assert outputs_text(nb.cells[-2]).splitlines() == ["heaviest 13 12", "memory 13 12"]
    # %sysmon status lists both fleet views, never the token
    views = f"<sysmon fleet {simulated_hub}: 12 servers, 12 ready, 12 streaming>"
    assert outputs_text(nb.cells[-1]).splitlines() == [views, views]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []


def streaming(fleet: FleetClient, count: int) -> bool:
    return len(fleet.servers) == count and all(s.samples for s in fleet.servers.values())


def sim_stats(hub_url: str) -> dict[str, int]:
    """What the simulated hub saw (benchmarks/fleet_sim.py: ``GET /sim/stats``)."""
    with urllib.request.urlopen(f"{hub_url}sim/stats", timeout=10) as reply:
        stats: dict[str, int] = json.loads(reply.read())
        return stats


LIFETIME = 5  # s: each token is rotated 2.5-3.75 s after it was minted


@pytest.mark.timeout(90)
@pytest.mark.parametrize("simulated_hub", [(6, 0.2)], indirect=True)
async def test_each_server_gets_its_own_token_rotated_in_time_and_revoked_at_close(
    simulated_hub: str,
) -> None:
    """The simulated servers admit only a live token minted for them, and close a
    connection with 4401 once its token has expired or been revoked."""
    fleet = FleetClient(simulated_hub, TOKEN, refresh_interval=60, token_lifetime=LIFETIME)
    task = asyncio.get_running_loop().create_task(fleet.run())
    dashboard = StatusClient(f"{simulated_hub}user/u0001/")
    samples: list[Status] = []

    async def watch() -> None:
        async for status in dashboard:
            samples.append(status)

    started = time.monotonic()
    try:
        await eventually(lambda: streaming(fleet, 6), timeout=30)
        assert fleet.tokens is not None
        fleet.lend(("u0001", ""), dashboard)  # a dashboard opened on one server
        watching = asyncio.get_running_loop().create_task(watch())
        # every token past its expiry: each was replaced in time, or its stream was closed
        await eventually(lambda: time.monotonic() - started > LIFETIME + 1.5, timeout=30)
        await eventually(lambda: fleet.tokens is not None and fleet.tokens.rotated >= 6)
        counts = {key: server.samples for key, server in fleet.servers.items()}
        await eventually(lambda: all(s.samples > counts[k] for k, s in fleet.servers.items()))
        assert all(s.client is not None and s.client.state.phase == "connected"
                   for s in fleet.servers.values())  # fmt: skip
        assert dashboard.state.phase == "connected" and len(samples) > 0
        current = fleet.tokens.current(("u0001", ""))
        assert current is not None and dashboard.credential == current.token
        stats = sim_stats(simulated_hub)
        assert stats["closed_4401"] == 0 and stats["refused_at_servers"] == 0, stats
        assert stats["fleet_token_at_servers"] == 0, stats
        assert stats["minted"] >= 12  # one per server, then one per rotation
        watching.cancel()
    finally:
        await stopped(task)
    stats = sim_stats(simulated_hub)
    assert stats["live_tokens"] == 0 and stats["revoked"] == stats["minted"], stats
    assert "fleet-sim-token" not in repr(fleet) + repr(fleet.tokens)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("simulated_hub", [(3, 0.2)], indirect=True)
async def test_a_stream_closed_because_its_token_expired_gets_a_fresh_one(
    simulated_hub: str,
) -> None:
    """After a hub outage longer than a token's life, the servers close the streams with
    4401; each is started again, with a new token, at the next listing."""
    fleet = FleetClient(simulated_hub, TOKEN, refresh_interval=0.3)
    task = asyncio.get_running_loop().create_task(fleet.run())
    try:
        await eventually(lambda: streaming(fleet, 3), timeout=30)
        assert fleet.tokens is not None
        key = ("u0001", "")
        old = fleet.tokens.current(key)
        assert old is not None
        request = urllib.request.Request(
            f"{simulated_hub}hub/api/users/admin/tokens/{old.id}",
            method="DELETE",
            headers={"Authorization": f"token {TOKEN}"},
        )
        reply = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        reply.close()  # revoked, as if it had expired
        await eventually(lambda: sim_stats(simulated_hub)["closed_4401"] == 1, timeout=10)
        server = fleet.servers[key]
        count = server.samples
        await eventually(lambda: server.samples > count and server.error is None, timeout=20)
        new = fleet.tokens.current(key)
        assert new is not None and new.id != old.id
        assert server.client is not None and server.client.state.phase == "connected"
    finally:
        await stopped(task)
