"""The admin policy, for each kind of identity jupyter_server can hand us."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import websockets
from jupyter_server.auth import Authorizer, IdentityProvider, User
from tornado import web
from tornado.httpclient import HTTPClientError

from jupyter_server_ext import auth as auth_module
from jupyter_server_ext.admission import scrub_uri
from jupyter_server_ext.auth import (
    CLOSE_TRY_AGAIN_LATER,
    AdminPolicy,
    CredentialsWatcher,
    hub_unreachable,
    recheck_hub_user,
)
from sysmon_nb.protocol import (
    CLOSE_CREDENTIALS_EXPIRED,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NOT_ADMIN,
)

from .conftest import eventually, recv_json, recv_type


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
    verdicts: list[Any] = [
        None,
        ConnectionRefusedError("hub restarting"),
        None,
        (CLOSE_NOT_ADMIN, "gone"),
    ]
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


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (HTTPClientError(599), True),
        (HTTPClientError(503), True),
        (web.HTTPError(500, "Failed to connect to Hub API at 'http://hub/'."), True),
        (web.HTTPError(502, "Failed to check authorization (upstream problem)"), True),
        (web.HTTPError(500, "Permission failure checking authorization"), False),
        (HTTPClientError(403), False),
        (TypeError("user_for_token() got an unexpected keyword argument 'sync'"), False),
        (KeyError("name"), False),
    ],
)
def test_only_an_unreachable_hub_is_retried(error: Exception, retried: bool) -> None:
    assert hub_unreachable(error) is retried


# -- through a real server: hub re-checks that fail, and providers with many users --------


class StandInHubAuth:
    """What a re-check calls on ``hub_auth``; ``user_for_token`` fails as told."""

    access_scopes = frozenset({"access:servers!server=owner/"})
    failure: ClassVar[Exception | None] = None
    calls: ClassVar[list[str]] = []

    def get_token(self, handler: Any) -> str:
        return "hub-token"

    async def user_for_token(self, token: str, use_cache: bool = True, sync: bool = True) -> Any:
        self.calls.append(token)
        if self.failure is not None:
            raise self.failure
        return {"name": "root", "admin": True, "scopes": sorted(self.access_scopes)}

    def check_scopes(self, required: Any, model: dict[str, Any]) -> set[str]:
        return set(required) & set(model.get("scopes", []))


class StandInHubProvider(IdentityProvider):
    """A JupyterHub-shaped identity provider whose hub is :class:`StandInHubAuth`."""

    hub_auth = StandInHubAuth()

    async def get_user(self, handler: Any) -> User | None:
        scheme, _, token = handler.request.headers.get("Authorization", "").partition(" ")
        if (scheme.lower(), token) != ("token", "hub-token"):
            return None
        return HubUser({"name": "root", "admin": True, "groups": []})


@pytest.fixture
def hub_failure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Exception:
    monkeypatch.setattr(StandInHubAuth, "failure", request.param)
    monkeypatch.setattr(StandInHubAuth, "calls", [])
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server_log(sysmon: Any) -> Any:
    """Records of the server's log from now on."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("ServerApp")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


HUB_PROVIDER = {"identity_provider_class": StandInHubProvider}
HUB_TOKEN = {"Authorization": "token hub-token"}


