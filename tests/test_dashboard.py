"""SysmonDashboard with a recording comm (as ipywidgets' own tests do): no browser."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import comm
import numpy as np
import pytest

from sysmon_nb.charts import byte_unit, human_bytes, nice_ceiling, nice_ticks
from sysmon_nb.client import ConnectionState
from sysmon_nb.dashboard import (
    SysmonDashboard,
    clock_step,
    parse_window,
    warnings_for,
)
from sysmon_nb.protocol import Hello, History, Status

GIB = 1024**3


class RecordingComm:
    """Stands in for the kernel's comm: keeps every message a widget sends."""

    comm_id = "recording"
    kernel = "present"

    def __init__(self, **kwargs: Any) -> None:
        self.messages: list[dict[str, Any]] = []
        self.comm_id = f"c{id(self)}"

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, buffers: Any = None, **kwargs: Any) -> None:
        self.messages.append(data)

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))
    yield


def sample(seq: int, at: float, **over: Any) -> Status:
    groups: dict[str, Any] = {
        "cpu": {
            "percent": 10.0 + seq % 50,
            "per_cpu": [5.0 + seq % 40, 20.0],
            "count": 2,
            "load_1m": 0.5,
        },
        "memory": {
            "total_bytes": 16 * GIB,
            "used_bytes": (4 + seq % 3) * GIB,
            "percent": 30.0,
            "swap_used_bytes": 0,
            "swap_percent": 0.0,
        },
        "network": {"recv_bytes_per_s": 1000.0 * seq, "sent_bytes_per_s": 500.0},
        "disk": {"read_bytes_per_s": None if seq == 0 else 2e6, "write_bytes_per_s": 1e6},
        "processes": {
            "count": 99,
            "top_cpu": [
                {
                    "pid": 7,
                    "name": "<b>python</b>",
                    "user": "ann",
                    "cpu_percent": 42.0,
                    "rss_bytes": 3 * 1024**2,
                }
            ],
        },
        "container": {"memory_limit_bytes": None, "memory_used_bytes": None},
        "gpu": {"devices": []},
    }
    groups.update(over)
    return Status(seq=seq, time=at, host="box", interval=1.0, groups=groups)


def hello(interval: float = 1.0) -> Hello:
    return Hello(server="1", host="box", interval=interval, metrics=("cpu",), subscribed=("cpu",))


def sent(widget: Any) -> list[dict[str, Any]]:
    return [m for m in widget.comm.messages if m.get("method") == "update"]


def test_updates_move_the_lines() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(hello())
    dash.update(History(samples=tuple(sample(i, 1000.0 + i) for i in range(5))))
    cpu = dash.charts["cpu"].lines
    before = np.atleast_2d(cpu.y).copy()
    assert before.shape == (1, 5)
    dash.update(sample(5, 1005.0))
    after = np.atleast_2d(cpu.y)
    assert after.shape == (1, 6)
    assert after[0, -1] == 15.0
    assert np.array(dash.charts["cpu"].faint.y).shape == (2, 6)  # one faint line per core
    assert list(dash.charts["network"].lines.labels) == ["receive", "send"]
    assert "box" in dash.header.value and "connected" not in dash.header.value
    assert "&lt;b&gt;python&lt;/b&gt;" in dash.processes.value  # names are escaped


def test_history_shows_at_once_rather_than_an_empty_chart() -> None:
    dash = SysmonDashboard()
    dash.update(hello())
    dash.update(History(samples=tuple(sample(i, 1000.0 + i) for i in range(30))))
    assert len(dash.charts["memory"].lines.x) == 30


def test_the_window_stays_bounded_after_thousands_of_updates() -> None:
    dash = SysmonDashboard(metrics=["cpu", "network"], window=60)
    dash.update(hello(interval=1.0))
    for i in range(2000):
        dash.update(sample(i, 1000.0 + i))
    assert len(dash.samples) <= 62
    assert dash.samples.maxlen == 62
    x = np.array(dash.charts["cpu"].lines.x)
    assert len(x) <= 62
    span = (x[-1] - x[0]) / np.timedelta64(1, "s")
    assert span <= 60
    # ... also before the server said its interval, by time.
    dash = SysmonDashboard(metrics=["cpu"], window=60)
    for i in range(1000):
        dash.update(sample(i, 1000.0 + i / 10))
    assert len(dash.samples) <= 601
    assert dash.samples[-1].seq == 999


def test_one_sync_message_per_widget_per_update() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(hello())
    dash.update(sample(0, 1000.0))
    watched = [dash.header, dash.charts["cpu"].lines, dash.charts["memory"].lines]
    counts = [len(sent(w)) for w in watched]
    dash.update(sample(1, 1001.0))
    assert [len(sent(w)) - c for w, c in zip(watched, counts)] == [1, 1, 1]
    update = sent(dash.charts["cpu"].lines)[-1]["state"]
    assert {"x", "y"} <= set(update)  # both arrays in the same message


