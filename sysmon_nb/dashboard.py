"""SysmonDashboard: an ipywidgets box of bqplot charts fed by status messages.

The widget knows nothing of sockets: :meth:`SysmonDashboard.update` takes decoded
messages (``hello``, ``history``, ``status``) and :meth:`SysmonDashboard.set_state` takes
the client's :class:`~sysmon_nb.client.ConnectionState`. It keeps a rolling window of
samples (bounded in count as well as time, however long it runs) and redraws every chart
inside one ``hold_sync()`` per update, so each widget sends at most one message.

Time: the x axis is the server's clock, but samples are kept and drawn in the order they
arrive (the client already dropped repeats by server process and ``seq``), and none is
ever dropped for its time. When the server's clock steps — a sample's time is not after
the previous one's, or differs from what the ``seq`` (and skipped-tick) gap explains by
more than :data:`STEP_TOLERANCE` or three intervals — every point already drawn is moved
by the step: the line stays continuous, one interval per sample, and the axis reads the
server's clock as it is now. A step forward smaller than the tolerance is drawn as the
gap it looks like. "last sample ... ago" in the header counts from when the sample
arrived here, not from its time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import ipywidgets as widgets
import numpy as np

from .charts import COLORS, Chart, byte_unit, human_bytes, nice_ceiling
from .client import ConnectionState
from .markup import WARN_COLOR, Markup, as_text, finite, fmt, join, objects, table
from .protocol import GROUPS, Hello, History, ServerMessage, Status
from .tables import Tables

#: Charts drawn, and the metric groups each needs.
CHARTS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "memory": ("memory", "container"),
    "network": ("network",),
    "disk": ("disk",),
    "gpu": ("gpu",),
}
#: Samples kept before the server's interval is known.
MAX_POINTS = 10_000
#: Percentages at or over this are shown as a warning.
WARN_PERCENT = 90.0
DEFAULT_WINDOW = 600.0
#: A difference from the expected spacing of samples past this (s, or three intervals if
#: more) is taken for a step of the server's clock; any step back always is.
STEP_TOLERANCE = 10.0


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def parse_window(value: str | float) -> float:
    """``"10m"``, ``"90s"``, ``"1h"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        factor = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:])
        try:
            seconds = float(text[:-1]) * factor if factor else float(text)
        except ValueError:
            raise ValueError(
                f"window must be seconds or like 90s, 10m, 1h; got {value!r}"
            ) from None
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"window must be > 0 seconds; got {value!r}")
    return seconds