@pytest.mark.parametrize("server_config", [HUB_PROVIDER], indirect=True)
@pytest.mark.parametrize("sysmon_config", [{"revalidate_interval": 0.1}], indirect=True)
@pytest.mark.parametrize(
    "hub_failure", [TypeError("an API change: unexpected keyword 'sync'")], indirect=True
)
async def test_a_recheck_that_breaks_closes_1011_with_the_traceback(
    hub_failure: Exception, connect: Any, server_log: list[logging.LogRecord]
) -> None:
    async with connect("metrics=cpu", headers=HUB_TOKEN) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        with pytest.raises(websockets.ConnectionClosed) as excinfo:
            for _ in range(100):
                await recv_json(ws)
    assert excinfo.value.rcvd is not None and excinfo.value.rcvd.code == CLOSE_INTERNAL_ERROR
    assert StandInHubAuth.calls == ["hub-token"]  # not retried
    (line,) = [r for r in server_log if "re-check failed" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert line.exc_info is not None and line.exc_info[1] is hub_failure


@pytest.mark.parametrize("server_config", [HUB_PROVIDER], indirect=True)
@pytest.mark.parametrize("sysmon_config", [{"revalidate_interval": 0.1}], indirect=True)
@pytest.mark.parametrize("hub_failure", [ConnectionRefusedError(111, "refused")], indirect=True)
async def test_an_unreachable_hub_is_retried_and_the_connection_stays(
    hub_failure: Exception, connect: Any, server_log: list[logging.LogRecord]
) -> None:
    async with connect("metrics=cpu", headers=HUB_TOKEN) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await eventually(lambda: len(StandInHubAuth.calls) >= 4)
        assert "cpu" in await recv_type(ws, "status")  # still streaming
        StandInHubAuth.failure = None  # the hub is back
        calls = len(StandInHubAuth.calls)
        await eventually(lambda: len(StandInHubAuth.calls) >= calls + 2)
        assert "cpu" in await recv_type(ws, "status")
    (warning,) = [r for r in server_log if "could not reach the hub" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "refused" in warning.getMessage()
    assert len([r for r in server_log if "reached the hub again" in r.getMessage()]) == 1


class HeaderIdentityProvider(IdentityProvider):
    """A multi-user provider: a plain ``User`` named by the ``X-User`` header."""

    async def get_user(self, handler: Any) -> User | None:
        name = handler.request.headers.get("X-User")
        return User(username=name) if name else None


class StartupRecords(logging.Handler):
    """Added by the extension's own logging config, so it sees start-up."""

    records: ClassVar[list[logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def startup_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh :class:`StartupRecords`; ask for it before the server fixtures."""
    monkeypatch.setattr(StartupRecords, "records", [])


@pytest.mark.parametrize(
    "server_config", [{"identity_provider_class": HeaderIdentityProvider}], indirect=True
)
@pytest.mark.parametrize(
    "sysmon_config",
    [
        {
            "admin_users": ["alice"],
            "logging_config": {
                "handlers": {"startup": {"class": f"{__name__}.StartupRecords"}},
                "loggers": {"SysmonExtension": {"handlers": ["console", "startup"]}},
            },
        }
    ],
    indirect=True,
)
async def test_a_multi_user_provider_gets_no_owner_rule(
    startup_records: None, connect: Any, sysmon: Any
) -> None:
    assert sysmon.allow_owner is True  # on, by default, outside JupyterHub ...
    async with connect("metrics=cpu", headers={"X-User": "alice"}) as ws:  # admin_users
        assert (await recv_json(ws))["type"] == "hello"
        assert "cpu" in await recv_type(ws, "status")
    with pytest.raises(websockets.InvalidStatus) as excinfo:  # ... but bob is not the owner
        async with connect("metrics=cpu", headers={"X-User": "bob"}):
            pass
    assert excinfo.value.response.status_code == 403
    assert "not an administrator" in json.loads(excinfo.value.response.body)["message"]
    lines = [r for r in StartupRecords.records if "allow_owner is off" in r.getMessage()]
    assert len(lines) == 1
    assert "HeaderIdentityProvider" in lines[0].getMessage()


async def test_the_owner_rule_holds_with_jupyter_servers_own_provider(
    connect: Any, sysmon: Any
) -> None:
    assert type(sysmon.serverapp.identity_provider).__name__ == "PasswordIdentityProvider"
    async with connect("metrics=cpu") as ws:  # the server's own token: the owner
        assert (await recv_json(ws))["type"] == "hello"


def test_owner_rule_only_for_single_user_providers() -> None:
    owner = User(username="6f3a")
    assert policy(allow_owner=True, single_user_provider=True).check(owner).allowed
    assert not policy(allow_owner=True, single_user_provider=False).check(owner).allowed
    assert (
        policy(allow_owner=True, single_user_provider=False, admin_users={"6f3a"})
        .check(owner)
        .allowed
    )


# -- expiry at exp, not later (a clock seam, no wall-clock bound) ---------------------------


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_expiry_timer_is_set_for_exp_and_closes_at_exp_not_later() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = Clock(1000.0)
        close = Closes()
        watcher = CredentialsWatcher(close, expires_at=1005.0, clock=clock)
        watcher.start()
        timer = watcher._timer
        assert timer is not None
        assert abs(timer.when() - (loop.time() + 5.0)) < 0.05  # due at exp, by the clock
        # the loop's timer fires a hair before exp by the wall clock: set again, no close
        timer.cancel()
        clock.now = 1004.99
        watcher._expire()
        assert close.calls == []
        assert watcher._timer is not None
        assert abs(watcher._timer.when() - (loop.time() + 0.01)) < 0.05
        # at exp exactly: closed there and then
        watcher._timer.cancel()
        clock.now = 1005.0
        watcher._expire()
        assert close.calls == [(CLOSE_CREDENTIALS_EXPIRED, "credentials expired")]
        assert watcher._timer is None

    asyncio.run(scenario())


# -- a hub that stays unreachable: bounded by hub_outage_grace --------------------------------


def test_an_unreachable_hub_closes_1013_after_the_grace_not_before() -> None:
    async def revalidate() -> Any:
        raise ConnectionRefusedError(111, "refused")

    async def scenario() -> tuple[float, Closes, int]:
        loop = asyncio.get_running_loop()
        close = Closes()
        asked = 0

        async def counting() -> Any:
            nonlocal asked
            asked += 1
            return await revalidate()

        watcher = CredentialsWatcher(close, revalidate=counting, interval=0.05, grace=0.3)
        started = loop.time()
        watcher.start()
        await settle(lambda: close.calls)
        return loop.time() - started, close, asked

    took, close, asked = asyncio.run(scenario())
    assert close.calls == [(CLOSE_TRY_AGAIN_LATER, "cannot re-check credentials: hub unreachable")]
    assert took >= 0.05 + 0.3  # the first failure, then the whole grace
    assert asked >= 2  # retried in between


def test_a_grace_of_zero_closes_at_the_first_unanswered_recheck() -> None:
    async def revalidate() -> Any:
        raise TimeoutError()

    async def scenario() -> Closes:
        close = Closes()
        CredentialsWatcher(close, revalidate=revalidate, interval=0.02, grace=0.0).start()
        await settle(lambda: close.calls)
        return close

    assert asyncio.run(scenario()).calls[0][0] == CLOSE_TRY_AGAIN_LATER


@pytest.mark.parametrize("server_config", [HUB_PROVIDER], indirect=True)
@pytest.mark.parametrize(
    "sysmon_config", [{"revalidate_interval": 0.1, "hub_outage_grace": 0.4}], indirect=True
)
@pytest.mark.parametrize("hub_failure", [ConnectionRefusedError(111, "refused")], indirect=True)
async def test_a_hub_outage_longer_than_the_grace_closes_1013_and_says_so(
    hub_failure: Exception, connect: Any, server_log: list[logging.LogRecord]
) -> None:
    async with connect("metrics=cpu", headers=HUB_TOKEN) as bystander_free:
        assert (await recv_json(bystander_free))["type"] == "hello"
        with pytest.raises(websockets.ConnectionClosed) as excinfo:
            for _ in range(200):
                await recv_json(bystander_free)
    assert excinfo.value.rcvd is not None
    assert excinfo.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
    assert len(StandInHubAuth.calls) >= 2  # retried within the grace first
    messages = [r.getMessage() for r in server_log]
    assert len([m for m in messages if "could not reach the hub" in m]) == 1
    (closing,) = [m for m in messages if "closing with 1013" in m]
    assert "hub_outage_grace" in closing


# -- the server's authorizer is asked, and its no is final --------------------------------


class DenySysmon(Authorizer):
    """An authorizer that allows everything but reading sysmon."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "sysmon"


@pytest.mark.parametrize("server_config", [{"authorizer_class": DenySysmon}], indirect=True)
async def test_an_authorizer_that_denies_sysmon_is_obeyed_on_every_route(
    connect: Any, jp_fetch: Any, sysmon: Any
) -> None:
    with pytest.raises(websockets.InvalidStatus) as excinfo:  # the owner: an admin otherwise
        async with connect("metrics=cpu"):
            pass
    assert excinfo.value.response.status_code == 403
    assert "not authorized" in json.loads(excinfo.value.response.body)["message"]
    for path in (("sysmon", "api", "status"), ("sysmon", "metrics")):
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch(*path)
        assert refused.value.code == 403, path
    assert (await jp_fetch("api", "status")).code == 200  # the rest of the server is its call
    assert not sysmon.connections and sysmon.slots.held == 0


# -- refusals log no credentials ------------------------------------------------------------


@pytest.fixture
def all_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the server's, tornado's and sysmon's loggers from now on."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("ServerApp", "tornado", "SysmonExtension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.setLevel(logging.DEBUG)
    yield records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(keep)
        logger.setLevel(level)


def logged(records: list[logging.LogRecord]) -> str:
    return "\n".join(r.getMessage() for r in records)


@pytest.mark.parametrize("sysmon_config", [{"allow_owner": False}], indirect=True)
async def test_refusals_log_the_uri_without_the_token(
    jp_fetch: Any, sysmon: Any, all_logs: list[logging.LogRecord], jp_auth_header: Any
) -> None:
    secret = jp_auth_header["Authorization"].split()[1]
    for path, params, code in [
        (("sysmon", "api", "status"), {"token": secret}, 403),  # not an administrator
        (("sysmon", "metrics"), {"token": secret, "x": "1"}, 403),
        (("sysmon", "api", "status"), {"metrics": "bogus", "access_token": secret}, 403),
    ]:
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch(*path, params=params, headers={"Authorization": ""})
        assert refused.value.code == code
    text = logged(all_logs)
    assert "not an administrator" in text  # the refusals were logged, with their reason ...
    assert "sysmon/metrics?token=[secret]&x=1" in text  # ... and the URI, scrubbed
    assert secret not in text


@pytest.mark.parametrize("sysmon_config", [{"max_connections_per_identity": 1}], indirect=True)
async def test_websocket_refusals_log_the_uri_without_the_token(
    connect: Any, ws_url: Any, all_logs: list[logging.LogRecord], jp_auth_header: Any
) -> None:
    secret = jp_auth_header["Authorization"].split()[1]

    def open_ws(query: str) -> Any:
        return websockets.connect(ws_url(f"{query}&token={secret}"), open_timeout=10)

    with pytest.raises(websockets.InvalidStatus) as bad:  # 400: a bad query
        async with open_ws("metrics=bogus"):
            pass
    assert bad.value.response.status_code == 400
    async with open_ws("metrics=cpu") as ws:  # the token in the URL admits the owner ...
        assert (await recv_json(ws))["type"] == "hello"
        with pytest.raises(websockets.InvalidStatus) as over:  # ... once: 429 the second time
            async with open_ws("metrics=memory"):
                pass
        assert over.value.response.status_code == 429
    text = logged(all_logs)
    assert "400 GET" in text and "429 GET" in text
    assert "sysmon/ws?metrics=memory&token=[secret]" in text
    assert secret not in text


async def test_an_unknown_failure_logs_the_uri_without_the_token(
    jp_fetch: Any, sysmon: Any, all_logs: list[logging.LogRecord], jp_auth_header: Any
) -> None:
    secret = jp_auth_header["Authorization"].split()[1]

    def broken(metrics: Any) -> Any:
        raise RuntimeError("a bug")

    sysmon.status_for_api = broken
    with pytest.raises(HTTPClientError) as failed:
        await jp_fetch("sysmon", "api", "status", params={"token": secret})
    assert failed.value.code == 500
    assert "Traceback" not in failed.value.response.body.decode()
    text = logged(all_logs)
    assert "sysmon/api/status?token=[secret]" in text and secret not in text


def test_scrub_uri_keeps_the_rest() -> None:
    assert scrub_uri("/a/sysmon/ws?metrics=cpu&token=abc&history=3") == (
        "/a/sysmon/ws?metrics=cpu&token=[secret]&history=3"
    )
    assert scrub_uri("/x?Token=a&_xsrf=b&oauth_code=c&state=d") == (
        "/x?Token=[secret]&_xsrf=[secret]&oauth_code=[secret]&state=[secret]"
    )
    assert scrub_uri("/x?mine=1", extra=("mine",)) == "/x?mine=[secret]"
    assert scrub_uri("/x?token") == "/x?token"  # no value to hide
    assert scrub_uri("/plain/path") == "/plain/path"
