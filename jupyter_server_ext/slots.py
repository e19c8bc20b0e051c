"""Fair shares of sysmon's WebSocket connections: who may take the next one.

Three limits, checked in this order when an admitted client asks to upgrade:

1. one identity (a hub user or service, a JWT subject, the server's owner) holds at
   most ``per_identity`` connections -> HTTP 429;
2. non-administrators (hub readers with ``custom:sysmon:read``) hold at most
   ``non_admin`` connections together, so that the rest stays free for administrators
   however many reader connections are opened -> HTTP 429;
3. everybody together holds at most ``total`` -> HTTP 503 (the server is full).

Pure bookkeeping: no I/O, no clock. The handler takes a :class:`Slot` before the
upgrade and gives it back exactly once when the connection ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth import User

from sysmon_nb.protocol import quote

__all__ = ["ConnectionSlots", "Refusal", "Slot", "identity_of"]

#: Characters of a name quoted in a refusal.
NAME_CHARS = 80


@dataclass(frozen=True, eq=False)
class Slot:
    """One connection's place: whose it is, and whether it counts as an admin's."""

    identity: str
    admin: bool


@dataclass(frozen=True)
class Refusal:
    """Why there is no slot: the HTTP status and a reason fit to show the client."""

    status: int
    reason: str


def identity_of(user: Any, single_user_provider: bool) -> str:
    """The key one identity's connections are counted under: a hub model's kind
    (``user`` or ``service``) and name, else the username; under jupyter_server's
    single-user providers every plain ``User`` is the owner (token auth makes up a new
    username per request that sets no cookie), so they are counted as one."""
    if single_user_provider and type(user) is User:
        return "owner:the server's owner"
    name = str(getattr(user, "username", "") or "")
    hub_user = getattr(user, "hub_user", None)
    kind = hub_user.get("kind") if isinstance(hub_user, dict) else None
    return f"{kind or 'user'}:{name}"


class ConnectionSlots:
    """The connections held, by identity and by kind, against the three limits."""

    def __init__(self, total: int, per_identity: int, non_admin_share: float) -> None:
        self.total = total
        self.per_identity = per_identity
        #: most connections non-administrators may hold together (rounded down)
        self.non_admin = int(total * non_admin_share)
        self._by_identity: Counter[str] = Counter()
        self._held = 0
        self._non_admin_held = 0

    @property
    def held(self) -> int:
        return self._held

    def take(self, identity: str, admin: bool) -> Slot | Refusal:
        """A slot for one more connection of ``identity``, or why not."""
        who = quote(identity.partition(":")[2] or identity, NAME_CHARS)
        if self._by_identity[identity] >= self.per_identity:
            return Refusal(
                429,
                f"too many sysmon connections for {who!r}: at most {self.per_identity} per"
                " identity (max_connections_per_identity); close one and try again",
            )
        if not admin and self._non_admin_held >= self.non_admin:
            return Refusal(
                429,
                f"read-only connections hold their whole share of this server ({self.non_admin}"
                f" of {self.total}, non_admin_share); the rest is kept for administrators",
            )
        if self._held >= self.total:
            return Refusal(503, f"too many sysmon connections (max {self.total})")
        self._by_identity[identity] += 1
        self._held += 1
        if not admin:
            self._non_admin_held += 1
        return Slot(identity, admin)

    def release(self, slot: Slot) -> None:
        """Give ``slot`` back; call once per slot taken."""
        left = self._by_identity[slot.identity] - 1
        if left > 0:
            self._by_identity[slot.identity] = left
        else:
            del self._by_identity[slot.identity]
        self._held -= 1
        if not slot.admin:
            self._non_admin_held -= 1
