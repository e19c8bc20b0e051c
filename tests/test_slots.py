"""Fair shares of the WebSocket connections (jupyter_server_ext/slots.py), pure: the
limits and their order. Through a server: tests/test_hub_scopes.py (readers and admins
of a hub-shaped server) and tests/test_handlers.py (max_connections)."""

from __future__ import annotations

from jupyter_server.auth import User

from jupyter_server_ext.slots import ConnectionSlots, Refusal, Slot, identity_of


def take(slots: ConnectionSlots, identity: str, admin: bool) -> Slot:
    slot = slots.take(identity, admin)
    assert isinstance(slot, Slot), slot
    return slot


def refusal(slots: ConnectionSlots, identity: str, admin: bool) -> Refusal:
    answer = slots.take(identity, admin)
    assert isinstance(answer, Refusal), answer
    return answer


def test_readers_get_their_share_and_admins_the_rest() -> None:
    slots = ConnectionSlots(total=10, per_identity=10, non_admin_share=0.3)
    readers = [take(slots, f"user:r{n}", admin=False) for n in range(3)]
    assert refusal(slots, "user:r9", admin=False).status == 429
    admins = [take(slots, f"user:a{n}", admin=True) for n in range(7)]  # every other slot
    full = refusal(slots, "user:a9", admin=True)
    assert full.status == 503 and "max 10" in full.reason
    slots.release(readers[0])
    take(slots, "user:a9", admin=True)  # an admin may take any free slot
    assert refusal(slots, "user:r9", admin=False).status == 503  # full
    slots.release(admins[0])
    take(slots, "user:r9", admin=False)  # back within the readers' share
    assert refusal(slots, "user:r8", admin=False).status == 429


def test_one_identity_holds_at_most_its_cap_admins_too() -> None:
    slots = ConnectionSlots(total=100, per_identity=2, non_admin_share=0.5)
    first = take(slots, "user:root", admin=True)
    take(slots, "user:root", admin=True)
    over = refusal(slots, "user:root", admin=True)
    assert over.status == 429 and "'root'" in over.reason and "at most 2" in over.reason
    take(slots, "service:root", admin=True)  # a service of the same name is another identity
    slots.release(first)
    take(slots, "user:root", admin=True)
    assert slots.held == 3


def test_a_share_of_zero_keeps_every_slot_for_admins() -> None:
    slots = ConnectionSlots(total=3, per_identity=3, non_admin_share=0.0)
    assert "kept for administrators" in refusal(slots, "user:monitor", admin=False).reason
    for _ in range(3):
        take(slots, "user:root", admin=True)


def test_releasing_gives_every_count_back() -> None:
    slots = ConnectionSlots(total=4, per_identity=4, non_admin_share=0.5)
    taken = [take(slots, "user:m", admin=False), take(slots, "user:m", admin=False)]
    for slot in taken:
        slots.release(slot)
    assert slots.held == 0
    for _ in range(2):
        take(slots, "user:m", admin=False)


def test_identities() -> None:
    class HubUser(User):
        def __init__(self, hub_user: dict[str, str]) -> None:
            self.hub_user = hub_user
            super().__init__(username=hub_user["name"])

    assert identity_of(HubUser({"name": "grafana", "kind": "service"}), False) == (
        "service:grafana"
    )
    assert identity_of(HubUser({"name": "bob"}), False) == "user:bob"
    # token auth makes up a username per request: the owner is one identity all the same
    assert identity_of(User(username="a1"), True) == identity_of(User(username="b2"), True)
    # a multi-user provider's plain users are people of their own
    assert identity_of(User(username="a1"), False) != identity_of(User(username="b2"), False)
