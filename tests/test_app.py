"""SysmonExtension's configuration, and a real `jupyter server` process as installed."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest
import websockets
from traitlets import TraitError

from jupyter_server_ext.app import SysmonExtension
from sysmon_nb.protocol import GROUPS

from .servers import TOKEN


@pytest.mark.parametrize(
    ("trait", "value", "message"),
    [
        ("interval", 0, "interval must be > 0"),
        ("interval", -1.5, "interval must be > 0"),
        ("history", -1, "history must be >= 0"),
        ("top_processes", -3, "top_processes must be >= 0"),
        ("top_users", -1, "top_users must be >= 0"),
        ("max_connections", 0, "max_connections must be >= 1"),
        ("client_buffer", 0, "client_buffer must be >= 1"),
        ("metrics", ["cpu", "bogus"], "unknown metric group(s) 'bogus'"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_message(
    trait: str, value: Any, message: str
) -> None:
    with pytest.raises(TraitError) as excinfo:
        SysmonExtension(**{trait: value})
    assert message in str(excinfo.value)


def test_defaults_and_metric_order() -> None:
    ext = SysmonExtension(metrics=["memory", "cpu", "memory"])
    assert ext.metrics == ["cpu", "memory"]
    assert SysmonExtension().metrics == list(GROUPS)
    assert SysmonExtension().interval == 5.0
    assert SysmonExtension().allow_owner is True  # no JupyterHub here


def test_every_trait_has_help_and_is_configurable() -> None:
    traits = SysmonExtension.class_own_traits(config=True)
    expected = {
        "interval", "history", "metrics", "top_processes", "compression", "admin_users",
        "admin_groups", "admin_role", "allow_owner", "revalidate_interval",
        "max_connections", "client_buffer", "top_users", "network_mounts",
    }  # fmt: skip
    assert expected <= set(traits)
    assert all(traits[name].help for name in expected)


def test_processes_and_users_share_one_walk_and_take_their_traits(
    nobody_process: tuple[str, Any],
) -> None:
    collectors = {c.name: c for c in SysmonExtension(top_users=1).make_collectors()}
    processes, users = collectors["processes"], collectors["users"]
    assert processes.walk is users.walk
    users.collect(1.0)
    result = users.collect(2.0)  # root and nobody at least: one listed, the rest summed
    assert len(result["users"]) == 1 and result["others"]["users"] == result["count"] - 1


def test_network_mounts_reach_the_disk_collector() -> None:
    for on in (False, True):
        (disk,) = (c for c in SysmonExtension(network_mounts=on).make_collectors()
                   if c.name == "disk")  # fmt: skip
        assert disk.network_mounts is on


# -- a real server process, configured only by what `pip install` put in place ---------


@pytest.mark.timeout(120)
def test_installed_extension_streams_and_says_1001_on_sigterm(jupyter: Any) -> None:
    server = jupyter(interval=0.3)

    async def watch() -> tuple[list[dict[str, Any]], int | None]:
        url = f"ws://127.0.0.1:{server.port}/sysmon/ws?metrics=cpu,memory"
        headers = {"Authorization": f"token {TOKEN}"}
        frames = []
        async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
            for _ in range(3):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            server.proc.send_signal(signal.SIGTERM)
            try:
                for _ in range(100):
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return frames, closed.rcvd.code if closed.rcvd else None
        return frames, None

    frames, code = asyncio.run(watch())
    assert [f["type"] for f in frames] == ["hello", "status", "status"]
    assert frames[0]["interval"] == 0.3
    assert code == 1001
    assert server.proc.wait(30) is not None


@pytest.mark.timeout(120)
def test_bad_config_disables_sysmon_loudly_and_the_server_keeps_serving(jupyter: Any) -> None:
    server = jupyter(
        "--SysmonExtension.metrics=cpu",
        "--SysmonExtension.metrics=bogus",
        interval=None,
        ready_path="api/status",  # sysmon's own routes never come up
    )
    code, _ = server.get("sysmon/api/status")
    assert code == 404
    assert server.get("api/status")[0] == 200
    log = server.log_path.read_text()
    assert "sysmon is disabled by a configuration error" in log
    assert "unknown metric group(s) 'bogus'" in log