def test_units_are_humanised_on_the_axes() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(hello())
    dash.extend([sample(0, 999.0), sample(1, 1000.0)])
    memory = dash.charts["memory"]
    assert memory.y_axis.label == "GiB"
    assert memory.y_scale.max == 16.0  # the axis ends at the 16 GiB total, not above it
    assert list(memory.y_axis.tick_values) == [0, 5, 10, 15]
    assert np.nanmax(np.array(memory.lines.y)) == 16.0
    net = dash.charts["network"]
    assert net.y_axis.label == "B/s"
    dash.update(sample(5000, 1001.0))  # 5 MB/s received
    assert net.y_axis.label == "MiB/s"
    assert "Memory 6.0 GiB of 16.0 GiB (30 %)" in memory.figure.title


def test_a_null_rate_is_a_gap_not_a_zero() -> None:
    dash = SysmonDashboard(window=60)
    dash.update(hello())
    dash.extend([sample(0, 1000.0), sample(1, 1001.0)])
    read = np.atleast_2d(dash.charts["disk"].lines.y)[0]
    assert math.isnan(read[0]) and read[1] > 0


def test_container_limit_and_gpus_are_drawn_when_known() -> None:
    dash = SysmonDashboard(window=60)
    assert dash.charts["gpu"].box.layout.display == "none"
    gpu = {
        "devices": [
            {
                "index": 0,
                "name": "H100",
                "utilization_percent": 95.0,
                "memory_used_bytes": 79 * GIB,
                "memory_total_bytes": 80 * GIB,
            },
            {
                "index": 1,
                "name": "H100",
                "utilization_percent": 5.0,
                "memory_used_bytes": 1 * GIB,
                "memory_total_bytes": 80 * GIB,
            },
        ]
    }
    container = {"memory_limit_bytes": 8 * GIB, "memory_used_bytes": 7.5 * GIB}
    dash.update(hello())
    dash.update(sample(1, 1000.0, gpu=gpu, container=container))
    memory = dash.charts["memory"]
    assert list(memory.lines.labels) == ["container used", "container limit"]
    assert memory.y_scale.max == 8.0  # against the container's limit, not the node's 16 GiB
    assert memory.figure.title == (
        "Memory (container) 7.5 GiB of 8.0 GiB limit (94 %) · node 5.0 GiB of 16.0 GiB (30 %)"
    )
    assert dash.charts["gpu"].box.layout.display is None
    assert list(dash.charts["gpu"].lines.labels) == [
        "GPU0 util", "GPU0 memory", "GPU1 util", "GPU1 memory",
    ]  # fmt: skip
    assert "GPU0 utilisation at 95 %" in dash.warnings.value
    assert "container memory (of its limit) at 94 %" in dash.warnings.value


def test_warnings_over_ninety_percent() -> None:
    hot = sample(
        1,
        1.0,
        cpu={"percent": 97.0, "per_cpu": []},
        memory={"percent": 91.0, "swap_percent": 10.0},
        disk={"mounts": [{"path": "/", "percent": 99.5}]},
    )
    assert warnings_for(hot) == ["CPU at 97 %", "memory at 91 %", "disk / at 100 %"]
    assert warnings_for(sample(1, 1.0)) == []
    dash = SysmonDashboard()
    dash.update(hot)
    assert "CPU at 97 %" in dash.warnings.value
    dash.update(sample(2, 2.0))
    assert dash.warnings.value == ""


def test_header_shows_state_interval_and_age() -> None:
    dash = SysmonDashboard()
    dash.update(hello(interval=5.0))
    dash.update(sample(1, 1000.0))  # the server's clock is far behind this kernel's
    arrived = time.time()
    dash.set_state(ConnectionState("connected"))
    dash.refresh_header(now=arrived + 3.2)
    assert "connected" in dash.header.value
    assert "every 5 s" in dash.header.value
    assert "last sample 3 s ago" in dash.header.value  # since it arrived, not its time
    dash.set_state(ConnectionState("reconnecting", "dropped", arrived + 10.0))
    dash.refresh_header(now=arrived + 6.0)
    assert "reconnecting in 4 s" in dash.header.value
    dash.set_state(ConnectionState("refused", "HTTP 403: not an administrator"))
    assert "refused: HTTP 403: not an administrator" in dash.header.value


