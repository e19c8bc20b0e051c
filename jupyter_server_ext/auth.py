"""Who is an administrator: the admin policy applied on top of jupyter_server's auth.

jupyter_server has already authenticated the request (identity provider) and its
authorizer has allowed ``read`` on the ``sysmon`` resource; this module decides
whether that user may watch the whole machine. See DESIGN.md, "Who may connect".

A user is an administrator when any of these holds:

- their username is in ``admin_users``;
- they are a JupyterHub user whose hub model says ``admin``, or who belongs to one
  of ``admin_groups`` (read from ``user.hub_user``; jupyterhub is never imported);
- they carry roles (a JWT identity) and ``admin_role`` is among them;
- ``allow_owner`` is on and they own the server: outside JupyterHub, anyone the
  server's own token/password auth admits (a plain ``jupyter_server.auth.User``);
  inside JupyterHub, the hub user the server was spawned for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth import User


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

    @classmethod
    def from_config(
        cls,
        admin_users: Iterable[str],
        admin_groups: Iterable[str],
        admin_role: str,
        allow_owner: bool,
        hub_owner: str | None,
    ) -> AdminPolicy:
        return cls(
            frozenset(admin_users), frozenset(admin_groups), admin_role, allow_owner, hub_owner
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
        if self.allow_owner and type(user) is User:
            return Decision(True, "authenticated with this server's own credentials")
        return Decision(
            False,
            f"user {name!r} is not an administrator; system status is only for"
            " administrators of this server",
        )
