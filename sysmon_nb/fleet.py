"""FleetClient: every single-user server of a JupyterHub, each watched through its proxy.

Under JupyterHub every single-user server runs the extension, so the fleet view is a
client concern (docs/fleet.md): the hub's REST API lists the servers
(``GET hub/api/users``, paginated, named and stopped servers included), and one
:class:`~sysmon_nb.client.StatusClient` per ready server streams
``user/<name>/<server>/sysmon/ws`` through the hub's proxy, each reconnecting on its own
with the client's backoff. A refresh every ``refresh_interval`` seconds picks up the
servers that started or stopped; a semaphore bounds how many connections open at once.

The token must be able to list users and their servers (``list:users``,
``read:servers``) and to read sysmon on the servers: ``access:servers`` (an admin's
token) or, read-only, ``custom:sysmon:read`` (jupyter_server_ext.hub_scopes). A token
without them is refused at once, naming the scopes missing (:class:`FleetRefusedError`);
nothing retries it.

Each server keeps only a small :class:`Summary` of its newest sample (what the fleet
table shows), so the cost per server stays a socket and a few numbers.

Errors::

    ClientError (sysmon_nb.client)
    └── RefusedError
        └── FleetRefusedError   the hub refused the token, or it lacks scopes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from .client import ClientError, RefusedError, StatusClient
from .protocol import Status

log = logging.getLogger("sysmon_nb.fleet")

#: Seconds between two listings of the hub's servers.
REFRESH_INTERVAL = 30.0
#: Connections opened at once, at most.
MAX_OPENING = 16
#: Users asked for per page of the hub's listing.
PAGE_SIZE = 200
#: Pages read per listing, at most (PAGE_SIZE * MAX_PAGES users).
MAX_PAGES = 500
#: The read-only scope (declared by the hub's ``custom_scopes``).
SYSMON_READ_SCOPE = "custom:sysmon:read"
PAGINATION = "application/jupyterhub-pagination+json"

#: Hub states of a server: "ready", "pending" (starting or stopping), "stopped".
ServerKey = tuple[str, str]


class FleetRefusedError(RefusedError):
    """The hub refused the token, or the token cannot watch the fleet."""


def missing_scopes(scopes: Iterable[str]) -> list[str]:
    """What a token with ``scopes`` lacks to watch the fleet (empty: nothing).

    Filtered forms (``list:users!group=ops``) count: the fleet then shows what they
    allow.
    """
    names = {scope.partition("!")[0] for scope in scopes}
    missing = [need for need in ("list:users", "read:servers") if need not in names]
    if "access:servers" not in names and SYSMON_READ_SCOPE not in names:
        missing.append(f"{SYSMON_READ_SCOPE} (or access:servers)")
    return missing


@dataclass(frozen=True)
class Summary:
    """The figures of one sample the fleet table shows, in percent of the server's
    limit where it has one (its container's), else of the machine."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_percent: float | None = None
    home_percent: float | None = None
    kernels: int | None = None
    alerts: tuple[str, ...] = ()
    host: str = ""
    time: float = 0.0

    def heaviest(self) -> float:
        """The highest fill of CPU, memory, GPU and home volume (0 when none known)."""
        figures = (self.cpu_percent, self.memory_percent, self.gpu_percent, self.home_percent)
        return max((f for f in figures if f is not None), default=0.0)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(status: Status) -> Summary:
    """The table's figures for one sample (pure; absent groups give None)."""
    groups = status.groups
    cpu, memory = groups.get("cpu") or {}, groups.get("memory") or {}
    container = groups.get("container") or {}
    cpu_percent = _num(cpu.get("percent"))
    used_cores, limit_cores = (
        _num(container.get("cpu_usage_cores")),
        _num(container.get("cpu_limit_cores")),
    )
    if used_cores is not None and limit_cores:
        cpu_percent = 100.0 * used_cores / limit_cores
    memory_percent = _num(memory.get("percent"))
    used_bytes, limit_bytes = (
        _num(container.get("memory_used_bytes")),
        _num(container.get("memory_limit_bytes")),
    )
    if used_bytes is not None and limit_bytes:
        memory_percent = 100.0 * used_bytes / limit_bytes
    gpu_percent = None
    for device in (groups.get("gpu") or {}).get("devices") or ():
        util = _num(device.get("utilization_percent"))
        used, total = _num(device.get("memory_used_bytes")), _num(device.get("memory_total_bytes"))
        fill = max(util or 0.0, 100.0 * used / total if used is not None and total else 0.0)
        gpu_percent = fill if gpu_percent is None else max(gpu_percent, fill)
    home_percent = None
    for mount in (groups.get("disk") or {}).get("mounts") or ():
        if mount.get("home") is True:
            home_percent = _num(mount.get("percent"))
            break
    kernels = (groups.get("jupyter") or {}).get("kernels")
    active = (groups.get("alerts") or {}).get("active") or ()
    alerts = tuple(str(a.get("name", "?")) for a in active if isinstance(a, Mapping))
    return Summary(
        cpu_percent=cpu_percent,
        memory_percent=memory_percent,
        gpu_percent=gpu_percent,
        home_percent=home_percent,
        kernels=kernels if isinstance(kernels, int) else None,
        alerts=alerts,
        host=status.host,
        time=status.time,
    )


@dataclass
class FleetServer:
    """One server of the hub: what the hub says of it, and what its stream said last."""

    user: str
    name: str
    hub_state: str
    url: str
    client: StatusClient | None = None
    task: asyncio.Task[None] | None = None
    summary: Summary | None = None
    #: ``time.time()`` the newest sample arrived (this machine's clock).
    received_at: float | None = None
    samples: int = 0
    error: str | None = None

    @property
    def key(self) -> ServerKey:
        return (self.user, self.name)

    def state(self) -> str:
        """A short phrase: the hub's state, or the stream's when the hub says ready."""
        if self.hub_state != "ready":
            return self.hub_state
        if self.client is None:
            return "ready"
        if self.error is not None and self.client.state.phase != "refused":
            return f"stopped: {self.error}"
        return self.client.state.describe()

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the newest sample arrived; None before the first."""
        if self.received_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.received_at)


@dataclass
class HubListing:
    """One listing of the hub: every server, keyed by (user, server name)."""

    servers: dict[ServerKey, tuple[str, str]] = field(default_factory=dict)  # state, url


class FleetClient:
    """Watches every server of the hub at ``hub_url`` with ``token``.

    Run :meth:`run` as a task (it raises :class:`FleetRefusedError` when the token
    will not do); :attr:`servers` is the live picture; ``on_change`` is called (no
    arguments) after each listing. Cancel the task to stop: every stream is closed.
    """

    def __init__(
        self,
        hub_url: str,
        token: str,
        *,
        scheme: str = "token",
        refresh_interval: float = REFRESH_INTERVAL,
        max_opening: int = MAX_OPENING,
        open_timeout: float = 10.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(hub_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"not a hub URL: {hub_url!r} (expected http(s)://host[/prefix])")
        self.hub_url = urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", "")
        )
        self._origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.token = token
        self._scheme = scheme
        self.refresh_interval = refresh_interval
        self.open_timeout = open_timeout
        self.on_change = on_change
        self._opening = asyncio.Semaphore(max(1, max_opening))
        #: Every server of the last listing, by (user, server name).
        self.servers: dict[ServerKey, FleetServer] = {}
        #: The hub's model of the token's owner (after :meth:`check`).
        self.owner: dict[str, Any] | None = None
        #: Listings done; the last listing's error (None once one works again).
        self.listings = 0
        self.listing_error: str | None = None

    def __repr__(self) -> str:  # never shows the token
        ready = sum(s.hub_state == "ready" for s in self.servers.values())
        return f"<FleetClient {self.hub_url}: {len(self.servers)} servers, {ready} ready>"

    # -- the hub's REST API ----------------------------------------------------------

    async def _get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        url = f"{self.hub_url}hub/api/{path}"
        if query:
            url += "?" + urlencode(query)
        headers = {"Authorization": f"{self._scheme} {self.token}", "Accept": PAGINATION}
        try:
            reply = await AsyncHTTPClient().fetch(url, headers=headers, request_timeout=30)
        except HTTPClientError as err:
            if err.code in (401, 403):
                raise FleetRefusedError(
                    f"the hub refused this token for {path} (HTTP {err.code})"
                ) from None
            raise ClientError(f"the hub answered {path} with HTTP {err.code}") from err
        return json.loads(reply.body)

    async def check(self) -> dict[str, Any]:
        """Ask the hub who the token is and refuse if it cannot watch the fleet."""
        owner = await self._get("user")
        missing = missing_scopes(owner.get("scopes") or ())
        if missing:
            raise FleetRefusedError(
                f"this token of {owner.get('kind', 'user')} {owner.get('name')!r} cannot"
                f" watch the hub's servers: it lacks {', '.join(missing)}"
            )
        self.owner = owner
        return dict(owner)

    async def list_servers(self) -> HubListing:
        """Every user's servers, named and stopped ones included, page by page."""
        listing = HubListing()
        offset = 0
        for _ in range(MAX_PAGES):
            page = await self._get(
                "users", {"offset": offset, "limit": PAGE_SIZE, "include_stopped_servers": 1}
            )
            users = page["items"] if isinstance(page, dict) else page
            for user in users:
                self._add_user(listing, user)
            following = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not following or not users:
                break
            offset = int(following["offset"])
        return listing

    def _add_user(self, listing: HubListing, user: Mapping[str, Any]) -> None:
        name = str(user["name"])
        servers = user.get("servers") or {}
        if "" not in servers:  # no default server running: listed as stopped
            listing.servers[(name, "")] = ("stopped", "")
        for server_name, server in servers.items():
            if server.get("ready"):
                state = "ready"
            elif server.get("pending"):
                state = f"pending ({server['pending']})"
            else:
                state = "stopped"
            url = str(server.get("url") or "")
            listing.servers[(name, str(server_name))] = (state, self._origin + url if url else "")

    # -- the streams -----------------------------------------------------------------

    async def run(self) -> None:
        """Check the token, then list and stream until cancelled."""
        try:
            await self.check()
            while True:
                await self.refresh()
                await asyncio.sleep(self.refresh_interval)
        finally:
            await self.aclose()

    async def refresh(self) -> None:
        """List the hub's servers once; start and stop streams to match."""
        try:
            listing = await self.list_servers()
        except FleetRefusedError:
            raise
        except (ClientError, OSError, ValueError, KeyError, TypeError) as err:
            if self.listing_error is None:
                log.warning("sysmon: cannot list the hub's servers: %s", err)
            self.listing_error = str(err)
            return
        if self.listing_error is not None:
            log.info("sysmon: listing the hub's servers again")
            self.listing_error = None
        self.listings += 1
        for key in list(self.servers):
            if key not in listing.servers:
                self._stop(self.servers.pop(key))
        for key, (state, url) in listing.servers.items():
            server = self.servers.get(key)
            if server is None:
                server = self.servers[key] = FleetServer(key[0], key[1], state, url)
            server.hub_state = state
            if state == "ready" and server.url != url:
                self._stop(server)
                server.url = url
            if state == "ready" and server.task is None and url:
                self._start(server)
            elif state != "ready" and server.task is not None:
                self._stop(server)
                server.received_at = None
                server.summary = None
        if self.on_change is not None:
            self.on_change()

    def _start(self, server: FleetServer) -> None:
        server.error = None
        server.client = StatusClient(
            server.url,
            self.token,
            scheme=self._scheme,
            # The row reads no process lists: servers need not walk their processes for it.
            exclude=("processes", "users"),
            history=1,  # the latest sample at once: the row fills without waiting a tick
            max_catch_up=0,
            open_timeout=self.open_timeout,
            open_limit=self._opening,
            compression=None,  # a zlib context per server costs more than it saves here
        )
        server.task = asyncio.get_running_loop().create_task(
            self._stream(server), name=f"sysmon fleet {server.user}/{server.name}"
        )

    @staticmethod
    async def _stream(server: FleetServer) -> None:
        assert server.client is not None
        try:
            async for status in server.client:
                server.summary = summarize(status)
                server.received_at = time.time()
                server.samples += 1
                del status  # only the summary stays: a few numbers per server
        except ClientError as err:
            server.error = err.reason

    @staticmethod
    def _stop(server: FleetServer) -> None:
        if server.task is not None:
            server.task.cancel()
        server.task = None
        server.client = None

    async def aclose(self) -> None:
        """Stop every stream and wait until their sockets are closed (idempotent)."""
        tasks = [s.task for s in self.servers.values() if s.task is not None]
        for server in self.servers.values():
            self._stop(server)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