def _num(value: Any) -> float:
    """A JSON number, or NaN (drawn as a gap) for null and anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


#: The process table's spacing (our CSS, never data).
_TOP_CSS = Markup(
    "<style>.sysmon-top{border-collapse:collapse;margin-top:4px;font-size:13px}"
    ".sysmon-top td,.sysmon-top th{padding:2px 14px 2px 0;text-align:left}"
    ".sysmon-top .n{text-align:right}.sysmon-top tbody tr{border-top:1px solid #eee}</style>"
)


class SysmonDashboard(widgets.VBox):
    """Live charts of one sysmon server.

    ``metrics`` limits the charts (empty: every group); ``window`` is how many seconds
    of history the charts show (default 10 minutes).
    """

    def __init__(
        self, metrics: Iterable[str] = (), window: float = DEFAULT_WINDOW, **kwargs: Any
    ) -> None:
        self.metrics = tuple(metrics) or GROUPS
        self.window = parse_window(window)
        self.samples: deque[Status] = deque(maxlen=MAX_POINTS)
        #: Where each of ``samples`` is drawn (s, the server's clock after any steps).
        self.x_times: deque[float] = deque(maxlen=MAX_POINTS)
        #: ``server_id`` of the newest sample's server, and when it arrived (wall time).
        self._sample_server: str | None = None
        self._arrived_at: float | None = None
        #: Clock steps seen (s each, + forward), newest last.
        self.clock_steps: list[float] = []
        self.hello: Hello | None = None
        self.state = ConnectionState("connecting")
        self.updates = 0

        self.header = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.warnings = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.processes = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.charts: dict[str, Chart] = {}
        wanted = set(self.metrics)
        if "cpu" in wanted:
            self.charts["cpu"] = Chart("CPU", "percent", y_max=100.0)
        if "memory" in wanted:
            self.charts["memory"] = Chart("Memory", "GiB")
        if "network" in wanted:
            self.charts["network"] = Chart("Network", "KiB/s")
        if "disk" in wanted:
            self.charts["disk"] = Chart("Disk", "KiB/s")
        if "gpu" in wanted:
            self.charts["gpu"] = Chart("GPU", "percent", y_max=100.0)
            self.charts["gpu"].box.layout.display = "none"
        grid = widgets.GridBox(
            [c.box for c in self.charts.values()],
            layout=widgets.Layout(
                grid_template_columns="repeat(auto-fill, minmax(420px, 1fr))",
                width="100%",
                grid_gap="4px",
            ),
        )
        self.processes.layout.display = "none" if "processes" not in wanted else None
        self.tables = Tables(None if self.metrics == GROUPS else wanted)
        above = [self.tables.alerts] if self.tables.alerts is not None else []
        super().__init__(
            [self.header, self.warnings, *above, grid, self.tables.grid, self.processes],
            layout=widgets.Layout(width="100%"),
            **kwargs,
        )
        self._synced: list[Any] = [self.header, self.warnings, self.processes]
        for chart in self.charts.values():
            self._synced.extend(chart.synced())
            self._synced.append(chart.box.layout)
        self._synced.extend(self.tables.synced())
        self.refresh_header()

    # -- input -----------------------------------------------------------------------

    def update(self, message: ServerMessage) -> None:
        """Take one decoded message from the server and redraw."""
        if isinstance(message, Hello):
            self.hello = message
            points = max(2, min(MAX_POINTS, math.ceil(self.window / message.interval) + 2))
            self.samples = deque(self.samples, maxlen=points)
            self.x_times = deque(self.x_times, maxlen=points)
        elif isinstance(message, History):
            for sample in message.samples:
                self._append(sample)
        elif isinstance(message, Status):
            self._append(message)
        else:
            return
        self._trim()
        self.redraw()

    def set_state(self, state: ConnectionState) -> None:
        """Show the client's connection state in the header."""
        self.state = state
        self.refresh_header()

    def extend(self, samples: Iterable[Status]) -> None:
        """Add samples without a server (tests, replays) and redraw once."""
        for sample in samples:
            self._append(sample)
        self._trim()
        self.redraw()

    # -- drawing ---------------------------------------------------------------------

    def _append(self, sample: Status) -> None:
        """Keep ``sample`` after the others, moving them by any step of the server's clock."""
        server = self.hello.server_id if self.hello else None
        if self.samples:
            step = clock_step(self.samples[-1], sample, same_server=server == self._sample_server)
            if step:
                self.clock_steps.append(step)
                self.x_times = deque((x + step for x in self.x_times), maxlen=self.x_times.maxlen)
        self.samples.append(sample)
        self.x_times.append(sample.time)
        self._sample_server = server
        self._arrived_at = time.time()

    def _trim(self) -> None:
        if not self.samples:
            return
        oldest = self.x_times[-1] - self.window
        while self.samples and self.x_times[0] < oldest:
            self.samples.popleft()
            self.x_times.popleft()

    def redraw(self) -> None:
        """Redraw every chart from the window, one ``hold_sync`` around it all."""
        self.updates += 1
        samples = list(self.samples)
        with ExitStack() as stack:
            for widget in self._synced:
                stack.enter_context(widget.hold_sync())
            if samples:
                x = np.array([round(t * 1000) for t in self.x_times], dtype=np.int64)
                x = x.astype("datetime64[ms]")
                for name, chart in self.charts.items():
                    getattr(self, f"_draw_{name}")(chart, x, samples)
                self._draw_processes(samples[-1])
                self.tables.draw(samples)
            self.warnings.value = self._warnings_html(samples[-1] if samples else None)
            self.refresh_header()

    def refresh_header(self, now: float | None = None) -> None:
        """Redraw the header (state, age of the last sample); cheap, call it often."""
        now = time.time() if now is None else now
        host = self.hello.host if self.hello else (self.samples[-1].host if self.samples else "…")
        interval = self.hello.interval if self.hello else None
        arrived = self._arrived_at
        age = human_age(now - arrived) if arrived is not None else "no sample yet"
        parts = [
            fmt("<b style='font-size:15px'>sysmon · {}</b>", host),
            self._state_html(now),
            f"every {interval:g} s" if interval else "",
            f"last sample {age}",
            stale_text(self.samples[-1]) if self.samples else "",
            f"{len(self.samples)} samples in the last {self.window / 60:g} min",
        ]
        self.header.value = fmt(
            "<div style='display:flex;gap:18px;align-items:baseline;flex-wrap:wrap;"
            "padding:4px 2px;border-bottom:1px solid #ddd'>{}</div>",
            join(fmt("<span>{}</span>", p) for p in parts if p),
        )

    def _state_html(self, now: float) -> Markup:
        """The connection state for the header; why it stopped or was refused, in red."""
        state = self.state.describe(now)
        color = {"connected": "#2ca02c", "refused": WARN_COLOR, "stopped": "#7f7f7f"}.get(
            self.state.phase, "#ff7f0e"
        )
        if self.state.phase == "stopped" and self.state.reason:
            color = WARN_COLOR
        shown = state if len(state) <= 160 else state[:159] + "…"
        full = state if len(state) <= 2000 else state[:1999] + "…"
        return fmt(f"<span style='color:{color}' title='{{}}'>● {{}}</span>", full, shown)

    def _draw_cpu(self, chart: Chart, x: np.ndarray, samples: list[Status]) -> None:
        groups = [s.groups.get("cpu", {}) for s in samples]
        total = [_num(g.get("percent")) for g in groups]
        per_cpu = [_list(g.get("per_cpu")) for g in groups]
        cores = max((len(p) for p in per_cpu), default=0)
        per_core = [
            [_num(p[core]) if core < len(p) else math.nan for p in per_cpu] for core in range(cores)
        ]
        last = groups[-1]
        title = f"CPU {_pct(last.get('percent'))}"
        count, load = finite(last.get("count")), finite(last.get("load_1m"))
        if count:
            title += f" of {count:.0f} cores"
        if load is not None:
            title += f" · load {load:.2f}"
        faint_label = f"each of {cores} cores" if cores else ""
        chart.draw(x, [total], ["total"], title, faint=per_core, faint_label=faint_label)

    def _draw_memory(self, chart: Chart, x: np.ndarray, samples: list[Status]) -> None:
        """Memory against the container's limit when it has one (the node's figures then
        go in the title, labelled as the node's), else against the machine's total. The
        axis top is that limit or total (or the highest line, if higher)."""
        mems = [s.groups.get("memory", {}) for s in samples]
        conts = [s.groups.get("container", {}) for s in samples]
        limit = [_num(c.get("memory_limit_bytes")) for c in conts]
        last, last_cont = mems[-1], conts[-1]
        node = ""
        if finite(last.get("used_bytes")) is not None:
            node = (
                f"{human_bytes(finite(last.get('used_bytes')))} of"
                f" {human_bytes(finite(last.get('total_bytes')))} ({_pct(last.get('percent'))})"
            )
        if any(v > 0 for v in limit):
            series = {
                "container used": [_num(c.get("memory_used_bytes")) for c in conts],
                "container limit": limit,
            }
            colors = ["#1f77b4", WARN_COLOR]
            cap = limit
            title = "Memory (container)"
            used = finite(last_cont.get("memory_used_bytes"))
            lim = finite(last_cont.get("memory_limit_bytes"))
            if used is not None and lim is not None and lim > 0:
                title += (
                    f" {human_bytes(used)} of {human_bytes(lim)} limit ({_pct(100 * used / lim)})"
                )
            if node:
                title += f" · node {node}"
        else:
            series = {
                "used": [_num(m.get("used_bytes")) for m in mems],
                "swap used": [_num(m.get("swap_used_bytes")) for m in mems],
                "total": [_num(m.get("total_bytes")) for m in mems],
            }
            colors = ["#1f77b4", "#ff7f0e", "#7f7f7f"]
            cap = series["total"]
            title = f"Memory {node}" if node else "Memory"
            swap = finite(last.get("swap_used_bytes"))
            if swap:
                title += f" · swap {human_bytes(swap)}"
        values = np.array(list(series.values()), dtype=float)
        peak = float(np.nanmax(values)) if not np.all(np.isnan(values)) else 0.0
        caps = np.array(cap, dtype=float)
        top_bytes = float(np.nanmax(caps)) if not np.all(np.isnan(caps)) else 0.0
        top_bytes = max(top_bytes, peak)
        unit, size = byte_unit(top_bytes)
        rows = [[v / size for v in vals] for vals in series.values()]
        top = top_bytes / size if top_bytes > 0 else 1.0
        chart.draw(x, rows, list(series), title, colors=colors, y_label=unit, y_max=top)

    def _draw_rates(
        self, chart: Chart, x: np.ndarray, samples: list[Status], group: str, names: dict[str, str]
    ) -> None:
        data = [s.groups.get(group, {}) for s in samples]
        series = {label: [_num(d.get(key)) for d in data] for key, label in names.items()}
        values = np.array(list(series.values()), dtype=float)
        peak = float(np.nanmax(values)) if not np.all(np.isnan(values)) else 0.0
        unit, size = byte_unit(peak)
        rows = [[v / size for v in vals] for vals in series.values()]
        last = data[-1]
        now = " · ".join(
            f"{label} {human_bytes(finite(last.get(key)), '/s')}" for key, label in names.items()
        )
        title = f"{group.capitalize()} {now}"
        top = nice_ceiling(peak / size)
        chart.draw(x, rows, list(series), title, y_label=f"{unit}/s", y_max=top)

    def _draw_network(self, chart: Chart, x: np.ndarray, samples: list[Status]) -> None:
        names = {"recv_bytes_per_s": "receive", "sent_bytes_per_s": "send"}
        self._draw_rates(chart, x, samples, "network", names)

    def _draw_disk(self, chart: Chart, x: np.ndarray, samples: list[Status]) -> None:
        names = {"read_bytes_per_s": "read", "write_bytes_per_s": "write"}
        self._draw_rates(chart, x, samples, "disk", names)

    def _draw_gpu(self, chart: Chart, x: np.ndarray, samples: list[Status]) -> None:
        devices: dict[int, str] = {}
        for s in samples:
            for d in objects(s.groups.get("gpu", {}).get("devices")):
                index = d.get("index", 0)
                if isinstance(index, int) and not isinstance(index, bool):
                    devices.setdefault(index, as_text(d.get("name"), "GPU"))
        if not devices:
            chart.box.layout.display = "none"
            return
        chart.box.layout.display = None
        rows: list[list[float]] = []
        labels: list[str] = []
        for index in sorted(devices):
            util: list[float] = []
            mem: list[float] = []
            for s in samples:
                found = [
                    d
                    for d in objects(s.groups.get("gpu", {}).get("devices"))
                    if d.get("index") == index
                ]
                dev: dict[str, Any] = found[0] if found else {}
                util.append(_num(dev.get("utilization_percent")))
                used = _num(dev.get("memory_used_bytes"))
                total = _num(dev.get("memory_total_bytes"))
                mem.append(100.0 * used / total if total and total > 0 else math.nan)
            rows += [util, mem]
            labels += [f"GPU{index} util", f"GPU{index} memory"]
        colors = [c for i in range(len(devices)) for c in (COLORS[i % 7], COLORS[(i + 3) % 7])]
        last = objects(samples[-1].groups.get("gpu", {}).get("devices"))
        title = "GPU " + " · ".join(
            f"{as_text(d.get('index'), '?')}: {_pct(d.get('utilization_percent'))}" for d in last
        )
        chart.draw(x, rows, labels, title, colors=colors)

    def _draw_processes(self, sample: Status) -> None:
        group = sample.groups.get("processes")
        if not group:
            return
        rows = objects(group.get("top_cpu"))
        body = table(
            [("pid", False), ("name", False), ("user", False), ("CPU", True),
             ("memory (RSS)", True)],
            [
                [as_text(p.get("pid")), as_text(p.get("name")), as_text(p.get("user")),
                 _pct(p.get("cpu_percent")), human_bytes(finite(p.get("rss_bytes")))]
                for p in rows
            ],
            attrs=" class='sysmon-top'",
        )  # fmt: skip
        count = finite(group.get("count"))
        self.processes.value = fmt(
            "<div style='margin-top:6px'><b>Top processes by CPU</b> ({} processes){}{}</div>",
            "?" if count is None else f"{count:.0f}",
            _TOP_CSS,
            body,
        )

    def _warnings_html(self, sample: Status | None) -> str:
        found = warnings_for(sample) if sample is not None else []
        if not found:
            return ""
        return fmt(
            f"<div style='color:{WARN_COLOR};font-weight:bold;padding:4px 2px'>⚠ {{}}</div>",
            " · ".join(found),
        )


