"""The admin policy, for each kind of identity jupyter_server can hand us."""

from __future__ import annotations

from typing import Any

import pytest
from jupyter_server.auth import User

from jupyter_server_ext.auth import AdminPolicy


class HubUser(User):
    """Shaped like jupyterhub.singleuser.extension.JupyterHubUser."""

    def __init__(self, hub_user: dict[str, Any]) -> None:
        self.hub_user = hub_user
        super().__init__(username=hub_user["name"])


class RoleUser(User):
    """An identity that carries roles, as a JWT identity provider produces."""

    def __init__(self, username: str, roles: list[str]) -> None:
        self.roles = roles
        super().__init__(username=username)


def policy(**kwargs: Any) -> AdminPolicy:
    base: dict[str, Any] = {
        "admin_users": (),
        "admin_groups": (),
        "admin_role": "admin",
        "allow_owner": False,
        "hub_owner": None,
    }
    base.update(kwargs)
    return AdminPolicy.from_config(**base)


def test_owner_of_a_plain_server() -> None:
    owner = User(username="6f3a")
    assert policy(allow_owner=True).check(owner).allowed
    denied = policy(allow_owner=False).check(owner)
    assert not denied.allowed
    assert "not an administrator" in denied.reason


def test_admin_users_by_name() -> None:
    assert policy(admin_users={"alice"}).check(User(username="alice")).allowed
    assert not policy(admin_users={"alice"}).check(User(username="bob")).allowed


@pytest.mark.parametrize(
    ("hub_user", "allowed"),
    [
        ({"name": "root", "admin": True, "groups": []}, True),
        ({"name": "ops1", "admin": False, "groups": ["ops"]}, True),
        ({"name": "bob", "admin": False, "groups": ["students"]}, False),
        ({"name": "eve", "admin": "yes", "groups": None}, False),  # only a real true counts
        ({"name": "owner", "admin": False, "groups": []}, False),  # allow_owner is off
    ],
)
def test_jupyterhub_users(hub_user: dict[str, Any], allowed: bool) -> None:
    rules = policy(admin_groups={"ops"}, hub_owner="owner")
    assert rules.check(HubUser(hub_user)).allowed is allowed


def test_hub_owner_only_when_allowed_and_only_the_owner() -> None:
    rules = policy(allow_owner=True, hub_owner="owner")
    assert rules.check(HubUser({"name": "owner", "admin": False})).allowed
    # a hub user is never "the holder of the server's token", whatever allow_owner says
    assert not rules.check(HubUser({"name": "guest", "admin": False})).allowed


def test_roles() -> None:
    rules = policy(admin_role="sysadmin")
    assert rules.check(RoleUser("carol", ["reader", "sysadmin"])).allowed
    assert not rules.check(RoleUser("dave", ["admin"])).allowed
    # a role-bearing identity is not the owner, even with allow_owner on
    assert not policy(allow_owner=True).check(RoleUser("dave", [])).allowed


def test_nobody() -> None:
    assert not policy(allow_owner=True).check(None).allowed
