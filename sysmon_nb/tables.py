"""The dashboard's tables: who and what uses the machine, its limits, and what went wrong.

:class:`Tables` holds one ``ipywidgets.HTML`` per table (alerts and events, kernels,
users, limits and home volumes, GPU processes) and redraws them from the samples in the
dashboard's window. Every field it reads is optional (an older server sends fewer):
a table with nothing to show is hidden. A table whose text did not change is not
assigned, so it sends nothing to the front end; each table's text depends only on the
readings, never on the wall clock, so an idle machine's tables stay still.

The text is built here, escaped with :func:`html.escape`; :class:`EventLog` keeps the
last events (they ride in samples, once each, and history may replay them).
"""

from __future__ import annotations

import html
import math
import posixpath
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from .charts import byte_unit
from .protocol import Status

#: Rows shown per table; the rest are counted ("+3 more").
MAX_ROWS = 10
#: Events remembered (newest kept) and shown.
MAX_EVENTS = 50
SHOWN_EVENTS = 6
#: Event keys remembered to drop events that history replays.
SEEN_KEYS = 1000
#: Readings at or over these are shown in red.
THROTTLED_WARN_PERCENT = 25.0
PRESSURE_WARN_PERCENT = 10.0
FILL_WARN_PERCENT = 90.0

WARN_COLOR = "#d62728"
_STATE_COLORS = {"busy": "#ff7f0e", "idle": "#2ca02c", "starting": "#1f77b4", "dead": WARN_COLOR}

_TABLE_CSS = (
    "<style>.sysmon-t{border-collapse:collapse;margin-top:4px;font-size:13px}"
    ".sysmon-t td,.sysmon-t th{padding:2px 12px 2px 0;text-align:left;white-space:nowrap}"
    ".sysmon-t .n{text-align:right}"
    ".sysmon-t tbody tr{border-top:1px solid #eee}"
    ".sysmon-t .path{max-width:26em;overflow:hidden;text-overflow:ellipsis}"
    ".sysmon-bar{display:inline-block;width:80px;height:8px;background:#eee;"
    "vertical-align:middle;margin-right:6px}"
    ".sysmon-bar>span{display:block;height:8px}</style>"
)


# -- formatting -------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite JSON number, or None (null, missing, bool, anything else)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def fmt_bytes(value: Any) -> str:
    """``1536`` -> ``"1.5 KiB"``; not a number -> ``"-"``."""
    number = _number(value)
    if number is None:
        return "-"
    name, size = byte_unit(abs(number))
    scaled = number / size
    text = f"{scaled:.0f}" if name == "B" or abs(scaled) >= 100 else f"{scaled:.1f}"
    return f"{text} {name}"


def fmt_percent(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.0f} %"


def fmt_clock(seconds: Any) -> str:
    """Unix seconds -> local ``HH:MM`` (the kernel's time zone, as the charts' axes)."""
    number = _number(seconds)
    return "-" if number is None else time.strftime("%H:%M", time.localtime(number))


def fmt_idle(seconds: float | None) -> str:
    """A coarse duration (minutes at best), so the text changes at most once a minute."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return "< 1 min"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _warn(text: str, on: bool) -> str:
    return f"<span style='color:{WARN_COLOR};font-weight:bold'>{text}</span>" if on else text


def _bar(percent: float | None) -> str:
    if percent is None:
        return ""
    width = max(0.0, min(100.0, percent))
    color = WARN_COLOR if percent >= FILL_WARN_PERCENT else "#1f77b4"
    inner = f"<span style='width:{width:.0f}%;background:{color}'></span>"
    return f"<span class='sysmon-bar'>{inner}</span>"


def _group(sample: Status, name: str) -> Mapping[str, Any]:
    group = sample.groups.get(name)
    return group if isinstance(group, Mapping) else {}


def _rows(group: Any, *keys: str) -> list[dict[str, Any]]:
    """The list of objects under the first of ``keys`` that holds one."""
    if not isinstance(group, Mapping):
        return []
    for key in keys:
        value = group.get(key)
        if isinstance(value, list):
            return [row for row in value if isinstance(row, Mapping)]  # type: ignore[misc]
    return []


def _table(title: str, head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """A titled table; ``head`` is (name, right-aligned) per column, cells are HTML."""
    heads = "".join(f"<th{' class=n' if num else ''}>{_e(name)}</th>" for name, num in head)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if num else ''}>{cell}</td>" for (_, num), cell in zip(head, row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f"<div style='margin-top:6px'>{title}{_TABLE_CSS}<table class='sysmon-t'>"
        f"<thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _more(total: int) -> str:
    return (
        f" <span style='color:#7f7f7f'>(+{total - MAX_ROWS} more)</span>"
        if total > MAX_ROWS
        else ""
    )


def memory_limit(sample: Status) -> tuple[float | None, str]:
    """The memory a kernel competes for: the container's limit when it has one, else the
    node's total; and which of the two it is (``"limit"`` or ``"node"``)."""
    limit = _number(sample.groups.get("container", {}).get("memory_limit_bytes"))
    if limit is not None and limit > 0:
        return limit, "limit"
    total = _number(sample.groups.get("memory", {}).get("total_bytes"))
    return (total, "node") if total else (None, "node")


