"""Who is an administrator: the admin policy applied on top of jupyter_server's auth.

jupyter_server has already authenticated the request (identity provider) and its
authorizer has allowed ``read`` on the ``sysmon`` resource; this module decides
whether that user may watch the whole machine. See the security page, docs/security.md.

A user is an administrator when any of these holds:

- their username is in ``admin_users``;
- they are a JupyterHub user whose hub model says ``admin``, or who belongs to one
  of ``admin_groups`` (read from ``user.hub_user``; jupyterhub is never imported);
- they carry roles (a JWT identity) and ``admin_role`` is among them;
- ``allow_owner`` is on and they own the server: outside JupyterHub, anyone the
  server's own token/password auth admits (a plain ``jupyter_server.auth.User``), but
  only with jupyter_server's single-user identity providers (and our JWT provider's
  fallback to them), where a plain ``User`` can only be the server's owner; inside
  JupyterHub, the hub user the server was spawned for.

Admission is checked once, before the upgrade; :class:`CredentialsWatcher` keeps it
true while a connection lasts (JWT expiry, JupyterHub re-checks). A re-check that
cannot reach the hub is retried for ``hub_outage_grace`` seconds, then the connection
closes with 1013 (try again later: the client reconnects once the hub answers); any
other failure closes it with 1011. The JWT identity provider lives in
:mod:`jupyter_server_ext.jwt_auth` and is importable from here.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth import IdentityProvider, User
from jupyter_server.auth.identity import PasswordIdentityProvider
from tornado import web
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from sysmon_nb.protocol import (
    CLOSE_CREDENTIALS_EXPIRED,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NOT_ADMIN,
    quote,
)

from .errors import InvalidCredentials
from .hub_scopes import HubReader, ReaderCache, recheck_reader
from .jwt_auth import JWTIdentityProvider, JWTUser

__all__ = [
    "CLOSE_TRY_AGAIN_LATER",
    "AdminPolicy",
    "CredentialsWatcher",
    "Decision",
    "InvalidCredentials",
    "JWTIdentityProvider",
    "JWTUser",
    "owner_rule_applies",
    "watch_credentials",
]

#: The identity providers under which a plain ``User`` can only be the server's owner
#: (whoever holds its token or password). Exactly these classes: a subclass may return
#: plain ``User`` objects for many people.
SINGLE_USER_PROVIDERS: tuple[type, ...] = (
    IdentityProvider,
    PasswordIdentityProvider,
    JWTIdentityProvider,
)


def owner_rule_applies(provider: object) -> bool:
    """Whether a plain ``User`` from ``provider`` is the server's owner."""
    return type(provider) in SINGLE_USER_PROVIDERS


log = logging.getLogger(__name__)

#: WebSocket close code "try again later" (RFC 6455 registry): the credentials could not
#: be re-checked for ``hub_outage_grace`` seconds. Not a verdict on the user (that is
#: 4401/4403, after which clients stop), not a fault of the server (1011): the client
#: reconnects with its backoff, and is admitted again once the hub vouches for it.
CLOSE_TRY_AGAIN_LATER = 1013

#: Characters of an error from the hub quoted in a log line.
LOGGED_ERROR_CHARS = 200

#: A re-check's verdict: None to keep the connection, or (close code, reason).
Verdict = tuple[int, str] | None