def stale_text(sample: Status) -> str:
    """The header's note on stale data: ``"stale: disk (14 s)"`` for each group whose
    collector missed its deadline, and the mounts whose filesystem calls are stuck;
    empty when all is fresh."""
    parts = [
        f"{group} ({finite(seconds) or 0:.0f} s)" for group, seconds in sorted(sample.stale.items())
    ]
    mounts = objects(sample.groups.get("disk", {}).get("mounts"))
    parts += [
        f"mount {as_text(m.get('path'), '?')} stuck" for m in mounts if m.get("stuck") is True
    ]
    if not parts:
        return ""
    return fmt(f"<span style='color:{WARN_COLOR}'>stale: {{}}</span>", ", ".join(parts))


def clock_step(previous: Status, sample: Status, *, same_server: bool = True) -> float:
    """By how much the server's clock stepped between two consecutive samples (0: none).

    From the same server process, ``seq`` and ``skipped_ticks`` say how many intervals
    lie between them; a time off that by more than :data:`STEP_TOLERANCE` (or three
    intervals) is a step. Across servers (a restart) only a time that did not move
    forward is known to be one; the new sample is then placed one interval on."""
    delta = sample.time - previous.time
    interval = max(sample.interval, 1e-3)
    if same_server and sample.seq > previous.seq:
        ticks = sample.seq - previous.seq + max(0, sample.skipped_ticks - previous.skipped_ticks)
        expected = ticks * interval
        if delta <= 0 or abs(delta - expected) > max(STEP_TOLERANCE, 3 * interval):
            return delta - expected
        return 0.0
    return delta - interval if delta <= 0 else 0.0


