"""SysmonExtension: configuration, and the start and stop of sampler and broadcaster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import tornado
from jupyter_server.base.websocket import WS_PING_INTERVAL
from jupyter_server.extension.application import ExtensionApp
from prometheus_client import CollectorRegistry
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Bool, Dict, Float, Int, List, Set, TraitError, Unicode, default, validate

from sysmon_nb._version import __version__
from sysmon_nb.protocol import GROUPS, ProtocolError, Status, parse_metrics

from .alerts import DEFAULT_RULES, MATCH_WINDOW_S, AlertEngine, parse_rules
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
)
from .counters import CountersCollector
from .demand import (
    SCRAPE_CALLER,
    SCRAPE_PERIOD_GUESS_S,
    Demand,
    absent,
    answer_wait,
    sample_with,
    why_absent,
)
from .errors import ConfigError
from .fanout import missing_internals
from .gpu import GpuCollector
from .handlers import StatusAPIHandler, StatusWebSocketHandler
from .hub_scopes import ReaderCache
from .kernels import KernelDeaths, unix_time
from .metrics import EXPORTER, Exporter
from .metrics_route import MetricsHandler
from .processes import ProcessesCollector, ProcessWalk, UsersCollector
from .sampler import Collector, Sampler, StuckCall, default_timeout
from .slots import ConnectionSlots

#: How long the sampler waits for the server's managers to answer (s).
MANAGER_TIMEOUT = 2.0
#: How long shutdown waits for the sampler's threads (s); never for a stuck call.
SAMPLER_STOP_WAIT = 0.3
#: The newest sample is stale as a whole when older than this many intervals.
STALE_INTERVALS = 3
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
        "0 makes the group read only the process count; the 'users' group still walks "
        "every process while someone wants it (leave 'users' out of metrics for no walk "
        "at all).",
    ).tag(config=True)

    top_users = Int(
        10,
        help="How many unix users the 'users' group lists, heaviest first (by resident "
        "memory, then CPU); the rest are summed in its 'others' entry. The group comes "
        "from the same process walk as 'processes', made only while someone wants one "
        "of the two.",
    ).tag(config=True)

    network_mounts = Bool(
        False,
        help="List network filesystems (NFS, CephFS, CIFS, network FUSE mounts) in the "
        "'disk' group's mounts. The filesystem holding the server's root_dir or $HOME is "
        "listed (with home: true) whatever this says. Every call on a mount runs under "
        "collector_timeout: a dead server marks its mount 'stuck', it never stops the "
        "stream.",
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

    hub_outage_grace = Float(
        120.0,
        help="Seconds a connection stays open while the hub cannot be reached to re-check "
        "its credentials (a hub restart). Then it is closed with 1013 (try again later): "
        "clients reconnect with their backoff and are admitted again once the hub "
        "answers. A connection whose rights were revoked during the outage thus streams "
        "at most revalidate_interval + hub_outage_grace seconds longer. 0 closes at the "
        "first re-check the hub does not answer.",
    ).tag(config=True)

    max_connections = Int(
        100,
        help="Most simultaneous WebSocket clients; further upgrades get HTTP 503. Of "
        "these, non-administrators hold at most non_admin_share, and one identity at "
        "most max_connections_per_identity (HTTP 429 beyond either).",
    ).tag(config=True)

    max_connections_per_identity = Int(
        20,
        help="Most simultaneous WebSocket clients of one identity (a hub user or service, "
        "a JWT subject, the server's owner), administrators included; further upgrades "
        "get HTTP 429 with the reason. One token cannot take every slot.",
    ).tag(config=True)

    non_admin_share = Float(
        0.5,
        help="Share of max_connections (rounded down) that non-administrators (hub "
        "readers with custom:sysmon:read) may hold together; the rest is kept for "
        "administrators, who may use every slot. A reader beyond it gets HTTP 429 with "
        "the reason. 0 keeps every slot for administrators.",
    ).tag(config=True)

    reader_cache_seconds = Float(
        10.0,
        help="Seconds the hub's answer about a custom:sysmon:read token (admitted or "
        "refused) is reused for its requests and re-checks, under JupyterHub: many "
        "requests, connections or refusals of one token cost at most one hub call per "
        "period. A revoked reader token is refused at the door at most this long after "
        "the hub revoked it (connected ones: see revalidate_interval). 0 asks the hub on "
        "every request (concurrent requests still share one call).",
    ).tag(config=True)

    client_buffer = Int(
        8,
        help="Frames queued for a client that reads slowly; beyond this the oldest "
        "queued frame is dropped (the newest data wins).",
    ).tag(config=True)

    alert_rules = List(
        Dict(),
        default_value=DEFAULT_RULES,
        help="Alerts evaluated on the server every tick (so they fire with no notebook "
        "open), shown in the 'alerts' group and logged when they start and end. Each "
        "rule is a dict: name (unique), group and field (a sample's field, e.g. "
        "container / cpu_throttled_percent; also container / memory_percent: memory "
        "used against the container's limit, or the host's memory without one; and "
        "disk / home_percent: the fullest home volume), op ('>=', '>', '<=', '<', or "
        "'rises': the field grew by more than threshold since the last sample), and "
        "threshold (a number). Defaults: memory >= 90 %, home volume >= 90 % full, "
        "CPU throttled >= 25 %, any OOM kill.",
    ).tag(config=True)

    collector_timeout = Float(
        help="Seconds a tick's collectors get to answer (default: the interval, at most "
        "2 s; a larger value acts as the interval). A collector or filesystem call that "
        "misses it does not hold back the others: the sample goes out on time, the late "
        "group carries its last good reading and is listed in the sample's 'stale' and "
        "'errors', and a call that never returns (a stale NFS mount) is not started again "
        "until it does.",
    ).tag(config=True)

    @default("collector_timeout")
    def _default_collector_timeout(self) -> float:
        return default_timeout(self.interval)

    @validate("collector_timeout")
    def _validate_collector_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise ConfigError(f"SysmonExtension.collector_timeout must be > 0 seconds, got {value}")
        return value

    prometheus = Bool(
        True,
        help="Serve the latest sample as sysmon_* metrics (Prometheus text) on "
        "sysmon/metrics, behind the same admission as sysmon/ws: administrators, hub "
        "readers with custom:sysmon:read, the owner where allow_owner is on. A scrape "
        "reads the last sample; it never samples. False: sysmon/metrics answers 404.",
    ).tag(config=True)

    jupyter_server_metrics = Bool(
        False,
        help="Also put the sysmon_* metrics on jupyter_server's own /metrics (with "
        "prometheus on). That route does not use sysmon's admission: with "
        "ServerApp.authenticate_prometheus on (the default) anyone logged in to this "
        "server reads it (the owner, and under JupyterHub every user the hub lets use "
        "the server, shared access included), with it off anyone who can reach the "
        "server; each of them then reads every unix user's memory, CPU and processes "
        "count, every filesystem, the kernels and GPUs of the whole machine. Leave it "
        "off and scrape sysmon/metrics.",
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

    @validate(
        "history",
        "top_processes",
        "top_users",
        "revalidate_interval",
        "hub_outage_grace",
        "reader_cache_seconds",
    )
    def _validate_non_negative(self, proposal: Any) -> Any:
        if proposal["value"] < 0:
            name = proposal["trait"].name
            raise ConfigError(f"SysmonExtension.{name} must be >= 0, got {proposal['value']}")
        return proposal["value"]

    @validate("max_connections", "client_buffer", "max_connections_per_identity")
    def _validate_positive(self, proposal: Any) -> Any:
        if proposal["value"] < 1:
            name = proposal["trait"].name
            raise ConfigError(f"SysmonExtension.{name} must be >= 1, got {proposal['value']}")
        return proposal["value"]

    @validate("non_admin_share")
    def _validate_share(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0 <= value <= 1:
            raise ConfigError(f"SysmonExtension.non_admin_share must be 0..1, got {value}")
        return value

    @validate("alert_rules")
    def _validate_alert_rules(self, proposal: Any) -> list[dict[str, Any]]:
        parse_rules(proposal["value"])  # raises ConfigError with the rule at fault
        return list(proposal["value"])

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
        self.slots = ConnectionSlots(
            self.max_connections, self.max_connections_per_identity, self.non_admin_share
        )
        self.readers = ReaderCache(self.reader_cache_seconds)
        #: sysmon/metrics' own registry: only sysmon's exporter, never the global one
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self.exporter = Exporter(self.metrics_registry)
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
        self.kernel_deaths = KernelDeaths()
        self.alerts = AlertEngine(
            parse_rules(self.alert_rules),
            self.log,
            # a death and its OOM kill are read up to a tick (and a restarter poll) apart
            match_window_s=max(MATCH_WINDOW_S, 2 * self.interval + 3),
        )
        self.demand = Demand(self.interval)
        self._sampled_at: float | None = None
        self.sampler = Sampler(
            self.make_collectors(),
            self.interval,
            self._on_sample,
            self.host,
            timeout=self.collector_timeout,
            wanted=self._wanted_groups,
            on_stuck=self._on_stuck,
            log=self.log,
        )
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
                (r"/sysmon/metrics", MetricsHandler, kwargs),
            ]
        )

    def make_collectors(self) -> list[Collector]:
        """One collector per enabled metric group, in protocol order. ``alerts`` has
        none: it is computed from each whole sample (:meth:`_on_sample`)."""
        jupyter = JupyterCollector(self._jupyter_counts)
        walk = ProcessWalk()  # one walk per tick for processes and users
        factories: dict[str, Any] = {
            "cpu": CpuCollector,
            "memory": MemoryCollector,
            "disk": lambda: DiskCollector(
                home_paths=self.home_paths(), network_mounts=self.network_mounts
            ),
            "network": NetworkCollector,
            "processes": lambda: ProcessesCollector(top_n=self.top_processes, walk=walk),
            "users": lambda: UsersCollector(top_n=self.top_users, walk=walk),
            "container": ContainerCollector,
            "gpu": lambda: GpuCollector(kernel_pids=lambda: jupyter.kernel_pids),
            "jupyter": lambda: jupyter,
            "counters": CountersCollector,
        }
        return [factories[group]() for group in self.metrics if group != "alerts"]

    def home_paths(self) -> list[str]:
        """The paths whose filesystems are home volumes: the server's root_dir and the
        home directory of the user it runs as (``$HOME``)."""
        paths = [os.path.expanduser("~")]
        root_dir = getattr(self.serverapp, "root_dir", None)
        if root_dir:
            paths.append(os.path.abspath(os.path.expanduser(root_dir)))
        return paths

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start sampling once the server's event loop runs."""
        if not hasattr(self, "sampler"):
            return  # the extension failed to load; nothing to start
        self._loop = asyncio.get_running_loop()
        self.sampler.start()
        if self.prometheus:
            self.exporter.attach(self)
            if self.jupyter_server_metrics:
                EXPORTER.attach(self)  # jupyter_server's /metrics: see the trait's help
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
        self.exporter.detach(self)
        EXPORTER.detach(self)
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        # Bounded and short: the sampler never waits on a stuck call (its threads are
        # daemons); no executor thread, which Python would join at exit.
        self.sampler.stop(timeout=SAMPLER_STOP_WAIT)
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

    # -- what is wanted, and how fresh ------------------------------------------------

    def want(self, groups: Iterable[str], caller: str | None = None) -> float:
        """``caller`` wants ``groups`` now: on-demand groups (``processes``, ``users``) are
        sampled only while someone wants them, and a caller that keeps coming back keeps
        them wanted for a window that follows its own period (see :mod:`.demand`).
        A call that names no caller is a Prometheus scrape (the exporter calls
        ``want(groups)`` on each scrape). Returns until when (monotonic s) the groups
        stay wanted for this caller."""
        if caller is None:
            return self.demand.want(groups, SCRAPE_CALLER, first_period=SCRAPE_PERIOD_GUESS_S)
        return self.demand.want(groups, caller)

    def _wanted_groups(self) -> set[str]:
        """On the sampler's thread: groups a subscriber or a recent caller wants. Both
        reads copy in one step, safe beside the loop's writes."""
        wanted = set(self.broadcaster.wanted())
        wanted.update(self.demand.wanted())
        return wanted

    def answer_wait(self) -> float:
        """How long a REST answer waits for a sample holding every group it asked for (s)."""
        return answer_wait(self.interval, self.collector_timeout)

    def sample_age(self) -> float | None:
        """Seconds since the newest sample was taken (monotonic), or None before the first."""
        taken = self._sampled_at
        return None if taken is None else time.monotonic() - taken

    async def status_for_api(
        self, metrics: Iterable[str]
    ) -> tuple[dict[str, Any], str | None] | None:
        """The newest sample restricted to ``metrics``, as JSON, and a warning when the
        sample itself is stale (older than ``STALE_INTERVALS`` intervals: the sampler is
        stuck as a whole). Then every group is listed in ``stale`` with the sample's age
        added. None before the first sample.

        Whoever asks for a group gets it: when the newest sample lacks one asked for (an
        on-demand group nobody wanted until this call), this waits up to
        :meth:`answer_wait` for the next sample that has it. A group still absent then
        (or at once, when the sampler is stuck) is in ``errors``, saying why."""
        wanted = tuple(metrics)
        latest, age = self.broadcaster.latest, self.sample_age()
        if latest is None or age is None:
            return None
        missing = absent(latest, wanted)
        bound = None if age > STALE_INTERVALS * self.interval else self.answer_wait()
        if missing and bound is not None:  # (None: the sampler is stuck, nothing will come)
            latest, missing = await sample_with(latest, wanted, self.broadcaster.next_sample, bound)
            age = self.sample_age() or 0.0
        sample = latest.subset(wanted)
        obj = sample.to_json()
        errors = obj["errors"]
        assert isinstance(errors, dict)
        errors.update((g, why_absent(g, bound)) for g in missing if g not in errors)
        if age <= STALE_INTERVALS * self.interval:
            return obj, None
        stale = dict(sample.stale)
        for group in sample.groups:
            stale[group] = round(age + stale.get(group, 0.0), 1)
        obj["stale"] = stale
        warning = (
            f'110 - "sysmon: the newest sample is {age:.0f} s old (interval {self.interval:g} s);'
            ' the sampler is stuck"'
        )
        return obj, warning

    # -- bridges between the sampler's thread and the server's loop -------------------

    def _on_stuck(self, call: StuckCall) -> None:
        """On the sampler's thread: a collector or mount stopped answering; the next
        sample's ``alerts.events`` says so (``collector_stuck``)."""
        if "alerts" not in self.metrics:
            return
        event: dict[str, Any] = {
            "time": call.time,
            "kind": "collector_stuck",
            "message": call.message,
            "group": call.group,
        }
        if call.mount is not None:
            event["path"] = call.mount
        self.alerts.add_event(event)

    def _on_sample(self, status: Status) -> None:
        self._sampled_at = time.monotonic()
        deaths = self.kernel_deaths.drain()
        if "alerts" in self.metrics:
            alerts = self.alerts.update(status.groups, deaths, time.monotonic(), status.time)
            status = dataclasses.replace(status, groups={**status.groups, "alerts": alerts})
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
        sessions = await serverapp.session_manager.list_sessions()
        paths = {
            s["kernel"]["id"]: s.get("path") or None
            for s in sessions
            if isinstance(s.get("kernel"), dict)
        }
        kernels = []
        kernel_ids = km.list_kernel_ids()
        for kernel_id in kernel_ids:
            kernel = km.get_kernel(kernel_id)
            pid = getattr(getattr(kernel, "provisioner", None), "pid", None)
            model = km.kernel_model(kernel_id)
            path = paths.get(kernel_id)
            kernels.append(
                KernelRef(
                    id=kernel_id,
                    name=kernel.kernel_name,
                    pid=pid if pid else None,
                    path=path,
                    execution_state=model.get("execution_state"),
                    last_activity=unix_time(model.get("last_activity")),
                    connections=model.get("connections"),
                )
            )
            self.kernel_deaths.watch(kernel_id, kernel, path)
        self.kernel_deaths.forget_except(kernel_ids)
        terminals = serverapp.web_app.settings.get("terminal_manager")
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
