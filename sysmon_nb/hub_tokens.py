"""Per-server hub tokens: one short-lived credential per single-user server, narrowed to it.

A single-user server belongs to its user (JupyterHub's security model: the user can
replace the process), so whatever watches many servers must never send one of them a
credential that opens anything else. :class:`ServerTokens` mints, from one hub token
(the *minting token*, which only ever goes to the hub), one token per server through the
hub's REST API (``POST hub/api/users/<owner>/tokens`` with ``scopes`` and
``expires_in``), holding a single scope for that server alone:

- ``custom:sysmon:read!server=<user>/<name>`` when the minting token holds
  ``custom:sysmon:read`` covering that server (read-only: preferred);
- else ``access:servers!server=<user>/<name>`` when it holds ``access:servers`` covering
  it (an admin's token: the server then admits the admin as the admin);
- else nothing: that server is refused (:class:`NarrowingRefusedError`), nothing is sent.

The minted tokens are owned by the minting token's owner, or by ``token_owner``, a hub
user the minting token holds ``tokens`` for (how a service, which the hub mints no tokens
for, gets them); never by the server's user. The hub checks that the owner holds the
scope (:func:`minting_problem` says beforehand what a token lacks to mint at all).

Each token expires after ``lifetime`` seconds and is due for rotation at a random point
between :data:`ROTATE_FROM` and :data:`ROTATE_TO` of its life (:func:`rotation_time`),
which spreads the rotations of many servers out. :meth:`ServerTokens.rotate` mints the
next one, reconnects the streams that use the old one (anything :class:`Reconnecting`:
a :class:`~sysmon_nb.client.StatusClient` with a ``token_source``) and, once none uses
it, revokes it (``DELETE hub/api/users/<owner>/tokens/<id>``);
:meth:`ServerTokens.rotate_forever` does so for each token when it is due.
:meth:`ServerTokens.discard` and :meth:`ServerTokens.aclose` revoke. Every hub call made
here holds one slot of a semaphore (``max_calls``), so a thousand servers starting at
once cost at most that many calls in flight.

Errors::

    ClientError (sysmon_nb.client)
    ├── HubError                  the hub did not answer as asked (``code``: its HTTP
    │                             status, 599 when unreachable): retried later
    └── RefusedError
        └── NarrowingRefusedError the hub will not narrow this token (for one server,
                                  or at all): ``reason`` says what it needs
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from .client import RefusedError
from .hub_api import HubAPI, HubError

__all__ = [
    "ACCESS_SCOPE",
    "SYSMON_READ_SCOPE",
    "TOKEN_LIFETIME",
    "NarrowingRefusedError",
    "Reconnecting",
    "ServerToken",
    "ServerTokens",
    "holds",
    "minting_problem",
    "narrowed_scope",
    "rotation_time",
]

log = logging.getLogger("sysmon_nb.hub_tokens")

#: The read-only scope (declared by the hub's ``custom_scopes``).
SYSMON_READ_SCOPE = "custom:sysmon:read"
ACCESS_SCOPE = "access:servers"
#: Seconds a minted token lives, by default.
TOKEN_LIFETIME = 1800
#: A token is due for rotation between these shares of its life (picked at random).
ROTATE_FROM, ROTATE_TO = 0.5, 0.75
#: Seconds before a rotation that failed (the hub was unreachable) is tried again, at most.
RETRY_MAX = 30.0
#: Seconds :meth:`ServerTokens.aclose` waits for the hub to revoke what is left.
CLOSE_TIMEOUT = 30.0

ServerKey = tuple[str, str]


class NarrowingRefusedError(RefusedError):
    """The hub will not mint a token narrowed to this server from this token."""


# -- what a token may mint --------------------------------------------------------------


def holds(
    scopes: Iterable[str],
    name: str,
    *,
    user: str,
    server: str | None = None,
    groups: Iterable[str] | None = None,
) -> bool:
    """Whether ``scopes`` (a token's, as the hub's ``GET hub/api/user`` lists them) grant
    ``name`` on ``user``'s server ``server`` (``server=None``: on the user).

    Unfiltered, ``!user=<user>`` and ``!server=<user>/<server>`` count; ``!group=<g>``
    counts when ``groups`` (the user's, when known) holds ``g``; nothing else does.
    """
    member_of = set(groups or ())
    for scope in scopes:
        base, sep, scope_filter = scope.partition("!")
        if base != name:
            continue
        kind, _, value = scope_filter.partition("=")
        if (
            not sep
            or (kind == "user" and value == user)
            or (kind == "server" and server is not None and value == f"{user}/{server}")
            or (kind == "group" and value in member_of)
        ):
            return True
    return False


def narrowed_scope(
    scopes: Iterable[str], user: str, server: str, groups: Iterable[str] | None = None
) -> str | None:
    """The one scope a token minted for ``user``'s server ``server`` gets: read-only when
    ``scopes`` allow it, else access; None when ``scopes`` cover neither (pure)."""
    scopes = list(scopes)
    for name in (SYSMON_READ_SCOPE, ACCESS_SCOPE):
        if holds(scopes, name, user=user, server=server, groups=groups):
            return f"{name}!server={user}/{server}"
    return None


def minting_problem(model: Mapping[str, Any], token_owner: str | None = None) -> str | None:
    """What the token whose hub model (``GET hub/api/user``) is ``model`` lacks to mint
    per-server tokens owned by ``token_owner`` (default: the token's own user); None
    when nothing."""
    kind, name = str(model.get("kind") or "user"), str(model.get("name") or "")
    scopes = list(model.get("scopes") or ())
    if token_owner is None:
        if kind != "user":
            return (
                f"the token of {kind} {name!r} cannot mint the per-server tokens the fleet"
                " sends to each server: the hub mints tokens for users only. Use a hub"
                " user's token, or name a hub user as token_owner (one holding"
                f" {SYSMON_READ_SCOPE}) and give this {kind} tokens!user=<that user>"
            )
        token_owner = name
    own_groups = model.get("groups") if token_owner == name and kind == "user" else None
    if not holds(scopes, "tokens", user=token_owner, groups=own_groups):
        return (
            f"the token of {kind} {name!r} cannot mint the per-server tokens the fleet sends"
            f" to each server: it lacks tokens!user={token_owner} (a token created with"
            " explicit scopes must list it)"
        )
    return None


def rotation_time(
    minted_at: float, lifetime: float, rng: Callable[[], float] = random.random
) -> float:
    """When a token minted at ``minted_at`` (monotonic s) is due for rotation: a random
    point between :data:`ROTATE_FROM` and :data:`ROTATE_TO` of ``lifetime`` (pure)."""
    return minted_at + lifetime * (ROTATE_FROM + (ROTATE_TO - ROTATE_FROM) * rng())


def retry_delay(now: float, expires_at: float) -> float:
    """Seconds before a failed rotation is tried again: a quarter of what is left of the
    old token's life, between 1 s and :data:`RETRY_MAX` (pure)."""
    return min(RETRY_MAX, max(1.0, (expires_at - now) / 4))


# -- the tokens -------------------------------------------------------------------------


@dataclass
class ServerToken:
    """One minted token: the server it is for, its one scope, and its times (monotonic)."""

    server: ServerKey
    scope: str
    id: str
    minted_at: float
    rotate_at: float
    expires_at: float
    token: str = field(repr=False)


class Reconnecting(Protocol):
    """A stream that uses a server's token: what :meth:`ServerTokens.rotate` moves."""

    #: The token of the connection opening or open now (None between connections).
    credential: str | None

    async def reconnect(self) -> None:
        """Close the current connection and open the next one with a fresh token."""


class ServerTokens:
    """The per-server tokens minted from one hub token (see the module docstring).

    ``owner`` is the minting token's hub model (``GET hub/api/user``: its name, kind,
    groups and scopes). ``clock`` is monotonic seconds; ``rng`` picks rotation times.
    """

    def __init__(
        self,
        hub: HubAPI,
        owner: Mapping[str, Any],
        *,
        token_owner: str | None = None,
        lifetime: float = TOKEN_LIFETIME,
        max_calls: int = 16,
        note: str = "sysmon fleet",
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        problem = minting_problem(owner, token_owner)
        if problem is not None:
            raise NarrowingRefusedError(problem)
        if lifetime < 2:
            raise ValueError(f"lifetime must be at least 2 s, got {lifetime}")
        self.hub = hub
        self.owner = str(token_owner or owner["name"])
        self._scopes = tuple(owner.get("scopes") or ())
        self.lifetime = lifetime
        self.note = note
        self._clock = clock
        self._rng = rng
        self._calls = asyncio.Semaphore(max(1, max_calls))
        self._current: dict[ServerKey, ServerToken] = {}
        #: Replaced tokens not revoked yet (by id).
        self._retiring: dict[str, ServerToken] = {}
        #: Every token minted and not revoked yet (by id): what :meth:`aclose` revokes.
        self._issued: dict[str, ServerToken] = {}
        #: Mint calls in flight: a mint whose caller was cancelled still gets its answer,
        #: so that the token the hub made is known and revoked.
        self._minting: set[asyncio.Future[ServerToken]] = set()
        self._closed = False
        self._locks: dict[ServerKey, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set whenever the next rotation time may have changed.
        self.changed = asyncio.Event()
        self._failing = False
        #: Counts, for tests and logs.
        self.minted = self.revoked = self.rotated = 0

    def __repr__(self) -> str:  # never shows a token
        return f"<ServerTokens of {self.owner!r}: {len(self._current)} servers>"

    def scope_for(self, key: ServerKey, groups: Iterable[str] | None = None) -> str:
        """The scope of ``key``'s token; :class:`NarrowingRefusedError` when none."""
        scope = narrowed_scope(self._scopes, key[0], key[1], groups)
        if scope is None:
            raise NarrowingRefusedError(
                f"the fleet's token may not read {key[0]}/{key[1]}: it holds neither"
                f" {SYSMON_READ_SCOPE} nor {ACCESS_SCOPE} for it"
            )
        return scope

    def current(self, key: ServerKey) -> ServerToken | None:
        return self._current.get(key)

    def held(self) -> list[ServerToken]:
        """Every token not revoked yet: one per server, those being replaced, and any
        whose server was dropped while it was being minted."""
        return list(self._issued.values())

    async def get(self, key: ServerKey, groups: Iterable[str] | None = None) -> ServerToken:
        """``key``'s token, minted now when it has none or its token has expired."""
        async with self._lock(key):
            token = self._current.get(key)
            if token is not None and self._clock() < token.expires_at:
                return token
            fresh = self._current[key] = await self._mint(key, groups)
        if token is not None:
            self._revoke_soon(token)
        return fresh

    def discard(self, key: ServerKey) -> None:
        """Forget ``key``'s token now (the next :meth:`get` mints another) and revoke it
        in the background."""
        token = self._current.pop(key, None)
        self._locks.pop(key, None)
        if token is not None:
            self._revoke_soon(token)

    def take_due(self) -> list[ServerToken]:
        """The tokens due for rotation now, each handed out once (its ``rotate_at`` is
        set again when its rotation fails and should be tried again)."""
        now = self._clock()
        due = [t for t in self._current.values() if t.rotate_at <= now]
        for token in due:
            token.rotate_at = math.inf
        return due

    def next_rotation_in(self) -> float | None:
        """Seconds until the next token is due (0 when one is); None when none is."""
        times = [t.rotate_at for t in self._current.values() if math.isfinite(t.rotate_at)]
        return max(0.0, min(times) - self._clock()) if times else None

    async def renew(
        self, key: ServerKey, groups: Iterable[str] | None = None
    ) -> tuple[ServerToken, ServerToken] | None:
        """Replace ``key``'s token with a new one: (old, new), or None when it has none
        or the hub would not mint. The caller moves its connections to the new token,
        then :meth:`revoke` the old (:meth:`aclose` revokes it otherwise).

        When the hub cannot be reached the old token stays, due again after
        :func:`retry_delay`; when it refuses, the old token stays until it expires."""
        async with self._lock(key):
            old = self._current.get(key)
            if old is None:
                return None
            try:
                new = await self._mint(key, groups)
            except NarrowingRefusedError as err:
                log.warning("sysmon: cannot renew the token of %s/%s: %s", *key, err.reason)
                return None
            except HubError:
                now = self._clock()
                old.rotate_at = now + retry_delay(now, old.expires_at)
                self.changed.set()
                return None
            self._current[key] = new
            self._retiring[old.id] = old
            return old, new

    async def rotate(
        self,
        key: ServerKey,
        clients: Iterable[Reconnecting],
        groups: Iterable[str] | None = None,
        move_timeout: float = 60.0,
    ) -> bool:
        """Renew ``key``'s token, reconnect ``clients`` (the streams that use it) so they
        take the new one, wait until none still uses the old one (at most
        ``move_timeout`` s), then revoke it. False when the token was not renewed."""
        renewed = await self.renew(key, groups)
        if renewed is None:
            return False
        old, _ = renewed
        clients = list(clients)
        for client in clients:
            await client.reconnect()
        deadline = self._clock() + min(move_timeout, max(0.0, old.expires_at - self._clock()))
        # A connection that was opening with the old token when the clients were told to
        # reconnect is closed as soon as it opens: a short, bounded wait for that (a
        # client's credential has no event to wait on).
        while self._clock() < deadline:
            if not any(c.credential == old.token for c in clients):
                break
            await asyncio.sleep(0.05)
        await self.revoke(old)
        self.rotated += 1
        return True

    async def rotate_forever(
        self,
        clients_of: Callable[[ServerKey], Iterable[Reconnecting]],
        groups_of: Callable[[ServerKey], Iterable[str] | None] = lambda key: None,
    ) -> None:
        """Rotate each token when it is due, until cancelled (rotations run side by side,
        their hub calls bounded by ``max_calls``)."""
        rotations: set[asyncio.Task[bool]] = set()
        try:
            while True:
                self.changed.clear()
                for token in self.take_due():
                    key = token.server
                    task = asyncio.ensure_future(self.rotate(key, clients_of(key), groups_of(key)))
                    rotations.add(task)
                    task.add_done_callback(rotations.discard)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), self.next_rotation_in())
        finally:
            for task in rotations:
                task.cancel()
            await asyncio.gather(*rotations, return_exceptions=True)

    async def revoke(self, token: ServerToken) -> None:
        """Revoke ``token`` at the hub; one that is gone already is fine, and a failure is
        logged (the token expires anyway)."""
        self._retiring.pop(token.id, None)
        if self._issued.pop(token.id, None) is None:
            return  # revoked already, or being revoked by another call
        path = f"users/{quote(self.owner, safe='')}/tokens/{quote(token.id, safe='')}"
        try:
            async with self._calls:
                await self.hub.call("DELETE", path)
        except HubError as err:
            if err.code != 404:
                log.warning("sysmon: could not revoke a token (it expires anyway): %s", err)
                return
        self.revoked += 1

    async def aclose(self) -> None:
        """Revoke every token minted, those whose mint was still in flight included
        (bounded by :data:`CLOSE_TIMEOUT`); no token is minted afterwards. Idempotent."""
        self._closed = True
        if self._minting:
            await asyncio.wait(set(self._minting), timeout=CLOSE_TIMEOUT)
        held = list(self._issued.values())
        self._current.clear()
        self._retiring.clear()
        pending = [*self._tasks, *(asyncio.ensure_future(self.revoke(t)) for t in held)]
        if pending:
            _, late = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            if late:
                log.warning("sysmon: the hub did not revoke %d tokens in time", len(late))

    # -- internals -----------------------------------------------------------------------

    def _lock(self, key: ServerKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _mint(self, key: ServerKey, groups: Iterable[str] | None) -> ServerToken:
        if self._closed:
            raise HubError("the fleet is closing: no more tokens", 599)
        call = asyncio.ensure_future(self._post_token(key, groups))
        self._minting.add(call)
        call.add_done_callback(self._minting.discard)
        call.add_done_callback(_retrieve)
        # Shielded: cancelling the caller does not lose the hub's answer (the token).
        return await asyncio.shield(call)

    async def _post_token(self, key: ServerKey, groups: Iterable[str] | None) -> ServerToken:
        scope = self.scope_for(key, groups)
        body = {
            "scopes": [scope],
            "expires_in": math.ceil(self.lifetime),
            "note": f"{self.note}: {key[0]}/{key[1]}",
        }
        started = self._clock()
        try:
            async with self._calls:
                model = await self.hub.call(
                    "POST", f"users/{quote(self.owner, safe='')}/tokens", body=body
                )
        except HubError as err:
            if err.code in (400, 401, 403, 404):
                raise NarrowingRefusedError(
                    f"the hub will not mint a token for {key[0]}/{key[1]}: {err.reason}", err.code
                ) from None
            if not self._failing:
                log.warning("sysmon: cannot mint per-server tokens: %s", err.reason)
                self._failing = True
            raise
        if self._failing:
            log.info("sysmon: minting per-server tokens again")
            self._failing = False
        if not isinstance(model, dict) or not model.get("token") or not model.get("id"):
            raise HubError("the hub's token answer has no token or id", 502)
        self.minted += 1
        self.changed.set()
        token = ServerToken(
            server=key,
            scope=scope,
            id=str(model["id"]),
            minted_at=started,
            rotate_at=rotation_time(started, self.lifetime, self._rng),
            expires_at=started + self.lifetime,
            token=str(model["token"]),
        )
        self._issued[token.id] = token
        return token

    def _revoke_soon(self, token: ServerToken) -> None:
        task = asyncio.ensure_future(self.revoke(token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A mint whose caller went away: its error (if any) is the caller's, not the loop's.
    if not future.cancelled():
        future.exception()