@dataclass(frozen=True)
class Decision:
    """The policy's verdict; ``reason`` is fit to show the user."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class AdminPolicy:
    """The configured admin rules; ``check(user)`` applies them."""

    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    admin_role: str = "admin"
    allow_owner: bool = True
    hub_owner: str | None = None
    #: whether a plain ``User`` is the owner: see :func:`owner_rule_applies`
    single_user_provider: bool = True

    @classmethod
    def from_config(
        cls,
        admin_users: Iterable[str],
        admin_groups: Iterable[str],
        admin_role: str,
        allow_owner: bool,
        hub_owner: str | None,
        single_user_provider: bool = True,
    ) -> AdminPolicy:
        return cls(
            frozenset(admin_users),
            frozenset(admin_groups),
            admin_role,
            allow_owner,
            hub_owner,
            single_user_provider,
        )

    def check(self, user: Any) -> Decision:
        """Decide whether ``user`` (a jupyter_server ``User``) is an administrator."""
        if user is None:
            return Decision(False, "not authenticated")
        name = getattr(user, "username", None) or ""
        if name in self.admin_users:
            return Decision(True, f"{name!r} is in admin_users")
        hub_user = getattr(user, "hub_user", None)
        if isinstance(hub_user, dict):
            if hub_user.get("admin") is True:
                return Decision(True, f"{name!r} is a JupyterHub admin")
            groups = set(hub_user.get("groups") or ())
            if groups & self.admin_groups:
                return Decision(True, f"{name!r} is in an admin group")
            if self.allow_owner and self.hub_owner is not None and name == self.hub_owner:
                return Decision(True, f"{name!r} owns this server")
        roles = getattr(user, "roles", None)
        if roles is not None and self.admin_role in roles:
            return Decision(True, f"{name!r} has the {self.admin_role!r} role")
        if self.allow_owner and self.single_user_provider and type(user) is User:
            return Decision(True, "authenticated with this server's own credentials")
        return Decision(
            False,
            f"user {quote(name, 80)!r} is not an administrator; system status is only for"
            " administrators of this server",
        )


class CredentialsWatcher:
    """Closes one connection when its credentials stop admitting it.

    ``close(code, reason)`` is called at most once: with 4401 at ``expires_at`` (unix
    s, read on ``clock``, the wall clock by default), or with the verdict of
    ``revalidate()``, awaited every ``interval`` seconds; with 1013 once ``revalidate``
    has found the hub unreachable for ``grace`` seconds (on the event loop's clock).
    Call :meth:`start` once the connection is open (on the event loop) and
    :meth:`stop` when it closes; ``stop`` is idempotent.
    """

    def __init__(
        self,
        close: Callable[[int, str], object],
        expires_at: float | None = None,
        revalidate: Callable[[], Awaitable[Verdict]] | None = None,
        interval: float = 60.0,
        log: logging.Logger | logging.LoggerAdapter[Any] = log,
        grace: float = 120.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.expires_at = expires_at
        self.log = log
        self._close = close
        self._revalidate = revalidate
        self._interval = interval
        self._grace = grace
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.expires_at is not None:
            self._expire()
        if self._revalidate is not None and self._interval > 0 and not self._done:
            self._task = loop.create_task(self._recheck_forever())

    def stop(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _expire(self) -> None:
        # Re-armed until the wall clock says exp has come: loop timers may fire a hair
        # early, and the wall clock may have been stepped since the timer was set.
        assert self.expires_at is not None
        remaining = self.expires_at - (self._clock() if self._clock else time.time())
        if remaining > 0:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._expire)
            return
        self._timer = None
        self._finish(CLOSE_CREDENTIALS_EXPIRED, "credentials expired")

    def _finish(self, code: int, reason: str) -> None:
        if self._done:
            return
        self.stop()
        self._close(code, reason)

    async def _recheck_forever(self) -> None:
        assert self._revalidate is not None
        loop = asyncio.get_running_loop()
        unreachable_since: float | None = None
        delay = self._interval
        while not self._done:
            await asyncio.sleep(delay)
            delay = self._interval
            try:
                verdict = await self._revalidate()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not hub_unreachable(err):
                    # Not a verdict on the user, and not a hub we could not reach: fail
                    # closed rather than keep someone connected who may have lost access.
                    self.log.error(
                        "sysmon: closing with 1011: the credentials re-check failed",
                        exc_info=err,
                    )
                    self._finish(CLOSE_INTERNAL_ERROR, "could not re-check credentials")
                    return
                # The hub being briefly unreachable (a restart) says nothing about the
                # user; try again rather than drop every admin at once. But not for
                # ever: a revoked admin must not stream through a whole outage.
                now = loop.time()
                if unreachable_since is None:
                    unreachable_since = now
                    self.log.warning(
                        "sysmon: could not reach the hub to re-check credentials (%s); "
                        "retrying every %g s, closing after %g s without an answer",
                        quote(str(err), LOGGED_ERROR_CHARS),
                        self._interval,
                        self._grace,
                    )
                waited = now - unreachable_since
                if waited >= self._grace:
                    self.log.warning(
                        "sysmon: closing with 1013: the hub has not answered a credentials "
                        "re-check for %.0f s (hub_outage_grace)",
                        waited,
                    )
                    self._finish(
                        CLOSE_TRY_AGAIN_LATER, "cannot re-check credentials: hub unreachable"
                    )
                    return
                delay = min(self._interval, self._grace - waited)
                continue
            if unreachable_since is not None:
                self.log.info("sysmon: reached the hub again; credentials re-checked")
                unreachable_since = None
            if verdict is not None:
                self._finish(*verdict)


def hub_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the hub could not be reached (retry), as opposed to any other
    failure of a re-check (close). JupyterHub's ``HubAuth`` reports a failed connection
    as HTTP 500 "Failed to connect to Hub API" and a failing hub as 502."""
    if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror, StreamClosedError)):
        return True
    if isinstance(err, HTTPClientError):  # 599: no answer at all
        return err.code == 599 or err.code in (502, 503, 504)
    if isinstance(err, web.HTTPError):
        if err.status_code in (502, 503, 504):
            return True
        return err.status_code == 500 and (err.log_message or "").startswith(
            "Failed to connect to Hub API"
        )
    return False