def _share(rss: Any, of: float | None) -> str:
    number = _number(rss)
    if number is None or not of:
        return "-"
    return f"{100.0 * number / of:.0f} %"


def _heaviest(row: Mapping[str, Any]) -> tuple[float, float]:
    return (_number(row.get("rss_bytes")) or 0.0, _number(row.get("cpu_percent")) or 0.0)


def kernel_label(row: Mapping[str, Any]) -> str:
    """A kernel's notebook path, or its kernel name and short id when the path is unknown."""
    path = row.get("path")
    if isinstance(path, str) and path:
        return path
    kernel_id = str(row.get("id") or "")[:8]
    return f"{row.get('name') or 'kernel'} {kernel_id}".strip()


# -- tables -----------------------------------------------------------------------------


def kernels_html(sample: Status) -> str:
    """The kernels of the server: notebook path, state, CPU and memory of the kernel's
    process tree, share of the memory limit, time since its last activity; heaviest
    (by memory) first."""
    group = sample.groups.get("jupyter")
    if not isinstance(group, Mapping):
        return ""
    rows = sorted(_rows(group, "kernel_usage"), key=_heaviest, reverse=True)
    if not rows:
        return ""
    of, scope = memory_limit(sample)
    cells = []
    for row in rows[:MAX_ROWS]:
        state = row.get("execution_state")
        color = _STATE_COLORS.get(str(state), "#7f7f7f")
        state_cell = f"<span style='color:{color}'>● {_e(state)}</span>" if state else "-"
        last = _number(row.get("last_activity"))
        idle = fmt_idle(max(0.0, sample.time - last)) if last is not None else "-"
        path = kernel_label(row)
        named = isinstance(row.get("path"), str) and bool(row.get("path"))
        label = _e(path) if named else f"<i>{_e(path)}</i>"
        connections = row.get("connections")
        cells.append(
            [
                f"<div class='path' title='{_e(path)}'>{label}</div>",
                state_cell,
                fmt_percent(row.get("cpu_percent")),
                fmt_bytes(row.get("rss_bytes")),
                _share(row.get("rss_bytes"), of),
                idle,
                _e(connections) if _number(connections) is not None else "-",
            ]
        )
    counts = ", ".join(
        f"{_e(group[key])} {key if group[key] != 1 else key[:-1]}"
        for key in ("kernels", "sessions", "terminals")
        if key in group
    )
    title = f"<b>Kernels</b> ({counts}){_more(len(rows))}" if counts else "<b>Kernels</b>"
    head = [
        ("notebook", False),
        ("state", False),
        ("CPU", True),
        ("memory", True),
        (f"of {scope}", True),
        ("idle", True),
        ("connections", True),
    ]
    return _table(title, head, cells)


