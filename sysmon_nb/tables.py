"""The dashboard's tables: who and what uses the machine, its limits, and what went wrong.

:class:`Tables` holds one ``ipywidgets.HTML`` per table (alerts and events, kernels,
users, limits and home volumes, GPU processes) and redraws them from the samples in the
dashboard's window. Every field it reads is optional (an older server sends fewer):
a table with nothing to show is hidden. A table whose text did not change is not
assigned, so it sends nothing to the front end; each table's text depends only on the
readings, never on the wall clock, so an idle machine's tables stay still.

The HTML is built with :mod:`sysmon_nb.markup`: every value from a sample is escaped
unless it is markup of ours, and a value of an unexpected type (a sample that did not
come through :func:`~sysmon_nb.protocol.decode`) shows as text or ``-``, never as
markup. The alerts and events table is :mod:`sysmon_nb.events`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from .events import EventLog, alerts_html
from .markup import (
    WARN_COLOR,
    Markup,
    as_text,
    escape,
    finite,
    fmt,
    fmt_bytes,
    fmt_idle,
    fmt_percent,
    join,
    objects,
    table,
)
from .protocol import Status

#: Rows shown per table; the rest are counted ("+3 more").
MAX_ROWS = 10
#: Readings at or over these are shown in red.
THROTTLED_WARN_PERCENT = 25.0
PRESSURE_WARN_PERCENT = 10.0
FILL_WARN_PERCENT = 90.0

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
_CSS = Markup(_TABLE_CSS)


# -- formatting -------------------------------------------------------------------------


def _warn(text: object, on: bool) -> Markup:
    if on:
        return fmt(f"<span style='color:{WARN_COLOR};font-weight:bold'>{{}}</span>", text)
    return escape(text)


def _bar(percent: float | None) -> Markup:
    if percent is None:
        return Markup("")
    width = max(0.0, min(100.0, percent))
    color = WARN_COLOR if percent >= FILL_WARN_PERCENT else "#1f77b4"
    inner = f"<span style='width:{width:.0f}%;background:{color}'></span>"
    return Markup(f"<span class='sysmon-bar'>{inner}</span>")


def _group(sample: Status, name: str) -> Mapping[str, Any]:
    group = sample.groups.get(name)
    return group if isinstance(group, Mapping) else {}


def _table(
    title: Markup, head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[object]]
) -> str:
    """A titled table; ``head`` is (name, right-aligned) per column; each cell is
    escaped unless it is :class:`~sysmon_nb.markup.Markup`."""
    body = table(head, rows, attrs=" class='sysmon-t'")
    return fmt("<div style='margin-top:6px'>{}{}{}</div>", title, _CSS, body)


def _more(total: int) -> Markup:
    if total <= MAX_ROWS:
        return Markup("")
    return Markup(f" <span style='color:#7f7f7f'>(+{total - MAX_ROWS} more)</span>")


def memory_limit(sample: Status) -> tuple[float | None, str]:
    """The memory a kernel competes for: the container's limit when it has one, else the
    node's total; and which of the two it is (``"limit"`` or ``"node"``)."""
    limit = finite(sample.groups.get("container", {}).get("memory_limit_bytes"))
    if limit is not None and limit > 0:
        return limit, "limit"
    total = finite(sample.groups.get("memory", {}).get("total_bytes"))
    return (total, "node") if total else (None, "node")


def _share(rss: Any, of: float | None) -> str:
    number = finite(rss)
    if number is None or not of:
        return "-"
    return f"{100.0 * number / of:.0f} %"


def _heaviest(row: Mapping[str, Any]) -> tuple[float, float]:
    return (finite(row.get("rss_bytes")) or 0.0, finite(row.get("cpu_percent")) or 0.0)


def kernel_label(row: Mapping[str, Any]) -> str:
    """A kernel's notebook path, or its kernel name and short id when the path is unknown."""
    path = row.get("path")
    if isinstance(path, str) and path:
        return path
    kernel_id = as_text(row.get("id"), "")[:8]
    return f"{as_text(row.get('name'), '') or 'kernel'} {kernel_id}".strip()