def test_header_says_which_groups_are_stale() -> None:
    dash = SysmonDashboard()
    dash.update(hello(interval=0.5))
    dash.update(sample(1, 1000.0))
    assert "stale" not in dash.header.value
    mounts = [{"path": "/", "stuck": False}, {"path": "/nfs", "stuck": True}]
    late = Status(seq=2, time=1000.5, host="box", interval=0.5, stale={"disk": 14.2, "gpu": 3.0},
                  groups={"disk": {"mounts": mounts}})  # fmt: skip
    dash.update(late)
    assert "stale: disk (14 s), gpu (3 s), mount /nfs stuck" in dash.header.value


def test_metrics_limit_the_charts() -> None:
    dash = SysmonDashboard(metrics=["cpu", "memory"])
    assert list(dash.charts) == ["cpu", "memory"]
    assert dash.processes.layout.display == "none"


@pytest.mark.parametrize(
    ("value", "seconds"), [("10m", 600.0), ("90s", 90.0), ("1h", 3600.0), ("45", 45.0), (30, 30.0)]
)
def test_parse_window(value: Any, seconds: float) -> None:
    assert parse_window(value) == seconds


@pytest.mark.parametrize("value", ["0", "-5m", "ten", "nanm", "inf"])
def test_parse_window_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(value)


def test_units() -> None:
    assert byte_unit(3 * GIB) == ("GiB", GIB)
    assert byte_unit(10) == ("B", 1.0)
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(200 * 1024**2, "/s") == "200 MiB/s"
    assert human_bytes(None) == "-"
    assert [nice_ceiling(v) for v in (0, 0.7, 1.0, 1.3, 2.2, 3, 23.5, 480)] == [
        1.0, 1.0, 1.0, 1.5, 2.5, 3.0, 25.0, 500.0,
    ]  # fmt: skip


def test_round_ticks_under_an_unround_top() -> None:
    assert list(nice_ticks(23.5)) == [0, 5, 10, 15, 20]
    assert list(nice_ticks(100)) == [0, 20, 40, 60, 80, 100]
    assert list(nice_ticks(0.3)) == pytest.approx([0, 0.1, 0.2, 0.3])
    assert list(nice_ticks(0)) == [0, 1]
    dash = SysmonDashboard(window=60)
    big = {"total_bytes": 23.5 * GIB, "used_bytes": 2 * GIB, "percent": 9.0}
    dash.extend([sample(0, 999.0, memory=big), sample(1, 1000.0, memory=big)])
    assert dash.charts["memory"].y_scale.max == 23.5  # the total, not a ceiling of 40
    assert list(dash.charts["memory"].y_axis.tick_values) == [0, 5, 10, 15, 20]


def test_a_server_clock_step_keeps_every_sample_in_arrival_order() -> None:
    """Back 20 s, then forward 1 h: nothing dropped or trimmed for its time, the x axis
    never goes back, and the points before a step move with it."""
    dash = SysmonDashboard(window=60)
    dash.update(hello(interval=1.0))
    times = [1000.0, 1001.0, 1002.0, 983.0, 984.0, 4584.0, 4585.0]
    for seq, at in enumerate(times, start=1):
        dash.update(sample(seq, at))
    assert [s.seq for s in dash.samples] == [1, 2, 3, 4, 5, 6, 7]
    assert dash.clock_steps == [-20.0, 3599.0]
    # 1000..1002 moved by -20 then +3599; 983, 984 by +3599: one second apart throughout.
    assert list(dash.x_times) == [4579.0, 4580.0, 4581.0, 4582.0, 4583.0, 4584.0, 4585.0]
    assert np.diff(dash.charts["cpu"].lines.x.astype("int64")).min() > 0
    # A forward gap that seq explains (missed samples) and a small slip are no steps.
    dash.update(sample(17, 4595.2))
    dash.update(sample(18, 4597.0))
    assert dash.clock_steps == [-20.0, 3599.0]


@pytest.mark.parametrize(
    ("previous", "current", "same_server", "step"),
    [
        ((1, 100.0), (2, 101.0), True, 0.0),
        ((1, 100.0), (2, 80.0), True, -21.0),
        ((1, 100.0), (2, 100.0), True, -1.0),  # time stood still: a step back
        ((1, 100.0), (11, 110.5), True, 0.0),  # ten intervals, as seq says
        ((1, 100.0), (2, 108.0), True, 0.0),  # a slow tick, under the tolerance
        ((1, 100.0), (2, 3701.0), True, 3600.0),
        ((9, 100.0), (1, 50.0), False, -51.0),  # a restarted server behind: one interval on
        ((9, 100.0), (1, 500.0), False, 0.0),  # a restart later: just a gap
    ],
)
def test_clock_step(
    previous: tuple[int, float], current: tuple[int, float], same_server: bool, step: float
) -> None:
    assert clock_step(sample(*previous), sample(*current), same_server=same_server) == step