def users_html(sample: Status) -> str:
    """Every unix user with a process: processes, CPU, memory and its share; heaviest
    (by memory) first. The server lists the ``top_users`` heaviest; the rest come as
    one ``others`` row, last."""
    group = sample.groups.get("users")
    rows = sorted(_rows(group, "users"), key=_heaviest, reverse=True)
    others = group.get("others") if isinstance(group, Mapping) else None
    if not isinstance(others, Mapping):
        others = None
    if not rows and others is None:
        return ""
    of, scope = memory_limit(sample)

    def cells(name: str, row: Mapping[str, Any]) -> list[str]:
        return [
            name,
            _e(row.get("processes", "-")),
            fmt_percent(row.get("cpu_percent")),
            fmt_bytes(row.get("rss_bytes")),
            _share(row.get("rss_bytes"), of),
        ]

    table = [cells(_e(row.get("name", "?")), row) for row in rows[:MAX_ROWS]]
    if others is not None:
        count = others.get("users")
        label = f"{_e(count)} other users" if _number(count) is not None else "other users"
        table.append(cells(f"<i>{label}</i>", others))
    head = [
        ("user", False),
        ("processes", True),
        ("CPU", True),
        ("memory", True),
        (f"of {scope}", True),
    ]
    total = _number(group.get("count")) if isinstance(group, Mapping) else None
    title = f"<b>Users</b> ({total:.0f})" if total is not None else "<b>Users</b>"
    return _table(f"{title}{_more(len(rows))}", head, table)


def _pressure(value: Any, scope: str) -> str:
    number = _number(value)
    if number is None:
        return ""
    return _warn(f"pressure {number:.1f} %", number >= PRESSURE_WARN_PERCENT) + f" ({scope})"


def limits_html(sample: Status) -> str:
    """Limits and pressure (container CPU use and throttling, memory against the limit,
    OOM kills, PSI), and the home volumes' fill."""
    g = sample.groups
    container, memory, cpu = (_group(sample, name) for name in ("container", "memory", "cpu"))
    rows: list[list[str]] = []

    def pressure(name: str, host: Mapping[str, Any] | None) -> str:
        own = _pressure(container.get(f"{name}_pressure"), "container")
        return own or (_pressure(host.get("pressure"), "node") if host else "")

    parts = []
    usage, cores = (
        _number(container.get("cpu_usage_cores")),
        _number(container.get("cpu_limit_cores")),
    )
    if usage is not None:
        parts.append(f"{usage:.2f} of {f'{cores:g}' if cores else 'unlimited'} cores")
    throttled = _number(container.get("cpu_throttled_percent"))
    if throttled is not None:
        parts.append(
            _warn(f"throttled {throttled:.0f} % of periods", throttled >= THROTTLED_WARN_PERCENT)
        )
    parts.append(pressure("cpu", cpu))
    rows.append(["CPU", " · ".join(p for p in parts if p)])

    parts = []
    limit, used = (
        _number(container.get("memory_limit_bytes")),
        _number(container.get("memory_used_bytes")),
    )
    if limit and used is not None:
        percent = 100.0 * used / limit
        parts.append(
            _bar(percent) + f"{fmt_bytes(used)} of {fmt_bytes(limit)} limit ({percent:.0f} %)"
        )
    parts.append(pressure("memory", memory))
    kills = _number(container.get("oom_kills"))
    if kills is not None:
        parts.append(_warn(f"{kills:.0f} OOM kill{'' if kills == 1 else 's'}", kills > 0))
    rows.append(["Memory", " · ".join(p for p in parts if p)])
    rows.append(["I/O", pressure("io", None)])

    for mount in _rows(g.get("disk"), "mounts"):
        if mount.get("home") is not True:
            continue
        fill = _number(mount.get("percent"))
        text = (
            _bar(fill)
            + f"{fmt_percent(fill)} of {fmt_bytes(mount.get('total_bytes'))}"
            + f" · {fmt_bytes(mount.get('free_bytes'))} free"
        )
        if mount.get("stuck"):
            text += " · " + _warn("not answering (last known numbers)", True)
        fstype = f" ({_e(mount['fstype'])})" if mount.get("fstype") else ""
        rows.append([f"Home {_e(mount.get('path', '?'))}{fstype}", text])
    rows = [row for row in rows if row[1]]
    if not rows:
        return ""
    return _table("<b>Limits, pressure and home</b>", [("", False), ("", False)], rows)