# -- tables -----------------------------------------------------------------------------


def kernels_html(sample: Status) -> str:
    """The kernels of the server: notebook path, state, CPU and memory of the kernel's
    process tree, share of the memory limit, time since its last activity; heaviest
    (by memory) first."""
    group = sample.groups.get("jupyter")
    if not isinstance(group, Mapping):
        return ""
    rows = sorted(objects(group, "kernel_usage"), key=_heaviest, reverse=True)
    if not rows:
        return ""
    of, scope = memory_limit(sample)
    cells = []
    for row in rows[:MAX_ROWS]:
        state = as_text(row.get("execution_state"), "")
        color = _STATE_COLORS.get(state, "#7f7f7f")
        state_cell = fmt(f"<span style='color:{color}'>● {{}}</span>", state) if state else "-"
        last = finite(row.get("last_activity"))
        idle = fmt_idle(max(0.0, sample.time - last)) if last is not None else "-"
        path = kernel_label(row)
        named = isinstance(row.get("path"), str) and bool(row.get("path"))
        label = escape(path) if named else fmt("<i>{}</i>", path)
        cells.append(
            [
                fmt("<div class='path' title='{}'>{}</div>", path, label),
                state_cell,
                fmt_percent(row.get("cpu_percent")),
                fmt_bytes(row.get("rss_bytes")),
                _share(row.get("rss_bytes"), of),
                idle,
                as_text(row.get("connections")),
            ]
        )
    counts = ", ".join(
        f"{as_text(group[key])} {key if group[key] != 1 else key[:-1]}"
        for key in ("kernels", "sessions", "terminals")
        if key in group
    )
    title = (
        fmt("<b>Kernels</b> ({}){}", counts, _more(len(rows)))
        if counts
        else Markup("<b>Kernels</b>")
    )
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
    rows = sorted(objects(group, "users"), key=_heaviest, reverse=True)
    others = group.get("others") if isinstance(group, Mapping) else None
    if not isinstance(others, Mapping):
        others = None
    if not rows and others is None:
        return ""
    of, scope = memory_limit(sample)

    def cells(name: object, row: Mapping[str, Any]) -> list[object]:
        return [
            name,
            as_text(row.get("processes")),
            fmt_percent(row.get("cpu_percent")),
            fmt_bytes(row.get("rss_bytes")),
            _share(row.get("rss_bytes"), of),
        ]

    shown = [cells(as_text(row.get("name"), "?"), row) for row in rows[:MAX_ROWS]]
    if others is not None:
        count = finite(others.get("users"))
        label = f"{count:.0f} other users" if count is not None else "other users"
        shown.append(cells(fmt("<i>{}</i>", label), others))
    head = [
        ("user", False),
        ("processes", True),
        ("CPU", True),
        ("memory", True),
        (f"of {scope}", True),
    ]
    total = finite(group.get("count")) if isinstance(group, Mapping) else None
    title = fmt("<b>Users</b> ({})", f"{total:.0f}") if total is not None else "<b>Users</b>"
    return _table(fmt("{}{}", Markup(title), _more(len(rows))), head, shown)


def _pressure(value: Any, scope: str) -> Markup:
    number = finite(value)
    if number is None:
        return Markup("")
    return _warn(f"pressure {number:.1f} %", number >= PRESSURE_WARN_PERCENT) + f" ({scope})"


