"""The fleet table: ``%sysmon --fleet`` and :func:`show_fleet`.

One row per server of the hub (user, server, state, CPU and memory of its limit, GPU,
home volume, kernels, active alerts, age of the newest sample), heaviest first by a
chosen column; a row with a figure at or over 90 % is flagged; stopped, pending and
unreachable servers say so. The table is one ``ipywidgets.HTML`` (no JavaScript of our
own): it is redrawn once per ``interval`` from what :class:`~sysmon_nb.fleet.FleetClient`
holds, not once per server's sample, so the front end gets one message per interval
whatever the size of the hub. Picking a server in the "dashboard" list opens its full
:class:`~sysmon_nb.dashboard.SysmonDashboard` below, fed by a StatusClient of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .client import ClientError, RefusedError
from .fleet import REFRESH_INTERVAL, FleetClient, FleetServer, ServerKey
from .markup import Markup, fmt, table

#: Seconds between two redraws of the table (the extension's default interval).
INTERVAL = 5.0
#: Seconds between redraws while the table is still filling (first samples coming).
FILL_REDRAW_S = 0.5
#: ...during the first seconds only (an unreachable server never fills its row).
FILL_WINDOW_S = 15.0
#: A row with a figure at or over this percentage is flagged.
HOT_PERCENT = 90.0

#: Fleet views started in this kernel and not stopped yet (``%sysmon stop`` stops them).
running_fleets: list[FleetView] = []

_STYLE = Markup(
    "<style>.sysmon-fleet{border-collapse:collapse;font:12px monospace}"
    ".sysmon-fleet td,.sysmon-fleet th{padding:1px 6px;text-align:right}"
    ".sysmon-fleet td:nth-child(-n+3),.sysmon-fleet th:nth-child(-n+3){text-align:left}"
    ".sysmon-fleet tr.h{background:#fdd;font-weight:bold}"
    ".sysmon-fleet tr.d{color:#888}</style>"
)
COLUMNS = (
    "user",
    "server",
    "state",
    "CPU %",
    "memory %",
    "GPU %",
    "home %",
    "kernels",
    "alerts",
    "age",
)


def _sort_keys() -> dict[str, Callable[[FleetServer], Any]]:
    def figure(name: str) -> Callable[[FleetServer], float]:
        def key(server: FleetServer) -> float:
            value = getattr(server.summary, name, None) if server.summary else None
            return -1.0 if value is None else float(value)

        return key

    return {
        "heaviest": lambda s: s.summary.heaviest() if s.summary else -1.0,
        "cpu": figure("cpu_percent"),
        "memory": figure("memory_percent"),
        "gpu": figure("gpu_percent"),
        "home": figure("home_percent"),
        "kernels": figure("kernels"),
        "alerts": lambda s: len(s.summary.alerts) if s.summary else -1,
        "age": lambda s: s.age_s() if s.received_at is not None else -1.0,
    }


SORT_KEYS = _sort_keys()


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def sorted_servers(servers: list[FleetServer], sort: str) -> list[FleetServer]:
    """Heaviest first by ``sort`` (a key of :data:`SORT_KEYS`), ties by user/server."""
    key = SORT_KEYS[sort]
    by_name = sorted(servers, key=lambda s: s.key)
    return sorted(by_name, key=key, reverse=True)


def render(servers: list[FleetServer], sort: str, now: float | None = None) -> str:
    """The table's HTML: short rows, no attribute quotes, so 500 rows stay small. User
    and server names come from the hub and states from the servers: every cell is
    escaped (:func:`~sysmon_nb.markup.table`)."""
    now = time.time() if now is None else now
    show_home = any(s.summary and s.summary.home_percent is not None for s in servers)
    show_alerts = any(s.summary and s.summary.alerts for s in servers)
    shown = [c for c in COLUMNS if (c != "home %" or show_home) and (c != "alerts" or show_alerts)]
    rows: list[list[str]] = []
    row_attrs: list[str] = []
    for server in sorted_servers(servers, sort):
        summary = server.summary
        live = summary is not None and server.hub_state == "ready"
        cells = [server.user, server.name, server.state()]
        if live and summary is not None:
            cells += [
                _pct(summary.cpu_percent),
                _pct(summary.memory_percent),
                _pct(summary.gpu_percent),
            ]
            if show_home:
                cells.append(_pct(summary.home_percent))
            cells.append("" if summary.kernels is None else str(summary.kernels))
            if show_alerts:
                cells.append(",".join(summary.alerts))
            cells.append(_age(server.age_s(now)))
            css = " class=h" if summary.heaviest() >= HOT_PERCENT or summary.alerts else ""
        else:
            cells += [""] * (len(shown) - 3)
            css = " class=d"
        rows.append(cells)
        row_attrs.append(css)
    return table(
        [(c, False) for c in shown], rows, attrs=" class=sysmon-fleet", row_attrs=row_attrs
    )


class FleetView(widgets.VBox):
    """The fleet table widget, fed by ``fleet``; :meth:`start` runs it on the loop."""

    def __init__(
        self, fleet: FleetClient, *, sort: str = "heaviest", interval: float = INTERVAL
    ) -> None:
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")
        self.fleet = fleet
        self.interval = interval
        self.header = widgets.HTML(value=fmt("<b>sysmon fleet</b> {}", fleet.hub_url))
        self.sort = widgets.Dropdown(options=list(SORT_KEYS), value=sort, description="sort by")
        self.pick = widgets.Dropdown(options=[("-", None)], value=None, description="dashboard")
        self.table = widgets.HTML(value=_STYLE + Markup("<p>listing the hub's servers…</p>"))
        self.detail = widgets.VBox()
        self.monitor: Any = None
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self._started = time.monotonic()
        super().__init__(
            [self.header, widgets.HBox([self.sort, self.pick]), self.table, self.detail]
        )
        self.sort.observe(lambda _: self.redraw(), names="value")
        self.pick.observe(self._picked, names="value")

    def __repr__(self) -> str:  # what ``%sysmon status`` prints; never the token
        return f"<sysmon fleet {self.fleet.hub_url}: {self.describe()}>"

    def describe(self) -> str:
        """A short phrase: how many servers, ready, streaming (connected, with a
        sample) and refused; or why the whole view stopped."""
        if self.error:
            return f"stopped: {self.error}"
        servers = list(self.fleet.servers.values())
        ready = sum(s.hub_state == "ready" for s in servers)
        streaming = refused = 0
        for server in servers:
            phase = server.client.state.phase if server.client is not None else None
            streaming += phase == "connected" and server.received_at is not None
            refused += phase == "refused"
        text = f"{len(servers)} servers, {ready} ready, {streaming} streaming"
        if refused:
            text += f", {refused} refused"
        if self.fleet.listing_error:
            text += f"; the hub did not answer: {self.fleet.listing_error}"
        return text

    def redraw(self, now: float | None = None) -> None:
        """Draw the table (and the server list, when servers came or went) at once."""
        servers = list(self.fleet.servers.values())
        keys = sorted(s.key for s in servers)
        options = [("-", None), *((f"{u}/{n}" if n else u, (u, n)) for u, n in keys)]
        with self.hold_sync():
            if [o[1] for o in self.pick.options] != [o[1] for o in options]:
                with self.pick.hold_trait_notifications():
                    value = self.pick.value if self.pick.value in keys else None
                    self.pick.options = options
                    self.pick.value = value
            self.header.value = fmt(
                "<b>sysmon fleet</b> {}: {}", self.fleet.hub_url, self.describe()
            )
            self.table.value = _STYLE + Markup(render(servers, self.sort.value, now))

    def _next_redraw_s(self) -> float:
        servers = self.fleet.servers.values()
        if time.monotonic() - self._started > FILL_WINDOW_S:
            return self.interval
        filling = self.fleet.listings == 0 or any(
            s.hub_state == "ready" and s.received_at is None and s.error is None for s in servers
        )
        return min(self.interval, FILL_REDRAW_S) if filling else self.interval

    def _picked(self, change: dict[str, Any]) -> None:
        self.open_dashboard(change["new"])

    def open_dashboard(self, key: ServerKey | None) -> None:
        """Show the full dashboard of the server ``key`` below the table (None: close)."""
        from .discovery import Target
        from .magic import Monitor

        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        server = self.fleet.servers.get(key) if key is not None else None
        if server is None or not server.url:
            self.detail.children = ()
            return
        # The server's own token, never the fleet's: the server belongs to its user.
        self.monitor = Monitor(Target(server.url, None, "fleet"))
        self.fleet.lend(server.key, self.monitor.client)
        self.monitor.start()
        # The dashboard's own header names the host, which servers may share: say which.
        title = f"{server.user}/{server.name}" if server.name else server.user
        label = widgets.HTML(value=fmt("<b>dashboard of {}</b> {}", title, server.url))
        self.detail.children = (label, self.monitor.dashboard)

    def start(self) -> FleetView:
        """Run on the current event loop (a Jupyter kernel's); returns ``self`` at once."""
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self.task = loop.create_task(self._run(), name=f"sysmon fleet {self.fleet.hub_url}")
        running_fleets.append(self)
        return self

    def stop(self) -> None:
        """Cancel the fleet (every stream closes as it unwinds) and the dashboard below."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.monitor is not None:
            self.monitor.stop()
        with contextlib.suppress(ValueError):
            running_fleets.remove(self)

    async def wait_stopped(self) -> None:
        self.stop()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        fleet_task = asyncio.ensure_future(self.fleet.run())
        try:
            while not fleet_task.done():
                # Quick redraws until every ready server has its first sample, then
                # one per interval, whatever the number of servers.
                await asyncio.wait({fleet_task}, timeout=self._next_redraw_s())
                self.redraw()
            fleet_task.result()
        except RefusedError as err:
            self.error = f"refused: {err.reason}"
        except ClientError as err:
            self.error = err.reason
        finally:
            fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await fleet_task
            self.redraw()


def fleets() -> list[FleetView]:
    """The fleet views running in this kernel (``%sysmon status`` lists them)."""
    return list(running_fleets)


def stop_fleets() -> int:
    """Stop every running fleet view; returns how many were stopped."""
    views = list(running_fleets)
    for view in views:
        view.stop()
    return len(views)


def show_fleet(
    hub_url: str | None = None,
    token: str | None = None,
    *,
    sort: str = "heaviest",
    interval: float = INTERVAL,
    refresh: float = REFRESH_INTERVAL,
    token_env: str | None = None,
) -> FleetView:
    """Show a live table of every server of a JupyterHub; returns its :class:`.FleetView`.

    ``hub_url`` and ``token`` default to ``SYSMON_HUB_URL`` and ``SYSMON_HUB_TOKEN``
    (a hub user's token: an admin's, or one with ``custom:sysmon:read``, ``list:users``,
    ``read:servers`` and ``tokens!user=<its user>``; it goes to the hub only, each server
    gets a token of its own). ``sort``: a column to sort by, heaviest first; ``interval``:
    seconds between redraws; ``refresh``: seconds between listings of the hub.
    """
    from IPython.display import display

    from .discovery import discover_hub

    target = discover_hub(hub_url, token, token_env=token_env)
    fleet = FleetClient(target.url, target.token or "", refresh_interval=refresh)
    view = FleetView(fleet, sort=sort, interval=interval)
    display(view)
    return view.start()