def warnings_for(sample: Status) -> list[str]:
    """Human sentences for every value at or over :data:`WARN_PERCENT` in a sample."""
    found: list[str] = []
    g = sample.groups

    def check(label: str, value: Any) -> None:
        number = finite(value)
        if number is not None and number >= WARN_PERCENT:
            found.append(f"{label} at {number:.0f} %")

    check("CPU", g.get("cpu", {}).get("percent"))
    check("memory", g.get("memory", {}).get("percent"))
    check("swap", g.get("memory", {}).get("swap_percent"))
    for mount in objects(g.get("disk", {}).get("mounts")):
        check(f"disk {as_text(mount.get('path'), '?')}", mount.get("percent"))
    container = g.get("container", {})
    limit, used = (
        finite(container.get("memory_limit_bytes")),
        finite(container.get("memory_used_bytes")),
    )
    if limit is not None and limit > 0 and used is not None:
        check("container memory (of its limit)", 100.0 * used / limit)
    for dev in objects(g.get("gpu", {}).get("devices")):
        index = as_text(dev.get("index"), "?")
        check(f"GPU{index} utilisation", dev.get("utilization_percent"))
        used, total = finite(dev.get("memory_used_bytes")), finite(dev.get("memory_total_bytes"))
        if used is not None and total is not None and total > 0:
            check(f"GPU{index} memory", 100.0 * used / total)
    return found


def _pct(value: Any) -> str:
    number = finite(value)
    return "-" if number is None else f"{number:.0f} %"
