"""The dashboard's alerts and events: the server's active alerts, and the last events.

Events (``alerts.events``: OOM kills, kernel deaths, alerts that start or end, stuck
collectors) ride in samples, once each, and history may replay them: :class:`EventLog`
keeps the last ones, each once; :func:`alerts_html` shows them with the active alerts.
Every value is escaped (:mod:`sysmon_nb.markup`); an event's kind names a CSS class only
when it is a kind this client knows.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

from .markup import WARN_COLOR, Markup, as_text, finite, fmt, fmt_bytes, fmt_clock, join, objects
from .protocol import Status

#: Events remembered (newest kept) and shown.
MAX_EVENTS = 50
SHOWN_EVENTS = 6
#: Event keys remembered to drop events that history replays.
SEEN_KEYS = 1000


def event_text(event: Mapping[str, Any], limit_bytes: float | None = None) -> str:
    """One line for an ``alerts.events`` entry, e.g. "kernel of analysis.ipynb killed:
    out of memory at 2.0 GiB limit, 14:02" (plain text, not escaped)."""
    kind = as_text(event.get("kind"), "")
    path = as_text(event.get("path"), "")
    kernel_id = as_text(event.get("kernel_id"), "")
    pid = as_text(event.get("pid"), "")
    message = as_text(event.get("message"), "") or kind or "event"
    if path:
        who = f"kernel of {posixpath.basename(path) or path}"
    elif kernel_id:
        who = f"kernel {kernel_id[:8]}"
    elif pid:
        who = f"process {pid}"
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
            events = objects(alerts, "events")
            if not events:
                continue
            limit = finite(sample.groups.get("container", {}).get("memory_limit_bytes"))
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


def _kind_class(event: Mapping[str, Any]) -> str:
    """The event's kind as a CSS class name: only the known kinds, never a server's text."""
    kind = as_text(event.get("kind"), "")
    return kind if kind in _KIND_MARKS else "event"


def _event_style(event: Mapping[str, Any]) -> Markup:
    red = _KIND_MARKS.get(str(event.get("kind")), ("", False))[1]
    return Markup(f" style='color:{WARN_COLOR}'" if red else "")


def alerts_html(sample: Status, log: EventLog) -> str:
    """The server's active alerts (red) and the last events, newest first."""
    active = objects(sample.groups.get("alerts"), "active")
    parts = []
    for alert in active:
        value, threshold = finite(alert.get("value")), finite(alert.get("threshold"))
        reading = f"{value:.3g}" if value is not None else "?"
        if threshold is not None:
            reading += f" (threshold {threshold:.3g})"
        parts.append(
            fmt(
                f"<div style='color:{WARN_COLOR};font-weight:bold'>"
                "⚠ {}: {} {}, since {}</div>",
                as_text(alert.get("name"), "alert"),
                as_text(alert.get("group"), ""),
                reading,
                fmt_clock(alert.get("since")),
            )
        )
    shown = list(log.events)[-SHOWN_EVENTS:][::-1]
    if shown:
        items = join(
            fmt(
                "<li class='sysmon-event sysmon-{}' title='{}'{}>{} {}</li>",
                _kind_class(e),
                as_text(e.get("message"), ""),
                _event_style(e),
                _KIND_MARKS.get(str(e.get("kind")), ("•", False))[0],
                event_text(e, limit),
            )
            for e, limit in shown
        )
        parts.append(
            fmt(
                "<div><b>Last events</b><ul style='margin:2px 0 0 0;padding-left:18px;"
                "font-size:13px'>{}</ul></div>",
                items,
            )
        )
    if not parts:
        return ""
    return fmt("<div class='sysmon-alerts' style='padding:4px 2px'>{}</div>", join(parts))
