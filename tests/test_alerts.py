"""The alert evaluator (pure), and alerts from a real server: rules and a kernel death."""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import pytest

from jupyter_server_ext.alerts import (
    DEFAULT_RULES,
    AlertEngine,
    AlertRule,
    describe_exit,
    field_value,
    parse_rules,
)
from jupyter_server_ext.errors import ConfigError
from jupyter_server_ext.kernels import KernelDeath

from .conftest import eventually, recv_json, recv_type

GiB = 1 << 30


def engine(rules: list[AlertRule] | None = None, window: float = 10.0) -> AlertEngine:
    log = logging.getLogger("test-alerts")
    return AlertEngine(parse_rules(DEFAULT_RULES) if rules is None else rules, log, window)


def container(used: int | None = GiB, limit: int | None = 2 * GiB, oom: int = 0) -> dict:
    return {
        "memory_used_bytes": used,
        "memory_limit_bytes": limit,
        "oom_kills": oom,
        "cpu_throttled_percent": 0.0,
    }


def death(at: float, code: int | None = -9, path: str | None = "analysis.ipynb") -> KernelDeath:
    return KernelDeath("k-1234567890", "python3", 4242, code, path, 1000.0 + at, at)


# -- rules ----------------------------------------------------------------------------


def test_default_rules_parse() -> None:
    names = [r.name for r in parse_rules(DEFAULT_RULES)]
    assert names == ["memory", "home volume", "cpu throttled", "oom kill"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "x", "group": "cpu", "field": "percent", "op": "~", "threshold": 1}, "op"),
        ({"name": "x", "group": "cpu", "field": "percent", "op": ">="}, "threshold"),
        ({"name": "x", "group": "cpu", "field": "percent", "op": ">", "threshold": "9"}, "number"),
        ({"name": "", "group": "cpu", "field": "percent", "op": ">", "threshold": 9}, "non-empty"),
        ("memory >= 90", "dict"),
    ],
)
def test_malformed_rules_are_refused(rule: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules([rule])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unique"):
        parse_rules(DEFAULT_RULES + DEFAULT_RULES[:1])


def test_memory_percent_is_of_the_container_limit_or_the_host() -> None:
    host = {"percent": 40.0}
    assert (
        field_value({"container": container(), "memory": host}, "container", "memory_percent")
        == 50.0
    )
    no_limit = {"container": container(limit=None), "memory": host}
    assert field_value(no_limit, "container", "memory_percent") == 40.0
    assert field_value({}, "container", "memory_percent") is None


def test_home_percent_is_the_fullest_home_mount() -> None:
    mounts = [
        {"path": "/", "percent": 99.0},
        {"path": "/home/jovyan", "percent": 91.5, "home": True},
    ]
    assert field_value({"disk": {"mounts": mounts}}, "disk", "home_percent") == 91.5
    assert field_value({"disk": {"mounts": mounts[:1]}}, "disk", "home_percent") is None


def test_alert_starts_and_ends_once_each(caplog: pytest.LogCaptureFixture) -> None:
    alerts = engine()
    caplog.set_level(logging.INFO, "test-alerts")
    memory = {"percent": 10.0}
    first = alerts.update({"container": container(used=GiB), "memory": memory}, [], 0.0, 100.0)
    assert first == {"active": [], "events": []}
    hot = {"container": container(used=int(1.9 * GiB)), "memory": memory}
    second = alerts.update(hot, [], 1.0, 101.0)
    assert second["active"] == [
        {"name": "memory", "group": "container", "value": 95.0, "threshold": 90.0, "since": 101.0}
    ]
    assert [(e["kind"], e["name"], e["time"]) for e in second["events"]] == [
        ("alert_started", "memory", 101.0)
    ]
    hotter = {"container": container(used=int(1.95 * GiB)), "memory": memory}
    for tick in range(3):  # still hot; unknown values keep the verdict
        groups = hotter if tick != 1 else {"memory": {"percent": None}}
        held = alerts.update(groups, [], 2.0 + tick, 102.0 + tick)
        assert held["events"] == [] and held["active"][0]["since"] == 101.0
        assert held["active"][0]["value"] == 97.5  # the latest known value
    ended = alerts.update({"container": container(used=GiB), "memory": memory}, [], 9.0, 109.0)
    assert ended["active"] == []
    assert [e["kind"] for e in ended["events"]] == ["alert_ended"]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("alert started" in line for line in lines) == 1
    assert sum("alert ended" in line for line in lines) == 1


def test_throttling_rule_and_rises_op() -> None:
    alerts = engine()
    throttled = container()
    throttled["cpu_throttled_percent"] = 30.0
    out = alerts.update({"container": throttled}, [], 0.0, 100.0)
    assert [a["name"] for a in out["active"]] == ["cpu throttled"]
    rose = alerts.update({"container": container(oom=1)}, [], 1.0, 101.0)
    assert [a["name"] for a in rose["active"]] == ["oom kill"]
    calm = alerts.update({"container": container(oom=1)}, [], 2.0, 102.0)
    assert calm["active"] == []


# -- kernel deaths and OOM kills ------------------------------------------------------


def test_oom_kill_names_the_kernel_notebook_and_limit() -> None:
    alerts = engine(rules=[])
    alerts.update({"container": container(oom=0)}, [], 0.0, 1000.0)
    # the kernel died (SIGKILL) this tick; the counter is read as risen the next
    first = alerts.update({"container": container(oom=0)}, [death(0.5)], 1.0, 1001.0)
    assert first["events"] == []
    second = alerts.update({"container": container(oom=1)}, [], 2.0, 1002.0)
    assert second["events"] == [
        {
            "time": 1000.5,
            "kind": "oom_kill",
            "message": "kernel of analysis.ipynb killed: out of memory at 2.0 GiB limit",
            "kernel_id": "k-1234567890",
            "path": "analysis.ipynb",
            "pid": 4242,
        }
    ]
    assert alerts.update({"container": container(oom=1)}, [], 30.0, 1030.0)["events"] == []


def test_counter_first_then_death() -> None:
    alerts = engine(rules=[])
    alerts.update({"container": container(oom=3, limit=384 << 20)}, [], 0.0, 1000.0)
    alerts.update({"container": container(oom=4, limit=384 << 20)}, [], 1.0, 1001.0)
    out = alerts.update({"container": container(oom=4, limit=384 << 20)}, [death(2.5)], 3.0, 1003.0)
    assert [e["message"] for e in out["events"]] == [
        "kernel of analysis.ipynb killed: out of memory at 384 MiB limit"
    ]


def test_other_deaths_are_kernel_died_with_their_exit() -> None:
    alerts = engine(rules=[])
    alerts.update({"container": container()}, [], 0.0, 1000.0)
    out = alerts.update({"container": container()}, [death(0.5, code=-11)], 1.0, 1001.0)
    assert [(e["kind"], e["message"], e["exit_code"]) for e in out["events"]] == [
        ("kernel_died", "kernel of analysis.ipynb died: killed by SIGSEGV", -11)
    ]
    # SIGKILL without an OOM kill: not blamed on memory once the window passes
    alerts.update({"container": container()}, [death(2.0, path=None)], 2.0, 1002.0)
    late = alerts.update({"container": container()}, [], 13.0, 1013.0)
    assert [e["message"] for e in late["events"]] == [
        "kernel of k-123456 (python3) died: killed by SIGKILL"
    ]


def ticks(alerts: AlertEngine, start: int, stop: int, oom: int) -> list[dict[str, Any]]:
    """Samples every second from ``start`` to ``stop`` (excluded); their events."""
    events = []
    for at in range(start, stop):
        events += alerts.update({"container": container(oom=oom)}, [], float(at), 1000.0 + at)[
            "events"
        ]
    return events


def test_a_sigkill_and_an_oom_rise_outside_the_window_are_not_one_event() -> None:
    # a kernel SIGKILLed at 0.5 s; the container's OOM counter rises in the sample at
    # 11 s, 10.5 s later: outside the 10 s window, so the death was no OOM kill of it
    alerts = engine(rules=[], window=10.0)
    alerts.update({"container": container(oom=0)}, [], 0.0, 1000.0)
    events = alerts.update({"container": container(oom=0)}, [death(0.5)], 1.0, 1001.0)["events"]
    events += ticks(alerts, 2, 11, oom=0)
    assert events == []  # still within the window: undecided
    events = ticks(alerts, 11, 30, oom=1)
    assert [(e["kind"], e.get("kernel_id"), e.get("exit_code")) for e in events] == [
        ("kernel_died", "k-1234567890", -9),
        ("oom_kill", None, None),  # a process of the container, not the kernel
    ], events
    assert events[0]["message"] == "kernel of analysis.ipynb died: killed by SIGKILL"
    assert events[1]["time"] == 1011.0


def test_a_sigkill_and_an_oom_rise_inside_the_window_are_one_oom_kill() -> None:
    alerts = engine(rules=[], window=10.0)
    alerts.update({"container": container(oom=0)}, [], 0.0, 1000.0)
    alerts.update({"container": container(oom=0)}, [death(0.5)], 1.0, 1001.0)
    events = ticks(alerts, 2, 10, oom=0) + ticks(alerts, 10, 30, oom=1)  # 9.5 s apart
    assert [(e["kind"], e.get("kernel_id")) for e in events] == [("oom_kill", "k-1234567890")]
    assert events[0]["time"] == 1000.5  # the death's own time


def test_oom_kill_without_a_kernel_death() -> None:
    alerts = engine(rules=[], window=5.0)
    alerts.update({"container": container(oom=0)}, [], 0.0, 1000.0)
    alerts.update({"container": container(oom=1)}, [], 1.0, 1001.0)
    out = alerts.update({"container": container(oom=1)}, [], 7.0, 1007.0)
    assert out["events"] == [
        {
            "time": 1001.0,
            "kind": "oom_kill",
            "message": "a process of this container was killed: out of memory at 2.0 GiB limit",
        }
    ]


def test_describe_exit() -> None:
    assert describe_exit(None) == "exit status unknown"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(-200) == "killed by signal 200"


# -- a real server --------------------------------------------------------------------

ALWAYS = [{"name": "cores", "group": "cpu", "field": "count", "op": ">=", "threshold": 1}]


@pytest.mark.parametrize("sysmon_config", [{"alert_rules": ALWAYS}], indirect=True)
async def test_a_rule_fires_on_the_server_and_is_logged_once(
    connect: Any, sysmon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with connect("metrics=alerts&history=50") as ws:
        await recv_json(ws)
        history = await recv_type(ws, "history")
        frames = [*history["samples"], *[await recv_type(ws, "status") for _ in range(3)]]
    events = [e for f in frames for e in f["alerts"]["events"]]
    assert [e["kind"] for e in events] == ["alert_started"]
    assert frames[-1]["alerts"]["active"][0]["name"] == "cores"
    assert frames[-1]["alerts"]["active"][0]["value"] >= 1
    assert sum("alert started: cores" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("sysmon_config", [{"alert_rules": [{"name": "x"}]}], indirect=True)
def test_bad_rules_refuse_to_start(jp_serverapp: Any) -> None:
    from .conftest import find_extension

    ext = find_extension(jp_serverapp)
    assert not hasattr(ext, "sampler")  # the extension did not start on a bad rule


@pytest.mark.timeout(90)
async def test_a_killed_kernel_is_reported_with_its_notebook(
    connect: Any, jp_fetch: Any, jp_serverapp: Any
) -> None:
    body = {"path": "work/crash.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    reply = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
    session = json.loads(reply.body)
    kernel_id = session["kernel"]["id"]
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    try:
        async with connect("metrics=alerts,jupyter") as ws:
            await recv_json(ws)
            # wait until the sampler has seen the kernel (and watches it)
            for _ in range(100):
                usage = (await recv_type(ws, "status"))["jupyter"]["kernel_usage"]
                if any(k["id"] == kernel_id for k in usage):
                    break
            await eventually(lambda: km.provisioner is not None and km.provisioner.pid)
            pid = km.provisioner.pid
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                events = (await recv_type(ws, "status"))["alerts"]["events"]
                if events:
                    break
    finally:
        await jp_fetch("api", "sessions", session["id"], method="DELETE")
    assert events == [
        {
            "time": events[0]["time"],
            "kind": "kernel_died",
            "message": "kernel of work/crash.ipynb died: killed by SIGTERM",
            "kernel_id": kernel_id,
            "path": "work/crash.ipynb",
            "pid": pid,
            "exit_code": -15,
        }
    ]