def gpu_processes_html(sample: Status) -> str:
    """Compute processes per GPU with their memory, named by the notebook of the kernel
    they belong to; and MIG instances where a device has them."""
    devices = _rows(sample.groups.get("gpu"), "devices")
    if not devices:
        return ""
    paths = {
        str(k.get("id")): kernel_label(k)
        for k in _rows(sample.groups.get("jupyter"), "kernel_usage")
    }
    procs: list[tuple[float, list[str]]] = []
    mig: list[list[str]] = []
    for device in devices:
        index = _e(device.get("index", "?"))
        for proc in _rows(device, "processes"):
            kernel_id = proc.get("kernel_id")
            notebook = _e(paths.get(str(kernel_id), str(kernel_id)[:8])) if kernel_id else "-"
            procs.append(
                (
                    _number(proc.get("used_memory_bytes")) or 0.0,
                    [
                        f"GPU{index}",
                        _e(proc.get("pid", "-")),
                        _e(proc.get("user") or "-"),
                        f"<div class='path'>{notebook}</div>",
                        fmt_bytes(proc.get("used_memory_bytes")),
                    ],
                )
            )
        for instance in _rows(device, "mig"):
            name = instance.get("name") or instance.get("profile") or instance.get("uuid") or "?"
            used = instance.get("memory_used_bytes")
            total = instance.get("memory_total_bytes")
            mig.append(
                [
                    f"GPU{index}",
                    f"MIG {_e(name)}",
                    "",
                    "",
                    f"{fmt_bytes(used)} of {fmt_bytes(total)}",
                ]
            )
    if not procs and not mig:
        return ""
    procs.sort(key=lambda p: p[0], reverse=True)
    rows = [cells for _, cells in procs[:MAX_ROWS]] + mig
    head = [
        ("GPU", False),
        ("pid", True),
        ("user", False),
        ("notebook", False),
        ("GPU memory", True),
    ]
    return _table(f"<b>GPU processes</b>{_more(len(procs))}", head, rows)


# -- alerts and events ------------------------------------------------------------------


def event_text(event: Mapping[str, Any], limit_bytes: float | None = None) -> str:
    """One line for an ``alerts.events`` entry, e.g. "kernel of analysis.ipynb killed:
    out of memory at 2.0 GiB limit, 14:02" (plain text, not escaped)."""
    kind = event.get("kind")
    path = event.get("path")
    message = str(event.get("message") or kind or "event")
    if isinstance(path, str) and path:
        who = f"kernel of {posixpath.basename(path) or path}"
    elif event.get("kernel_id"):
        who = f"kernel {str(event['kernel_id'])[:8]}"
    elif event.get("pid") is not None:
        who = f"process {event['pid']}"
    else:
        who = ""
    if kind == "oom_kill":
        text = f"{who or 'a process'} killed: out of memory"
        if limit_bytes:
            text += f" at {fmt_bytes(limit_bytes)} limit"
    elif kind == "kernel_died" and who and who.split(" ", 2)[-1] not in message:
        text = f"{who} died: {message}"
    else:
        text = message
    return f"{text}, {fmt_clock(event.get('time'))}"


class EventLog:
    """The last :data:`MAX_EVENTS` ``alerts.events``, oldest first, each once.

    :meth:`take` is given the dashboard's window after every update: it reads only the
    samples after the last one it saw (by identity), and drops an event it already holds
    (history replayed after a reconnect carries events again).
    """

    def __init__(self) -> None:
        self.events: deque[tuple[dict[str, Any], float | None]] = deque(maxlen=MAX_EVENTS)
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._last: Status | None = None

    def take(self, samples: Sequence[Status]) -> bool:
        """Add the events of the samples not seen yet; True if any was added."""
        new: list[Status] = []
        for sample in reversed(samples):
            if sample is self._last:
                break
            new.append(sample)
        if samples:
            self._last = samples[-1]
        added = False
        for sample in reversed(new):
            alerts = sample.groups.get("alerts")
            events = _rows(alerts, "events")
            if not events:
                continue
            limit = _number(sample.groups.get("container", {}).get("memory_limit_bytes"))
            for event in events:
                key = tuple(
                    str(event.get(k)) for k in ("time", "kind", "message", "kernel_id", "pid")
                )
                if key in self._seen:
                    continue
                self._seen[key] = None
                if len(self._seen) > SEEN_KEYS:
                    self._seen.popitem(last=False)
                self.events.append((dict(event), limit))
                added = True
        return added


