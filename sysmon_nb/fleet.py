"""FleetClient: every single-user server of a JupyterHub, each watched through its proxy.

Under JupyterHub every single-user server runs the extension, so the fleet view is a
client concern (docs/fleet.md): the hub's REST API lists the servers
(``GET hub/api/users``, paginated, named and stopped servers included), and one
:class:`~sysmon_nb.client.StatusClient` per ready server streams
``user/<name>/<server>/sysmon/ws`` through the hub's proxy, each reconnecting on its own
with the client's backoff. A refresh every ``refresh_interval`` seconds picks up the
servers that started or stopped; a semaphore bounds how many connections open at once.

The fleet's token only ever goes to the hub. A single-user server belongs to its user,
who can replace the process and read what it is sent, so each server is sent only a
token of its own, minted through the hub when its stream opens
(:mod:`sysmon_nb.hub_tokens`): short-lived, narrowed to that server
(``custom:sysmon:read!server=<user>/<name>``, or ``access:servers!server=...`` when the
fleet's token reads through ``access:servers``), rotated before it expires (the stream
reconnects with the new token, then the old one is revoked) and revoked when the stream
stops and when the fleet closes. A dashboard opened on one server borrows that server's
token (:meth:`FleetClient.lend`).

The token must be able to list users and their servers (``list:users``,
``read:servers``), to read sysmon on the servers (``access:servers`` or, read-only,
``custom:sysmon:read``: jupyter_server_ext.hub_scopes) and to mint tokens for its owner
(``tokens!user=<owner>``, or for ``token_owner``). A token without them is refused at
once, saying what it lacks (:class:`FleetRefusedError`); nothing retries it.

Each server keeps only a small :class:`Summary` of its newest sample (what the fleet
table shows), so the cost per server stays a socket and a few numbers; ``keep_latest``
keeps its whole newest sample too (what the hub exporter renders).

Errors::

    ClientError (sysmon_nb.client)
    └── RefusedError
        └── FleetRefusedError   the hub refused the token, or it lacks scopes
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .client import CLOSE_CREDENTIALS_EXPIRED, ClientError, RefusedError, StatusClient
from .fleet_summary import Summary, summarize
from .hub_tokens import TOKEN_LIFETIME, HubAPI, HubError, ServerTokens, minting_problem
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

#: Groups a fleet row never reads: servers need not walk their processes for it.
EXCLUDED = ("processes", "users")

#: Hub states of a server: "ready", "pending" (starting or stopping), "stopped".
ServerKey = tuple[str, str]

__all__ = [
    "FleetClient",
    "FleetRefusedError",
    "FleetServer",
    "Summary",
    "missing_scopes",
    "summarize",
]


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
    #: The newest sample itself, only when the fleet keeps them (``keep_latest``).
    latest: Status | None = None
    #: ``time.time()`` the newest sample arrived (this machine's clock).
    received_at: float | None = None
    samples: int = 0
    error: str | None = None
    #: The close code or HTTP status of the stream's refusal, if it was refused.
    refused_code: int | None = None

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
    #: Each user's groups, where the listing shows them (for ``!group=`` scope filters).
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)


class FleetClient:
    """Watches every server of the hub at ``hub_url`` with ``token``.

    Run :meth:`run` as a task (it raises :class:`FleetRefusedError` when the token
    will not do); :attr:`servers` is the live picture; ``on_change`` is called (no
    arguments) after each listing. Cancel the task to stop: every stream is closed and
    every token minted for the servers revoked.

    ``token_lifetime`` (s) is the life of each server's token; ``token_owner`` names
    the hub user the tokens are minted for, when not the token's own (a service's token
    needs one). ``exclude``: groups the streams leave out; ``include``: groups sent only
    when named that the streams take where offered; ``keep_latest`` keeps each
    server's newest sample in ``FleetServer.latest``.
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
        token_lifetime: float = TOKEN_LIFETIME,
        token_owner: str | None = None,
        exclude: Iterable[str] = EXCLUDED,
        include: Iterable[str] = (),
        keep_latest: bool = False,
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
        self._hub = HubAPI(self.hub_url, token, scheme=scheme)
        self.refresh_interval = refresh_interval
        self.open_timeout = open_timeout
        self.on_change = on_change
        self.token_lifetime = token_lifetime
        self.token_owner = token_owner
        self.exclude = tuple(exclude)
        self.include = tuple(include)
        self.keep_latest = keep_latest
        self._max_opening = max(1, max_opening)
        self._opening = asyncio.Semaphore(self._max_opening)
        #: Every server of the last listing, by (user, server name).
        self.servers: dict[ServerKey, FleetServer] = {}
        #: The hub's model of the token's owner (after :meth:`check`).
        self.owner: dict[str, Any] | None = None
        #: The servers' tokens (after :meth:`check`).
        self.tokens: ServerTokens | None = None
        #: Listings done; the last listing's error (None once one works again).
        self.listings = 0
        self.listing_error: str | None = None
        self._groups: dict[str, tuple[str, ...]] = {}
        self._borrowers: dict[ServerKey, weakref.WeakSet[StatusClient]] = {}
        self._closed = False

    def __repr__(self) -> str:  # never shows the token
        ready = sum(s.hub_state == "ready" for s in self.servers.values())
        return f"<FleetClient {self.hub_url}: {len(self.servers)} servers, {ready} ready>"

    # -- the hub's REST API ----------------------------------------------------------

    async def _get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        try:
            return await self._hub.call("GET", path, query=query, accept=PAGINATION)
        except HubError as err:
            if err.code in (401, 403):
                raise FleetRefusedError(
                    f"the hub refused this token for {path} (HTTP {err.code})", err.code
                ) from None
            raise

    async def check(self) -> dict[str, Any]:
        """Ask the hub who the token is and refuse if it cannot watch the fleet."""
        owner = await self._get("user")
        missing = missing_scopes(owner.get("scopes") or ())
        if missing:
            raise FleetRefusedError(
                f"this token of {owner.get('kind', 'user')} {owner.get('name')!r} cannot"
                f" watch the hub's servers: it lacks {', '.join(missing)}"
            )
        problem = minting_problem(owner, self.token_owner)
        if problem is not None:
            raise FleetRefusedError(problem)
        self.owner = owner
        self.tokens = ServerTokens(
            self._hub,
            owner,
            token_owner=self.token_owner,
            lifetime=self.token_lifetime,
            max_calls=self._max_opening,
        )
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
        groups = user.get("groups")
        if isinstance(groups, list):
            listing.groups[name] = tuple(str(g) for g in groups)
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
        rotating: asyncio.Task[None] | None = None
        try:
            await self.check()
            assert self.tokens is not None
            rotating = asyncio.get_running_loop().create_task(
                self.tokens.rotate_forever(self._clients, lambda key: self._groups.get(key[0])),
                name=f"sysmon fleet tokens {self.hub_url}",
            )
            while True:
                await self.refresh()
                await asyncio.sleep(self.refresh_interval)
        finally:
            if rotating is not None:
                rotating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rotating
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
        self._groups = listing.groups
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
            if state == "ready" and self._expired(server):
                self._stop(server)  # its token expired (a hub outage): a fresh one
            if state == "ready" and server.task is None and url:
                self._start(server)
            elif state != "ready" and server.task is not None:
                self._stop(server)
                server.received_at = None
                server.summary = server.latest = None
        if self.on_change is not None:
            self.on_change()

    @staticmethod
    def _expired(server: FleetServer) -> bool:
        """Whether the server closed the stream because its token had expired."""
        task = server.task
        return task is not None and task.done() and server.refused_code == CLOSE_CREDENTIALS_EXPIRED

    def _start(self, server: FleetServer) -> None:
        server.error = None
        server.refused_code = None
        server.client = StatusClient(
            server.url,
            scheme=self._scheme,
            token_source=partial(self._token_for, server.key),
            # The row reads no process lists: servers need not walk their processes for it.
            exclude=self.exclude,
            include=self.include,
            history=1,  # the latest sample at once: the row fills without waiting a tick
            max_catch_up=0,
            open_timeout=self.open_timeout,
            open_limit=self._opening,
            compression=None,  # a zlib context per server costs more than it saves here
        )
        server.task = asyncio.get_running_loop().create_task(
            self._stream(server, self.keep_latest), name=f"sysmon fleet {server.user}/{server.name}"
        )

    @staticmethod
    async def _stream(server: FleetServer, keep_latest: bool) -> None:
        assert server.client is not None
        try:
            async for status in server.client:
                server.summary = summarize(status)
                server.received_at = time.time()
                server.samples += 1
                server.latest = status if keep_latest else None
                del status  # only the summary stays: a few numbers per server
        except RefusedError as err:
            server.error = err.reason
            server.refused_code = err.code
        except ClientError as err:
            server.error = err.reason

    def _stop(self, server: FleetServer) -> None:
        if server.task is not None:
            server.task.cancel()
            if self.tokens is not None:
                self.tokens.discard(server.key)  # revoked; a new stream gets a new one
        server.task = None
        server.client = None

    # -- the servers' tokens -----------------------------------------------------------

    async def _token_for(self, key: ServerKey) -> str:
        """The token for ``key``'s server (the token source of its streams)."""
        if self.tokens is None or self._closed:
            raise RefusedError("the fleet has stopped: no token for this server")
        return (await self.tokens.get(key, self._groups.get(key[0]))).token

    def lend(self, key: ServerKey, client: StatusClient) -> None:
        """Let ``client`` (a dashboard on ``key``'s server) connect with that server's
        token, rotated with the fleet's own stream: never with the fleet's token."""
        client.token_source = partial(self._token_for, key)
        self._borrowers.setdefault(key, weakref.WeakSet()).add(client)

    def _clients(self, key: ServerKey) -> list[StatusClient]:
        server = self.servers.get(key)
        clients = list(self._borrowers.get(key, ()))
        if server is not None and server.client is not None:
            clients.append(server.client)
        return clients

    async def aclose(self) -> None:
        """Stop every stream, wait until their sockets are closed, and revoke every token
        minted for the servers (idempotent)."""
        self._closed = True
        tasks = [s.task for s in self.servers.values() if s.task is not None]
        for server in self.servers.values():
            self._stop(server)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.tokens is not None:
            await self.tokens.aclose()
