"""Read-only monitoring credentials under JupyterHub: the ``custom:sysmon:read`` scope.

A hub token whose scopes hold ``custom:sysmon:read`` (declared by the hub's
``c.JupyterHub.custom_scopes``) may read this server's sysmon routes, and nothing
else: unlike ``access:servers`` it cannot run code here. See the fleet page, docs/fleet.md.

How it fits jupyterhub's single-user extension: its identity provider
(``JupyterHubIdentityProvider``) returns no user for a token without the server's
``access_scopes`` (``access:servers!server=<user>/<name>`` and ``!user=<user>``), so
every route refuses it, and logs "Not allowing user <name>" at warning level each time.
Only the sysmon handlers see :class:`ReaderIdentityProvider` instead (their
``identity_provider`` property). It looks at the explicit token (header, or URL on a
WebSocket; never a cookie) and asks the hub for its model through the same cache, with
the same key, as the hub's provider would (so an admin's request costs no extra call to
the hub). A token with the access scopes, and any request without such a token, go to
the hub's provider unchanged. A token the hub knows that lacks them, which the hub's
provider would refuse (logging that line per reader request), takes the reader path at
once: the hub's fresh answer about the token (asked without the hub provider's
five-minute cache) decides, and :class:`ReaderCache` shares that answer, admitting or
refusing, for ``reader_cache_seconds`` between every request and re-check of the same
token, and between concurrent ones: repeated or refused reader requests cost at most one
hub call per token per period, however many there are. The scope
required is each access scope with ``access:servers`` replaced by
``custom:sysmon:read`` (so ``!user=`` and ``!server=`` filters for *this* server are
honoured, and a filter for another user or server is not); ``check_scopes`` decides,
as the hub's own does. Anything else (no token, unknown token, hub error, no
``access:servers`` scope to derive from) admits nobody: the route answers 403.

Every other route of the server keeps the hub's provider and authorizer unchanged.
While connected, :func:`recheck_reader` re-asks the hub like any hub credential:
revoked gives 4401, the scope gone 4403.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth import User
from tornado import web

from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

__all__ = [
    "SYSMON_READ_SCOPE",
    "HubReader",
    "ReaderCache",
    "ReaderIdentityProvider",
    "admit_reader",
    "read_scopes",
    "recheck_reader",
    "with_readers",
]

log = logging.getLogger(__name__)

#: The custom scope of read-only monitoring; a hub declares it in ``custom_scopes``.
SYSMON_READ_SCOPE = "custom:sysmon:read"
_ACCESS = "access:servers"

#: Tokens :class:`ReaderCache` remembers at most (the oldest answers go first): made-up
#: tokens cannot grow the server's memory.
READER_CACHE_ENTRIES = 1024


class HubReader(User):
    """A hub user or service admitted to the sysmon routes by ``custom:sysmon:read``
    alone. ``hub_user`` is the hub's model of the token; ``granted`` the scopes that
    admitted it."""

    hub_user: dict[str, Any]
    granted: frozenset[str]

    def __init__(self, hub_user: dict[str, Any], granted: Iterable[str]) -> None:
        super().__init__(username=str(hub_user["name"]))
        self.hub_user = hub_user
        self.granted = frozenset(granted)


class ReaderCache:
    """The hub's fresh answer about a reader token (its model, or None: unknown), shared
    for ``ttl`` seconds by every request and re-check of that token, and by concurrent
    ones while the hub is asked (one call, however many wait for it). A failure to ask
    (hub unreachable) is never kept: the next request asks again. :meth:`shared` gives
    the same one-call-for-all to the hub provider's own (cached) look-up.

    Keyed by the token's SHA-256, at most :data:`READER_CACHE_ENTRIES` tokens.
    """

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = READER_CACHE_ENTRIES,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._answers: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._asking: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        #: calls made to the hub for fresh answers (for tests and the curious)
        self.calls = 0

    async def shared(self, key: tuple[str, ...], ask: Callable[[], Awaitable[Any]]) -> Any:
        """``await ask()``, once for every caller that comes with ``key`` while it runs."""
        asking = self._asking.get(key)
        if asking is None:
            asking = asyncio.ensure_future(ask())
            asking.add_done_callback(_retrieve)
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
            self._asking[key] = asking
        # shielded: a client that goes away does not cancel the others' answer
        return await asyncio.shield(asking)

    async def model(self, hub_auth: Any, token: str) -> dict[str, Any] | None:
        """The hub's model of ``token``, asked without the hub provider's cache at most
        once per ``ttl``."""
        key = token_key(token)
        answer = self._answers.get(key)
        if answer is not None and answer[0] > self._clock():
            return answer[1]
        model: dict[str, Any] | None = await self.shared(
            ("fresh", key), lambda: self._ask(hub_auth, token, key)
        )
        return model

    async def _ask(self, hub_auth: Any, token: str, key: str) -> dict[str, Any] | None:
        self.calls += 1
        found = await hub_auth.user_for_token(token, use_cache=False, sync=False)
        model = found if isinstance(found, dict) and found.get("name") else None
        if self.ttl > 0:
            self._answers.pop(key, None)
            while len(self._answers) >= self._max_entries:
                del self._answers[next(iter(self._answers))]  # the oldest answer
            self._answers[key] = (self._clock() + self.ttl, model)
        return model


def token_key(token: str) -> str:
    """What a token is remembered by: never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter may have gone away: the failure is still consumed, never reported as
    # "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def read_scopes(access_scopes: Iterable[str]) -> set[str]:
    """The read scopes that stand for this server's ``access:servers`` scopes:
    ``access:servers!server=bob/`` gives ``custom:sysmon:read!server=bob/``. An
    unfiltered ``access:servers`` is never derived from (it would admit every reader
    of every server) and other access scopes (services) give nothing."""
    scopes = set()
    for scope in access_scopes:
        name, sep, scope_filter = scope.partition("!")
        if name == _ACCESS and sep and scope_filter:
            scopes.add(f"{SYSMON_READ_SCOPE}!{scope_filter}")
    return scopes


