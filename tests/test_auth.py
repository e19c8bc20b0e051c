"""The admin policy, for each kind of identity jupyter_server can hand us."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from jupyter_server.auth import User

from jupyter_server_ext import auth as auth_module
from jupyter_server_ext.auth import AdminPolicy, CredentialsWatcher, recheck_hub_user
from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN


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


# -- keeping admission true while connected ---------------------------------------------


class Closes:
    """Records what a watcher asks the connection to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, code: int, reason: str) -> None:
        self.calls.append((code, reason))


async def settle(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_watcher_closes_once_with_4401_at_expiry() -> None:
    async def scenario() -> float:
        close = Closes()
        watcher = CredentialsWatcher(close, expires_at=time.time() + 0.3)
        watcher.start()
        await settle(lambda: close.calls)
        closed_at = time.time()
        watcher.stop()  # idempotent after it fired
        await asyncio.sleep(0.1)
        assert close.calls == [(CLOSE_CREDENTIALS_EXPIRED, "credentials expired")]
        return closed_at - watcher.expires_at  # type: ignore[operator]

    late = asyncio.run(scenario())
    assert 0 <= late < 1.0


def test_watcher_closes_by_the_wall_clock_when_it_is_stepped_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    skew = [0.0]

    class SteppedClock:
        @staticmethod
        def time() -> float:
            return time.time() - skew[0]

    monkeypatch.setattr(auth_module, "time", SteppedClock)

    async def scenario() -> None:
        close = Closes()
        watcher = CredentialsWatcher(close, expires_at=time.time() + 0.2)
        watcher.start()
        skew[0] = 0.3  # the wall clock steps back after the timer is set
        await asyncio.sleep(0.35)
        assert close.calls == []  # exp has not come by the wall clock
        await settle(lambda: close.calls)
        assert SteppedClock.time() >= watcher.expires_at  # type: ignore[operator]

    asyncio.run(scenario())


def test_watcher_with_past_expiry_closes_at_once_and_stop_prevents_closing() -> None:
    async def scenario() -> None:
        close = Closes()
        CredentialsWatcher(close, expires_at=time.time() - 5).start()
        await settle(lambda: close.calls)
        stopped = Closes()
        watcher = CredentialsWatcher(stopped, expires_at=time.time() + 0.05)
        watcher.start()
        watcher.stop()
        watcher.stop()
        await asyncio.sleep(0.2)
        assert stopped.calls == []

    asyncio.run(scenario())


def test_watcher_rechecks_until_the_verdict_closes() -> None:
    verdicts: list[Any] = [None, RuntimeError("hub restarting"), None, (CLOSE_NOT_ADMIN, "gone")]
    asked: list[int] = []

    async def revalidate() -> Any:
        asked.append(1)
        verdict = verdicts[len(asked) - 1]
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    async def scenario() -> Closes:
        close = Closes()
        watcher = CredentialsWatcher(close, revalidate=revalidate, interval=0.02)
        watcher.start()
        await settle(lambda: close.calls)
        await asyncio.sleep(0.1)  # no re-check after closing
        return close

    close = asyncio.run(scenario())
    assert close.calls == [(CLOSE_NOT_ADMIN, "gone")]
    assert len(asked) == 4  # an unreachable hub is retried, not taken as a verdict


class FakeHubAuth:
    """The two HubAuth calls a re-check makes, answering from a fixed model."""

    access_scopes = frozenset({"access:servers!server=owner/"})

    def __init__(self, model: dict[str, Any] | None) -> None:
        self.model = model
        self.calls: list[tuple[str, bool]] = []

    async def user_for_token(self, token: str, use_cache: bool = True, sync: bool = True) -> Any:
        self.calls.append((token, use_cache))
        return self.model

    def check_scopes(self, required: Any, model: dict[str, Any]) -> set[str]:
        return set(required) & set(model.get("scopes", []))


ACCESS = ["access:servers!server=owner/"]


@pytest.mark.parametrize(
    ("model", "verdict"),
    [
        (None, CLOSE_CREDENTIALS_EXPIRED),  # revoked or expired
        ({"name": "mallory", "admin": True, "scopes": ACCESS}, CLOSE_CREDENTIALS_EXPIRED),
        ({"name": "root", "admin": True, "scopes": []}, CLOSE_NOT_ADMIN),  # lost access
        ({"name": "root", "admin": False, "groups": [], "scopes": ACCESS}, CLOSE_NOT_ADMIN),
        ({"name": "root", "admin": False, "groups": ["ops"], "scopes": ACCESS}, None),
        ({"name": "root", "admin": True, "groups": [], "scopes": ACCESS}, None),
    ],
)
def test_hub_recheck_verdicts(model: dict[str, Any] | None, verdict: int | None) -> None:
    hub_auth = FakeHubAuth(model)
    user = HubUser({"name": "root", "admin": True, "groups": []})
    result = asyncio.run(recheck_hub_user(hub_auth, "t0k", user, policy(admin_groups={"ops"})))
    assert (None if result is None else result[0]) == verdict
    assert hub_auth.calls == [("t0k", False)]  # always asks the hub, never its cache
    assert user.hub_user["admin"] is True  # the admitted identity is left as it was