def limits_html(sample: Status) -> str:
    """Limits and pressure (container CPU use and throttling, memory against the limit,
    OOM kills, PSI), and the home volumes' fill."""
    g = sample.groups
    container, memory, cpu = (_group(sample, name) for name in ("container", "memory", "cpu"))
    rows: list[list[object]] = []

    def pressure(name: str, host: Mapping[str, Any] | None) -> Markup:
        own = _pressure(container.get(f"{name}_pressure"), "container")
        return own or (_pressure(host.get("pressure"), "node") if host else Markup(""))

    parts: list[object] = []
    usage, cores = (
        finite(container.get("cpu_usage_cores")),
        finite(container.get("cpu_limit_cores")),
    )
    if usage is not None:
        parts.append(f"{usage:.2f} of {f'{cores:g}' if cores else 'unlimited'} cores")
    throttled = finite(container.get("cpu_throttled_percent"))
    if throttled is not None:
        parts.append(
            _warn(f"throttled {throttled:.0f} % of periods", throttled >= THROTTLED_WARN_PERCENT)
        )
    parts.append(pressure("cpu", cpu))
    rows.append(["CPU", join((p for p in parts if p), " · ")])

    parts = []
    limit, used = (
        finite(container.get("memory_limit_bytes")),
        finite(container.get("memory_used_bytes")),
    )
    if limit and used is not None:
        percent = 100.0 * used / limit
        parts.append(
            _bar(percent) + f"{fmt_bytes(used)} of {fmt_bytes(limit)} limit ({percent:.0f} %)"
        )
    parts.append(pressure("memory", memory))
    kills = finite(container.get("oom_kills"))
    if kills is not None:
        parts.append(_warn(f"{kills:.0f} OOM kill{'' if kills == 1 else 's'}", kills > 0))
    rows.append(["Memory", join((p for p in parts if p), " · ")])
    rows.append(["I/O", pressure("io", None)])

    for mount in objects(g.get("disk"), "mounts"):
        if mount.get("home") is not True:
            continue
        fill = finite(mount.get("percent"))
        text = (
            _bar(fill)
            + f"{fmt_percent(fill)} of {fmt_bytes(mount.get('total_bytes'))}"
            + f" · {fmt_bytes(mount.get('free_bytes'))} free"
        )
        if mount.get("stuck") is True:
            text += Markup(" · ") + _warn("not answering (last known numbers)", True)
        fstype = as_text(mount.get("fstype"), "")
        name = f"Home {as_text(mount.get('path'), '?')}" + (f" ({fstype})" if fstype else "")
        rows.append([name, text])
    rows = [row for row in rows if row[1]]
    if not rows:
        return ""
    title = Markup("<b>Limits, pressure and home</b>")
    return _table(title, [("", False), ("", False)], rows)


def gpu_processes_html(sample: Status) -> str:
    """Compute processes per GPU with their memory, named by the notebook of the kernel
    they belong to; and MIG instances where a device has them."""
    devices = objects(sample.groups.get("gpu"), "devices")
    if not devices:
        return ""
    paths = {
        as_text(k.get("id"), ""): kernel_label(k)
        for k in objects(sample.groups.get("jupyter"), "kernel_usage")
    }
    procs: list[tuple[float, list[object]]] = []
    mig: list[list[object]] = []
    for device in devices:
        index = as_text(device.get("index"), "?")
        for proc in objects(device, "processes"):
            kernel_id = as_text(proc.get("kernel_id"), "")
            notebook = paths.get(kernel_id, kernel_id[:8]) if kernel_id else "-"
            procs.append(
                (
                    finite(proc.get("used_memory_bytes")) or 0.0,
                    [
                        f"GPU{index}",
                        as_text(proc.get("pid")),
                        as_text(proc.get("user")) or "-",
                        fmt("<div class='path'>{}</div>", notebook),
                        fmt_bytes(proc.get("used_memory_bytes")),
                    ],
                )
            )
        for instance in objects(device, "mig"):
            name = next(
                (n for k in ("name", "profile", "uuid") if (n := as_text(instance.get(k), ""))),
                "?",
            )
            used = instance.get("memory_used_bytes")
            total = instance.get("memory_total_bytes")
            mig.append(
                [f"GPU{index}", f"MIG {name}", "", "", f"{fmt_bytes(used)} of {fmt_bytes(total)}"]
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
    return _table(Markup("<b>GPU processes</b>") + _more(len(procs)), head, rows)


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
