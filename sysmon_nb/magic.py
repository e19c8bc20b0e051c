"""The ``%sysmon`` line magic and :func:`show`, its Python twin.

``%sysmon`` finds the server (:mod:`sysmon_nb.discovery`), shows a
:class:`~sysmon_nb.dashboard.SysmonDashboard` and feeds it from a
:class:`~sysmon_nb.client.StatusClient` running as a task on the kernel's event loop:
it keeps running between cells. ``%sysmon stop`` cancels every such task (each closes
its socket on the way out); ``%sysmon status`` says what runs. Whatever ends a task
(a refusal, or any exception at all) is shown in the dashboard's header and in
``%sysmon status`` as ``refused: ...`` or ``stopped: ...``, and an unexpected exception
is logged once with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Iterable
from typing import Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display

from .client import SCHEMES, ClientError, ConnectionState, RefusedError, StatusClient
from .dashboard import DEFAULT_WINDOW, SysmonDashboard, parse_window
from .discovery import Target, discover
from .protocol import ProtocolError, parse_metrics

#: Interval assumed for the first request of history, before the server has said its own.
ASSUMED_INTERVAL = 5.0
#: How often the header's "last sample ... ago" and reconnect countdown are refreshed (s).
TICK = 1.0

log = logging.getLogger("sysmon_nb.magic")

#: Monitors started in this kernel and not stopped yet (a refused one stays listed,
#: with its reason, until ``%sysmon stop``).
running: list[Monitor] = []


class Monitor:
    """A dashboard, the client that feeds it, and the task that runs them."""

    def __init__(
        self,
        target: Target,
        *,
        metrics: Iterable[str] = (),
        window: float = DEFAULT_WINDOW,
        history: int | None = None,
        scheme: str | None = None,
    ) -> None:
        self.target = target
        self.dashboard = SysmonDashboard(metrics=metrics, window=window)
        if history is None:
            history = math.ceil(self.dashboard.window / ASSUMED_INTERVAL)
        self.client = StatusClient(
            target.url,
            target.token,
            metrics=metrics,
            history=history,
            scheme=scheme,
            on_state=self.dashboard.set_state,
        )
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    def __repr__(self) -> str:
        return (
            f"<sysmon monitor {self.client.url} ({self.target.source}):"
            f" {self.dashboard.state.describe()}, {len(self.dashboard.samples)} samples>"
        )

    def start(self) -> Monitor:
        """Run on the current event loop (a Jupyter kernel's); returns at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError(
                "%sysmon needs a running asyncio event loop, as in a Jupyter kernel"
            ) from None
        self.task = loop.create_task(self._run(), name=f"sysmon {self.client.url}")
        running.append(self)
        return self

    def stop(self) -> None:
        """Cancel the task; the socket closes as it unwinds (on the next loop turns)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        with contextlib.suppress(ValueError):
            running.remove(self)

    async def wait_stopped(self) -> None:
        """Stop, and wait until the task (and its socket) are gone."""
        self.stop()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        ticker = asyncio.ensure_future(self._tick())
        try:
            async for message in self.client.messages():
                try:
                    self.dashboard.update(message)
                except Exception:  # a drawing bug must not end the stream
                    log.exception("sysmon: the dashboard failed to draw a %s", type(message))
        except RefusedError as err:
            self.error = err.reason
        except ClientError as err:
            self.error = err.reason
            log.error("sysmon: %s stopped: %s", self.client.url, err.reason, exc_info=err)
        except Exception as exc:  # whatever it is, the widget must say why it stopped
            self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.exception("sysmon: %s stopped: %s", self.client.url, self.error)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self.client.state.phase != "refused":
                self.dashboard.set_state(ConnectionState("stopped", self.error or ""))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.dashboard.refresh_header()


def start(
    url: str | None = None,
    token: str | None = None,
    *,
    metrics: Iterable[str] | str = (),
    window: float | str = DEFAULT_WINDOW,
    history: int | None = None,
    token_env: str | None = None,
    scheme: str | None = None,
) -> Monitor:
    """Find the server, start a monitor on the running loop, and return it (not shown)."""
    try:
        groups = parse_metrics(metrics) if metrics else ()
    except ProtocolError as err:
        raise UsageError(err.message) from None
    try:
        seconds = parse_window(window)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if history is not None and history < 0:
        raise UsageError("history must be >= 0")
    try:
        target = discover(url, token, token_env=token_env)
    except ClientError as err:
        raise UsageError(err.reason) from None
    if scheme is not None and scheme.lower() not in SCHEMES:
        raise UsageError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    return Monitor(target, metrics=groups, window=seconds, history=history, scheme=scheme).start()


def show(
    url: str | None = None,
    token: str | None = None,
    *,
    metrics: Iterable[str] | str = (),
    window: float | str = DEFAULT_WINDOW,
    history: int | None = None,
    token_env: str | None = None,
    scheme: str | None = None,
) -> Monitor:
    """Show a live dashboard of this kernel's server; returns its :class:`.Monitor`.

    Arguments as ``%sysmon``: ``metrics`` (groups, default all), ``window`` (seconds
    or ``"10m"``), ``history`` (samples asked for on connect; default fills the
    window), ``url``/``token`` or ``token_env`` (else found by discovery), ``scheme``
    (``"token"`` or ``"bearer"``; default: ``Bearer`` for a JWT, else ``token``).
    """
    monitor = start(
        url,
        token,
        metrics=metrics,
        window=window,
        history=history,
        token_env=token_env,
        scheme=scheme,
    )
    display(monitor.dashboard)
    return monitor


def stop_all() -> int:
    """Stop every running monitor; returns how many were stopped."""
    monitors = list(running)
    for monitor in monitors:
        monitor.stop()
    return len(monitors) + _stop_fleets()


def _stop_fleets() -> int:
    if "sysmon_nb.fleet_table" not in sys.modules:
        return 0
    from .fleet_table import stop_fleets

    return stop_fleets()


def _fleets() -> list[Any]:
    if "sysmon_nb.fleet_table" not in sys.modules:
        return []
    from .fleet_table import fleets

    return fleets()


def show_fleet_from_magic(args: Any) -> None:
    """``%sysmon --fleet``: the fleet table of the hub at ``--url`` (else
    ``SYSMON_HUB_URL``), with the token in ``--token-env`` (else ``SYSMON_HUB_TOKEN``)."""
    from .fleet_table import show_fleet

    try:
        show_fleet(args.url, token_env=args.token_env)
    except ClientError as err:
        raise UsageError(err.reason) from None


@magics_class
class SysmonMagics(Magics):
    """``%sysmon``: live system status of this kernel's Jupyter server."""

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "action",
        nargs="?",
        default="start",
        choices=["start", "stop", "status"],
        help="start (default) a dashboard; stop every dashboard; status of each",
    )
    @magic_arguments.argument(
        "--metrics", default="", help="groups to show, comma-separated (default: all)"
    )
    @magic_arguments.argument(
        "--window", default=str(DEFAULT_WINDOW), help="seconds shown, or 90s / 10m / 1h"
    )
    @magic_arguments.argument(
        "--history", type=int, default=None, help="past samples asked for on connect"
    )
    @magic_arguments.argument(
        "--fleet", action="store_true", help="a table of every server of a JupyterHub"
    )
    @magic_arguments.argument("--url", default=None, help="the Jupyter server's URL")
    @magic_arguments.argument(
        "--token-env", default=None, help="environment variable that holds the token"
    )
    @magic_arguments.argument(
        "--scheme",
        default=None,
        choices=sorted(SCHEMES),
        help="how the credential is sent (default: bearer for a JWT, else token)",
    )
    @line_magic
    def sysmon(self, line: str) -> None:
        """Show live charts of the machine this kernel's Jupyter server runs on."""
        args: Any = magic_arguments.parse_argstring(self.sysmon, line)
        if args.action == "stop":
            count = stop_all()
            print(f"sysmon: stopped {count} dashboard(s)")
            return
        if args.action == "status":
            views = _fleets()
            if not running and not views:
                print("sysmon: no dashboard running")
            for monitor in running:
                print(monitor)
            for view in views:
                print(view)
            return
        if args.fleet:
            show_fleet_from_magic(args)
            return
        show(
            args.url,
            metrics=args.metrics,
            window=args.window,
            history=args.history,
            token_env=args.token_env,
            scheme=args.scheme,
        )