#: A mark per event kind (characters every common font has) and whether it shows in red.
_KIND_MARKS = {
    "oom_kill": ("✖", True),
    "kernel_died": ("✖", True),
    "alert_started": ("⚠", True),
    "alert_ended": ("✓", False),
    "collector_stuck": ("⚠", False),
}


def _event_style(event: Mapping[str, Any]) -> str:
    red = _KIND_MARKS.get(str(event.get("kind")), ("", False))[1]
    return f" style='color:{WARN_COLOR}'" if red else ""


def alerts_html(sample: Status, log: EventLog) -> str:
    """The server's active alerts (red) and the last events, newest first."""
    active = _rows(sample.groups.get("alerts"), "active")
    parts = []
    for alert in active:
        value, threshold = _number(alert.get("value")), _number(alert.get("threshold"))
        reading = f"{value:.3g}" if value is not None else "?"
        if threshold is not None:
            reading += f" (threshold {threshold:.3g})"
        parts.append(
            f"<div style='color:{WARN_COLOR};font-weight:bold'>⚠ {_e(alert.get('name', 'alert'))}"
            f": {_e(alert.get('group', ''))} {reading}, since {fmt_clock(alert.get('since'))}</div>"
        )
    shown = list(log.events)[-SHOWN_EVENTS:][::-1]
    if shown:
        items = "".join(
            f"<li class='sysmon-event sysmon-{_e(e.get('kind', 'event'))}'"
            f" title='{_e(e.get('message', ''))}'{_event_style(e)}>"
            f"{_KIND_MARKS.get(str(e.get('kind')), ('•', False))[0]} {_e(event_text(e, limit))}"
            "</li>"
            for e, limit in shown
        )
        parts.append(
            "<div><b>Last events</b><ul style='margin:2px 0 0 0;padding-left:18px;"
            f"font-size:13px'>{items}</ul></div>"
        )
    if not parts:
        return ""
    return f"<div class='sysmon-alerts' style='padding:4px 2px'>{''.join(parts)}</div>"


# -- the widgets ------------------------------------------------------------------------


class Tables:
    """The tables' widgets, and their redraw from the newest sample in the window.

    ``wanted`` limits them the way ``%sysmon --metrics`` limits the charts (None: all).
    """

    NAMES = ("alerts", "kernels", "users", "limits", "gpu_processes")
    #: Which groups each table needs (any of them).
    NEEDS: Mapping[str, tuple[str, ...]] = {
        "alerts": ("alerts",),
        "kernels": ("jupyter",),
        "users": ("users",),
        "limits": ("container", "memory", "cpu", "disk"),
        "gpu_processes": ("gpu",),
    }

    def __init__(self, wanted: Iterable[str] | None = None) -> None:
        chosen = None if wanted is None else set(wanted)
        self.events = EventLog()
        self.html: dict[str, widgets.HTML] = {}
        for name in self.NAMES:
            if chosen is not None and not chosen.intersection(self.NEEDS[name]):
                continue
            widget = widgets.HTML(layout=widgets.Layout(width="100%", display="none"))
            widget.add_class(f"sysmon-{name.replace('_', '-')}")
            self.html[name] = widget
        self.alerts = self.html.get("alerts")
        self.grid = widgets.GridBox(
            [w for name, w in self.html.items() if name != "alerts"],
            layout=widgets.Layout(
                grid_template_columns="repeat(auto-fill, minmax(420px, 1fr))",
                width="100%",
                grid_gap="4px 16px",
            ),
        )

    def synced(self) -> list[Any]:
        """Every widget a redraw may change (each table and its layout), for hold_sync."""
        out: list[Any] = []
        for widget in self.html.values():
            out += [widget, widget.layout]
        return out

    def draw(self, samples: Sequence[Status]) -> None:
        """Redraw from the window (newest last); only changed tables are assigned."""
        if not samples:
            return
        last = samples[-1]
        if self.alerts is not None:
            self.events.take(samples)
        render = {
            "alerts": lambda: alerts_html(last, self.events),
            "kernels": lambda: kernels_html(last),
            "users": lambda: users_html(last),
            "limits": lambda: limits_html(last),
            "gpu_processes": lambda: gpu_processes_html(last),
        }
        for name, widget in self.html.items():
            text = render[name]()
            if text != widget.value:
                widget.value = text
            display = None if text else "none"
            if widget.layout.display != display:
                widget.layout.display = display