async def admit_reader(hub_auth: Any, handler: Any, cache: ReaderCache) -> HubReader | None:
    """The reader behind ``handler``'s explicit token, or None (refused)."""
    token = hub_auth.get_token(handler, in_cookie=False)
    if not token:
        return None
    required = read_scopes(hub_auth.access_scopes)
    if not required:
        log.warning("sysmon: no access:servers scope to check %s against", SYSMON_READ_SCOPE)
        return None
    model = await cache.model(hub_auth, token)
    if model is None:
        return None
    granted = hub_auth.check_scopes(required, model)
    if not granted:
        raise web.HTTPError(
            403,
            f"{model.get('kind', 'user')} {model['name']} may not read this server:"
            f" it needs {_ACCESS} or {' or '.join(sorted(required))}",
        )
    return HubReader(model, granted)


class ReaderIdentityProvider:
    """The hub's identity provider for the sysmon routes, admitting readers too.

    Everything but :meth:`get_user` is the wrapped provider's.
    """

    def __init__(self, inner: Any, cache: ReaderCache) -> None:
        self._inner = inner
        self._cache = cache
        self.hub_auth = inner.hub_auth

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_user(self, handler: Any) -> Any:
        hub_auth = self.hub_auth
        token = hub_auth.get_token(handler, in_cookie=False)
        if token:
            # The hub's provider asks exactly this (its cache, its key) first, and for a
            # token without the access scopes refuses it: same decision, no log line.
            # Concurrent requests with one token share the call (the cache is empty
            # until the first answer comes).
            session_id = hub_auth.get_session_id(handler)
            model = await self._cache.shared(
                ("cached", session_id, token_key(token)),
                lambda: hub_auth.user_for_token(token, session_id=session_id, sync=False),
            )
            if (
                isinstance(model, dict)
                and model.get("name")
                and not hub_auth.check_scopes(hub_auth.access_scopes, model)
            ):
                return await admit_reader(hub_auth, handler, self._cache)
        return await ensure_async(self._inner.get_user(handler))


def with_readers(identity_provider: Any, cache: ReaderCache) -> Any:
    """``identity_provider`` for the sysmon routes: wrapped under JupyterHub (its
    ``hub_auth`` is JupyterHub's ``HubAuth``), unchanged otherwise: another provider that
    happens to have a ``hub_auth`` admits no reader. ``cache`` lives as long as the
    extension: it is what keeps reader requests from multiplying calls to the hub."""
    if not _is_jupyterhub_auth(getattr(identity_provider, "hub_auth", None)):
        return identity_provider
    return ReaderIdentityProvider(identity_provider, cache)


def _is_jupyterhub_auth(hub_auth: Any) -> bool:
    if hub_auth is None:
        return False
    try:
        from jupyterhub.services.auth import HubAuth
    except ImportError:
        return False
    return isinstance(hub_auth, HubAuth)


async def recheck_reader(
    hub_auth: Any, token: str, user: HubReader, cache: ReaderCache
) -> tuple[int, str] | None:
    """Ask the hub again, without its cache (through ``cache``: connections of one token
    share an answer), whether ``token`` still reads this server."""
    model = await cache.model(hub_auth, token)
    if model is None or model.get("name") != user.username:
        return (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")
    if not hub_auth.check_scopes(read_scopes(hub_auth.access_scopes), model):
        return (CLOSE_NOT_ADMIN, f"no longer holds {SYSMON_READ_SCOPE}")
    return None