def watch_credentials(
    handler: Any,
    policy: AdminPolicy,
    interval: float,
    readers: ReaderCache,
    grace: float = 120.0,
) -> CredentialsWatcher:
    """The watcher for an admitted WebSocket ``handler``: its JWT's ``exp``, or under
    JupyterHub a re-check of its hub token every ``interval`` s (readers' through
    ``readers``), closing after ``grace`` s of an unreachable hub."""
    user = handler.current_user
    expires_at = getattr(user, "expires_at", None)
    revalidate = None
    hub_auth = getattr(handler.identity_provider, "hub_auth", None)
    if hub_auth is not None and isinstance(getattr(user, "hub_user", None), dict):
        get_token = getattr(hub_auth, "get_token", None)
        token = get_token(handler) if callable(get_token) else None
        if token:

            async def revalidate() -> Verdict:
                return await recheck_hub_user(hub_auth, token, user, policy, readers)

        else:
            handler.log.warning("sysmon: no hub token to re-check for %s", user.username)
    return CredentialsWatcher(
        handler.close, expires_at, revalidate, interval, handler.log, grace=grace
    )


async def recheck_hub_user(
    hub_auth: Any,
    token: str,
    user: Any,
    policy: AdminPolicy,
    readers: ReaderCache | None = None,
) -> Verdict:
    """Ask the hub again, bypassing its cache, whether ``token`` still admits ``user``
    (a reader's answer is shared through ``readers``, see :class:`ReaderCache`)."""
    if isinstance(user, HubReader):
        return await recheck_reader(hub_auth, token, user, readers or ReaderCache(0.0))
    model = await hub_auth.user_for_token(token, use_cache=False, sync=False)
    if not model or model.get("name") != user.username:
        return (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")
    if not hub_auth.check_scopes(hub_auth.access_scopes, model):
        return (CLOSE_NOT_ADMIN, "no longer allowed on this server")
    fresh = copy.copy(user)
    fresh.hub_user = model
    if not policy.check(fresh).allowed:
        return (CLOSE_NOT_ADMIN, "no longer an administrator")
    return None
