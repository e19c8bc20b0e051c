"""SysmonExtension: configuration, and the start and stop of sampler and broadcaster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import socket
import uuid
from typing import Any

import tornado
from jupyter_server.base.websocket import WS_PING_INTERVAL
from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Bool, Float, Int, List, Set, TraitError, Unicode, default, validate

from sysmon_nb._version import __version__
from sysmon_nb.protocol import GROUPS, ProtocolError, Status, parse_metrics

from .auth import AdminPolicy, owner_rule_applies
from .broadcaster import SystemStatusBroadcaster
from .cgroup import ContainerCollector
from .collectors import (
    CpuCollector,
    DiskCollector,
    JupyterCollector,
    JupyterCounts,
    KernelRef,
    MemoryCollector,
    NetworkCollector,
    ProcessesCollector,
)
from .errors import ConfigError
from .fanout import missing_internals
from .gpu import GpuCollector
from .handlers import StatusAPIHandler, StatusWebSocketHandler
from .sampler import Collector, Sampler

#: How long the sampler waits for the server's managers to answer (s).
MANAGER_TIMEOUT = 2.0
#: How long shutdown waits for 1001 close frames to reach clients (s).
CLOSE_GRACE = 1.0


class SysmonExtension(ExtensionApp):
    """Live system status for administrators, over ``sysmon/ws``."""

    name = "sysmon"
    load_other_extensions = True

    interval = Float(
        5.0,
        help="Seconds between samples. Every client receives every sample.",
    ).tag(config=True)

    history = Int(
        720,
        help="Samples kept in memory for clients that ask for history on connect "
        "(720 at the default interval is one hour). 0 keeps none.",
    ).tag(config=True)

    metrics = List(
        Unicode(),
        default_value=list(GROUPS),
        help=f"Metric groups sampled and offered to clients. Known: {', '.join(GROUPS)}.",
    ).tag(config=True)

    top_processes = Int(
        5,
        help="How many processes the 'processes' group lists by CPU and by memory. "
        "0 reads only the process count (no per-process walk).",
    ).tag(config=True)

    compression = Bool(
        True,
        help="Accept permessage-deflate from clients that offer it. Each frame is "
        "compressed once for every client (no per-connection context): about a third "
        "of the bytes on the wire for about 3 % more CPU. False sends plain frames.",
    ).tag(config=True)

    fast_path = Bool(
        True,
        help="Write frames through sysmon's direct path (frames built once and handed "
        "to each socket; see jupyter_server_ext/fanout.py), which relies on tornado "
        "internals that are checked at start-up. False (or a tornado without them) uses "
        "tornado's public write_message path and its own compression: the same frames, "
        "at more CPU per client. For troubleshooting.",
    ).tag(config=True)

    admin_users = Set(
        Unicode(),
        help="Usernames that are administrators, whatever their identity source.",
    ).tag(config=True)

    admin_groups = Set(
        Unicode(),
        help="JupyterHub groups whose members are administrators.",
    ).tag(config=True)

    admin_role = Unicode(
        "admin",
        help="The role (in a JWT identity's roles claim) that makes a user an administrator.",
    ).tag(config=True)

    allow_owner = Bool(
        help="Treat the server's owner as an administrator: whoever holds the server's "
        "own token or password, or under JupyterHub the user the server was spawned "
        "for. Default: on outside JupyterHub, off inside it.",
    ).tag(config=True)

    revalidate_interval = Float(
        60.0,
        help="Seconds between re-checks of a connected JupyterHub user's credentials.",
    ).tag(config=True)

    max_connections = Int(
        100,
        help="Most simultaneous WebSocket clients; further upgrades get HTTP 503.",
    ).tag(config=True)

    client_buffer = Int(
        8,
        help="Frames queued for a client that reads slowly; beyond this the oldest "
        "queued frame is dropped (the newest data wins).",
    ).tag(config=True)

    @default("allow_owner")
    def _default_allow_owner(self) -> bool:
        return not self._under_jupyterhub()

    @validate("interval")
    def _validate_interval(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise ConfigError(f"SysmonExtension.interval must be > 0 seconds, got {value}")
        return value

    @validate("history", "top_processes", "revalidate_interval")
    def _validate_non_negative(self, proposal: Any) -> Any:
        if proposal["value"] < 0:
            name = proposal["trait"].name
            raise ConfigError(f"SysmonExtension.{name} must be >= 0, got {proposal['value']}")
        return proposal["value"]

    @validate("max_connections", "client_buffer")
    def _validate_positive(self, proposal: Any) -> Any:
        if proposal["value"] < 1:
            name = proposal["trait"].name
            raise ConfigError(f"SysmonExtension.{name} must be >= 1, got {proposal['value']}")
        return proposal["value"]

    @validate("metrics")
    def _validate_metrics(self, proposal: Any) -> list[str]:
        try:
            return list(parse_metrics(proposal["value"]))
        except ProtocolError as err:
            raise ConfigError(f"SysmonExtension.metrics: {err.message}") from None

    # -- lifecycle -----------------------------------------------------------------

    version = __version__
    host = socket.gethostname()

    _config_error: Exception | None = None

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        # A refused value leaves the trait at its default; remember the refusal so
        # that loading fails below instead of running on settings nobody chose.
        try:
            super()._link_jupyter_server_extension(serverapp)
        except TraitError as err:
            self._config_error = err
            raise

    def initialize_settings(self) -> None:
        if self._config_error is not None:
            message = f"sysmon is disabled by a configuration error: {self._config_error}"
            self.log.error(message)
            raise ConfigError(message)
        #: Random for this process's life; clients tell samples apart by (server_id, seq).
        self.server_id = uuid.uuid4().hex
        self.connections: set[StatusWebSocketHandler] = set()
        self._all_closed = asyncio.Event()
        self.broadcaster = SystemStatusBroadcaster(self.history, self.client_buffer)
        self.use_fast_path = self._check_fast_path()
        self.policy = AdminPolicy.from_config(
            self.admin_users,
            self.admin_groups,
            self.admin_role,
            self.allow_owner,
            self._hub_owner(),
            self._owner_rule_applies(),
        )
        self.sampler = Sampler(self.make_collectors(), self.interval, self._on_sample, self.host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keepalive: PeriodicCallback | None = None
        self.log.info(
            "sysmon: sampling %s every %ss; owner is admin: %s",
            ", ".join(self.metrics),
            self.interval,
            self.allow_owner,
        )

    def _check_fast_path(self) -> bool:
        """Whether frames may take the direct path: asked for, and every tornado
        internal it needs is there (else one warning, and the public path)."""
        if not self.fast_path:
            return False
        missing = missing_internals()
        if missing:
            self.log.warning(
                "sysmon: tornado %s lacks what the direct write path needs (%s); frames go "
                "through tornado's public write_message path and its own compression",
                tornado.version,
                ", ".join(missing),
            )
            return False
        return True

    def _owner_rule_applies(self) -> bool:
        """Whether a plain ``User`` is the server's owner (see :mod:`.auth`); says once
        why not when ``allow_owner`` is on and the identity provider is another one."""
        provider = getattr(self.serverapp, "identity_provider", None)
        applies = owner_rule_applies(provider)
        if self.allow_owner and not applies and not self._under_jupyterhub():
            kind = type(provider)
            self.log.warning(
                "sysmon: allow_owner is off for identity provider %s.%s: only jupyter_server's "
                "single-user providers (and JWTIdentityProvider's token fallback) tell the "
                "server's owner apart; administrators come from admin_users, admin_groups "
                "or admin_role",
                kind.__module__,
                kind.__qualname__,
            )
        return applies

    def initialize_handlers(self) -> None:
        kwargs = {"extension": self}
        self.handlers.extend(
            [
                (r"/sysmon/ws", StatusWebSocketHandler, kwargs),
                (r"/sysmon/api/status", StatusAPIHandler, kwargs),
            ]
        )

    def make_collectors(self) -> list[Collector]:
        """One collector per enabled metric group, in protocol order."""
        factories: dict[str, Any] = {
            "cpu": CpuCollector,
            "memory": MemoryCollector,
            "disk": DiskCollector,
            "network": NetworkCollector,
            "processes": lambda: ProcessesCollector(top_n=self.top_processes),
            "container": ContainerCollector,
            "gpu": GpuCollector,
            "jupyter": lambda: JupyterCollector(self._jupyter_counts),
        }
        return [factories[group]() for group in self.metrics]

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start sampling once the server's event loop runs."""
        if not hasattr(self, "sampler"):
            return  # the extension failed to load; nothing to start
        self._loop = asyncio.get_running_loop()
        self.sampler.start()
        settings = serverapp.web_app.settings
        interval_ms = settings.get("ws_ping_interval", WS_PING_INTERVAL)
        if interval_ms > 0:
            timeout_ms = settings.get("ws_ping_timeout", max(3 * interval_ms, WS_PING_INTERVAL))
            self._keepalive = PeriodicCallback(
                functools.partial(self._ping_all, interval_ms, timeout_ms), interval_ms
            )
            self._keepalive.start()

    async def stop_extension(self) -> None:
        """Stop sampling and close every connection with 1001."""
        if not hasattr(self, "sampler"):
            return
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sampler.stop)
        self._loop = None
        self._all_closed.clear()
        for handler in list(self.connections):
            handler.close_going_away()
        if self.connections:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), CLOSE_GRACE)

    def _ping_all(self, interval_ms: float, timeout_ms: float) -> None:
        """One timer's keep-alive for every connection (one timer per connection costs
        a loop wake-up each; here all pings leave, and their pongs come back, together)."""
        now = IOLoop.current().time()
        for handler in list(self.connections):
            handler.keepalive(now, interval_ms, timeout_ms)

    def connection_closed(self, handler: StatusWebSocketHandler) -> None:
        """Forget a connection (called once it ends or its upgrade fails)."""
        self.connections.discard(handler)
        if not self.connections:
            self._all_closed.set()

    # -- bridges between the sampler's thread and the server's loop -------------------

    def _on_sample(self, status: Status) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
            loop.call_soon_threadsafe(self.broadcaster.publish, status)

    def _jupyter_counts(self) -> JupyterCounts:
        loop = self._loop
        if loop is None:
            raise TimeoutError("server loop not running")
        future = asyncio.run_coroutine_threadsafe(self._read_managers(), loop)
        try:
            return future.result(MANAGER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("server managers did not answer") from None

    async def _read_managers(self) -> JupyterCounts:
        serverapp = self.serverapp
        assert serverapp is not None
        km = serverapp.kernel_manager
        kernels = []
        for kernel_id in km.list_kernel_ids():
            kernel = km.get_kernel(kernel_id)
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            kernels.append(
                KernelRef(id=kernel_id, name=kernel.kernel_name, pid=pid if pid else None)
            )
        terminals = serverapp.web_app.settings.get("terminal_manager")
        sessions = await serverapp.session_manager.list_sessions()
        return JupyterCounts(
            kernels=tuple(kernels),
            terminals=len(terminals.terminals) if terminals is not None else 0,
            sessions=len(sessions),
        )

    # -- JupyterHub ------------------------------------------------------------------

    def _under_jupyterhub(self) -> bool:
        provider = getattr(self.serverapp, "identity_provider", None)
        return provider is not None and hasattr(provider, "hub_auth")

    def _hub_owner(self) -> str | None:
        """The hub user this server was spawned for (JupyterHub sets JUPYTERHUB_USER)."""
        if not self._under_jupyterhub():
            return None
        return os.environ.get("JUPYTERHUB_USER") or None
