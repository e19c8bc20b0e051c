"""The dashboard's tables (sysmon_nb.tables): what each shows, from the turn-2 fields, and
how they behave with an older server that sends none of them. No browser needed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import comm
import pytest

from sysmon_nb.dashboard import SysmonDashboard
from sysmon_nb.events import MAX_EVENTS, EventLog, alerts_html, event_text
from sysmon_nb.protocol import Hello, Status
from sysmon_nb.tables import gpu_processes_html, kernels_html, limits_html, users_html

from .test_dashboard import RecordingComm, sent

GIB = 1024**3
MIB = 1024**2
#: 14:02 on a day, in this process's time zone (as the dashboard shows it).
AT_1402 = time.mktime((2026, 3, 2, 14, 2, 30, 0, 0, -1))


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))
    yield


def kernel(path: str | None, rss_gib: float, cpu: float, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"{abs(hash(path)):032x}"[:32],
        "name": "python3",
        "pid": 100,
        "cpu_percent": cpu,
        "rss_bytes": rss_gib * GIB,
        "path": path,
        "execution_state": "idle",
        "last_activity": AT_1402 - 600,
        "connections": 1,
    }
    row.update(over)
    return row


def groups(**over: Any) -> dict[str, Any]:
    """A sample of a container with a 4 GiB limit, two users, three kernels, a GPU."""
    g: dict[str, Any] = {
        "cpu": {"percent": 50.0, "pressure": 3.0},
        "memory": {
            "total_bytes": 16 * GIB,
            "used_bytes": 6 * GIB,
            "percent": 37.5,
            "pressure": 1.0,
        },
        "container": {
            "memory_limit_bytes": 4 * GIB,
            "memory_used_bytes": 3 * GIB,
            "cpu_limit_cores": 2.0,
            "cpu_usage_cores": 1.5,
            "cpu_throttled_percent": 30.0,
            "oom_kills": 1,
            "memory_pressure": 12.5,
            "cpu_pressure": None,
            "io_pressure": 0.5,
        },
        "disk": {
            "mounts": [
                {"path": "/", "fstype": "ext4", "total_bytes": 100 * GIB, "percent": 50.0},
                {
                    "path": "/home/jovyan",
                    "fstype": "nfs4",
                    "total_bytes": 10 * GIB,
                    "used_bytes": 9.5 * GIB,
                    "free_bytes": 0.5 * GIB,
                    "percent": 95.0,
                    "home": True,
                    "stuck": False,
                },
            ]
        },
        "jupyter": {
            "kernels": 3,
            "sessions": 3,
            "terminals": 0,
            "kernel_usage": [
                kernel("small.ipynb", 0.1, 1.0),
                kernel("work/analysis.ipynb", 2.0, 95.0, execution_state="busy"),
                kernel(None, 0.5, 0.0, id="abcdef0123456789", last_activity=None),
            ],
        },
        "users": {
            "users": [
                {"name": "jupyter-bob", "processes": 3, "cpu_percent": 1.0, "rss_bytes": 200 * MIB},
                {"name": "<ann>", "processes": 12, "cpu_percent": 99.0, "rss_bytes": 2 * GIB},
            ]
        },
        "gpu": {
            "devices": [
                {
                    "index": 0,
                    "processes": [
                        {"pid": 7, "user": "ann", "used_memory_bytes": 1 * GIB, "kernel_id": None},
                        {
                            "pid": 9,
                            "user": "ann",
                            "used_memory_bytes": 30 * GIB,
                            "kernel_id": kernel("work/analysis.ipynb", 0, 0)["id"],
                        },
                    ],
                    "mig": None,
                }
            ]
        },
        "alerts": {"active": [], "events": []},
    }
    g.update(over)
    return g


def status(seq: int = 1, at: float = AT_1402, **over: Any) -> Status:
    return Status(seq=seq, time=at, host="box", interval=1.0, groups=groups(**over))


def test_kernels_heaviest_first_with_path_state_and_share_of_the_limit() -> None:
    text = kernels_html(status())
    assert text.index("work/analysis.ipynb") < text.index("<i>python3 abcdef01</i>")
    assert text.index("<i>python3 abcdef01</i>") < text.index("small.ipynb")
    assert "(3 kernels, 3 sessions, 0 terminals)" in text
    assert "of limit" in text and "50 %" in text  # 2 GiB of the 4 GiB limit
    assert "● busy" in text and "95 %" in text and "2.0 GiB" in text
    assert "10 min" in text  # idle since its last activity, coarse
    evil = status(jupyter={"kernel_usage": [kernel("<img src=x>.ipynb", 1, 1)]})
    assert "<img" not in kernels_html(evil) and "&lt;img src=x&gt;.ipynb" in kernels_html(evil)


def test_kernels_of_an_older_server_without_the_new_fields() -> None:
    old = status(
        container={"memory_limit_bytes": None},
        jupyter={"kernel_usage": [{"id": "0123456789", "name": "ir", "rss_bytes": GIB}]},
    )
    text = kernels_html(old)
    assert "<i>ir 01234567</i>" in text and "of node" in text  # share of the node's 16 GiB
    assert "6 %" in text
    assert kernels_html(status(jupyter={"kernels": 0, "kernel_usage": []})) == ""
    assert kernels_html(Status(seq=1, time=1.0, host="h", interval=1.0)) == ""


def test_users_heaviest_first_and_escaped() -> None:
    text = users_html(status())
    assert text.index("&lt;ann&gt;") < text.index("jupyter-bob")
    assert "<ann>" not in text
    assert "50 %" in text  # 2 GiB of the 4 GiB limit
    assert users_html(status(users={"users": []})) == ""
    assert users_html(Status(seq=1, time=1.0, host="h", interval=1.0)) == ""


def test_users_past_top_users_are_one_row_last_and_counted_in_the_title() -> None:
    group = {
        "users": [{"name": "ann", "processes": 2, "cpu_percent": 1.0, "rss_bytes": GIB}],
        "count": 4,
        "others": {"users": 3, "processes": 40, "cpu_percent": 250.0, "rss_bytes": 3 * GIB},
    }
    text = users_html(status(users=group))
    assert "<b>Users</b> (4)" in text
    assert text.index("ann") < text.index("<i>3 other users</i>")  # last, though heavier
    assert "250" in text and "75 %" in text  # their CPU, and 3 GiB of the 4 GiB limit
    only_others = users_html(status(users={"users": [], "count": 3, "others": group["others"]}))
    assert "3 other users" in only_others


def test_limits_show_throttling_pressure_oom_kills_and_the_home_volume() -> None:
    text = limits_html(status())
    assert "1.50 of 2 cores" in text
    assert "throttled 30 % of periods" in text
    assert "pressure 3.0 % (node)" in text  # no container figure for CPU: the node's
    assert "pressure 12.5 %</span> (container)" in text  # red: at or over 10 %
    assert "3.0 GiB of 4.0 GiB limit (75 %)" in text
    assert "1 OOM kill" in text
    assert "pressure 0.5 % (container)" in text
    assert "Home /home/jovyan (nfs4)" in text and "95 % of 10.0 GiB" in text
    assert "512 MiB free" in text
    assert "Home /" not in text.replace("Home /home", "")  # only the home volume
    stuck = groups()["disk"]
    stuck["mounts"][1]["stuck"] = True
    assert "not answering" in limits_html(status(disk=stuck))
    old = Status(
        seq=1, time=1.0, host="h", interval=1.0, groups={"cpu": {"percent": 3.0}, "memory": {}}
    )
    assert limits_html(old) == ""


def test_gpu_processes_name_their_notebook_heaviest_first() -> None:
    text = gpu_processes_html(status())
    assert text.index("work/analysis.ipynb") < text.index(">7<")
    assert "30.0 GiB" in text
    mig = {
        "devices": [
            {
                "index": 1,
                "mig": [
                    {"name": "1g.10gb", "memory_used_bytes": GIB, "memory_total_bytes": 10 * GIB}
                ],
            }
        ]
    }
    assert "MIG 1g.10gb" in gpu_processes_html(status(gpu=mig))
    assert gpu_processes_html(status(gpu={"devices": [{"index": 0}]})) == ""


def test_an_oom_kill_reads_as_a_sentence() -> None:
    event = {
        "time": AT_1402,
        "kind": "oom_kill",
        "message": "memory.events oom_kill 0 -> 1",
        "kernel_id": "k1",
        "path": "work/analysis.ipynb",
    }
    assert event_text(event, 2 * GIB) == (
        "kernel of analysis.ipynb killed: out of memory at 2.0 GiB limit, 14:02"
    )
    assert event_text({**event, "path": None}, None) == ("kernel k1 killed: out of memory, 14:02")
    died = {"time": AT_1402, "kind": "kernel_died", "message": "exit signal 9", "path": "a.ipynb"}
    assert event_text(died) == "kernel of a.ipynb died: exit signal 9, 14:02"
    started = {"time": AT_1402, "kind": "alert_started", "message": "memory at 93 % of limit"}
    assert event_text(started) == "memory at 93 % of limit, 14:02"


def test_event_log_keeps_each_event_once_and_stays_bounded() -> None:
    oom = {"time": AT_1402, "kind": "oom_kill", "message": "m", "path": "a.ipynb"}
    first = status(1, alerts={"events": [oom]})
    log = EventLog()
    assert log.take([first]) is True
    assert log.take([first]) is False  # the same window again
    replay = status(1, alerts={"events": [oom]})  # history replayed after a reconnect
    assert log.take([replay, status(2)]) is False
    assert len(log.events) == 1 and log.events[0][1] == 4 * GIB  # the limit at the time
    many = [
        status(i, alerts={"events": [{"time": i, "kind": "alert_started", "message": str(i)}]})
        for i in range(3, 3 + 2 * MAX_EVENTS)
    ]
    log.take(many)
    assert len(log.events) == MAX_EVENTS
    assert log.events[-1][0]["message"] == str(2 + 2 * MAX_EVENTS)


def test_alerts_show_active_ones_and_the_last_events_newest_first() -> None:
    active = {
        "name": "memory", "group": "container", "value": 93.2, "threshold": 90,
        "since": AT_1402,
    }  # fmt: skip
    log = EventLog()
    events = [
        {"time": AT_1402 - 60, "kind": "alert_started", "message": "first"},
        {"time": AT_1402, "kind": "oom_kill", "message": "m", "path": "x/<b>.ipynb"},
    ]
    sample = status(alerts={"active": [active], "events": events})
    log.take([sample])
    text = alerts_html(sample, log)
    assert "⚠ memory: container 93.2 (threshold 90), since 14:02" in text
    assert text.index("kernel of &lt;b&gt;.ipynb killed") < text.index("first")
    assert alerts_html(status(), EventLog()) == ""


def test_dashboard_composes_the_tables_and_an_old_server_hides_them() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(Hello(server="1", host="box", interval=1.0, metrics=(), subscribed=()))
    dash.extend([status(1, AT_1402 - 1), status(2, AT_1402)])
    html = dash.tables.html
    assert "work/analysis.ipynb" in html["kernels"].value
    assert html["kernels"].layout.display is None
    assert html["alerts"].layout.display == "none"  # nothing active, no event yet
    assert dash.tables.alerts in dash.children and dash.tables.grid in dash.children
    old = SysmonDashboard(window=60)
    old.extend([Status(seq=1, time=1.0, host="h", interval=1.0, groups={"cpu": {"percent": 1.0}})])
    assert all(w.layout.display == "none" for w in old.tables.html.values())
    limited = SysmonDashboard(metrics=["cpu", "memory"])
    assert set(limited.tables.html) == {"limits"}


def test_every_widget_sends_at_most_one_message_and_unchanged_tables_none() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(Hello(server="1", host="box", interval=1.0, metrics=(), subscribed=()))
    oom = {"time": AT_1402, "kind": "oom_kill", "message": "m", "path": "a.ipynb"}
    dash.extend([status(1, AT_1402 - 2), status(2, AT_1402 - 1)])
    tables = list(dash.tables.html.values())

    def counts() -> list[int]:
        return [len(sent(w)) for w in dash._synced]

    before = counts()
    dash.update(status(3, AT_1402))  # same readings, a new time: the charts move
    after = counts()
    assert all(b - a <= 1 for a, b in zip(before, after))
    still = tables + [chart.legend for chart in dash.charts.values()]
    table_msgs = {w: len(sent(w)) for w in still}
    dash.update(status(4, AT_1402 + 1))
    assert {w: len(sent(w)) for w in still} == table_msgs  # unchanged: nothing sent
    alerts = dash.tables.html["alerts"]
    sent_when_set: list[int] = []
    alerts.observe(lambda change: sent_when_set.append(len(sent(alerts))), "value")
    dash.update(status(5, AT_1402 + 2, alerts={"events": [oom]}))
    assert sent_when_set == [table_msgs[alerts]]  # held: sent after the redraw, not at once
    assert len(sent(alerts)) == table_msgs[alerts] + 1
    assert "kernel of a.ipynb killed: out of memory at 4.0 GiB limit" in alerts.value
    assert sent(alerts)[-1]["state"]["value"] == alerts.value
    others = [w for w in tables if w is not alerts]
    assert [len(sent(w)) for w in others] == [table_msgs[w] for w in others]


def test_a_stuck_mount_event_reads_as_the_servers_message() -> None:
    event = {"time": 0.0, "kind": "collector_stuck", "group": "disk", "path": "/home",
             "message": "filesystem call on /home did not answer within 2 s"}  # fmt: skip
    text = event_text(event)
    assert text.startswith("filesystem call on /home did not answer within 2 s, ")
    assert "kernel" not in text  # a mount's path is not a notebook's
