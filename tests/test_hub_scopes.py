"""Read-only hub credentials (jupyter_server_ext/hub_scopes.py): which scopes admit a
reader to *this* server, what a re-check says, how often the hub is asked; then through
a real single-user-shaped server process (jupyterhub's own identity provider and
authorizer) against a stand-in of the hub's API (tests/hub_api.py): reader admission,
the hub calls it costs, and the connection slots kept for administrators. The real hub:
tests/test_hub.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from jupyterhub.services.auth import HubAuth
from tornado import web
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from jupyter_server_ext.hub_scopes import (
    SYSMON_READ_SCOPE,
    HubReader,
    ReaderCache,
    admit_reader,
    read_scopes,
    recheck_reader,
)
from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

from .hub_api import ACCESS_SCOPES, SERVER_TOKEN, HubAPI, hub_env, model
from .servers import JupyterProcess, isolated_env
from .test_routes import request

# -- which scopes admit a reader here (pure) ----------------------------------------------


def test_read_scopes_keep_this_servers_filters() -> None:
    assert read_scopes(ACCESS_SCOPES) == {
        "custom:sysmon:read!server=bob/",
        "custom:sysmon:read!user=bob",
    }
    # an unfiltered access:servers would admit every reader of every server: never
    assert read_scopes(["access:servers"]) == set()
    assert read_scopes(["access:services!service=grafana"]) == set()


class Handler:
    """What ``admit_reader`` reads of a request: its explicit token."""

    def __init__(self, token: str) -> None:
        self.token = token


class TableHubAuth(HubAuth):  # type: ignore[misc]
    """jupyterhub's real ``HubAuth`` (its ``check_scopes``, with its filter rules), whose
    answers about tokens come from a table instead of the network; counts the calls."""

    def __init__(self, tokens: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(api_token=SERVER_TOKEN, access_scopes=set(ACCESS_SCOPES), **kwargs)
        self.table = tokens
        self.asked: list[tuple[str, bool]] = []
        self.failure: Exception | None = None

    def get_token(self, handler: Any, in_cookie: bool = True) -> str:
        return str(handler.token)

    async def _table(self, token: str, use_cache: bool) -> Any:
        self.asked.append((token, use_cache))
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return self.table.get(token)

    def user_for_token(
        self, token: str, use_cache: bool = True, session_id: str = "", *, sync: bool = True
    ) -> Any:
        assert not sync
        return self._table(token, use_cache)


#: (scopes of the token, admitted to bob's default server)
READERS = [
    (["custom:sysmon:read"], True),  # every server
    (["custom:sysmon:read!user=bob"], True),  # bob's servers
    (["custom:sysmon:read!server=bob/"], True),  # this very server
    (["custom:sysmon:read!user=alice"], False),  # another user's servers
    (["custom:sysmon:read!server=bob/gpu"], False),  # bob's other server
    (["custom:sysmon:read!server=alice/"], False),
    pytest.param(  # a group: the server cannot resolve it (jupyterhub warns, and refuses)
        ["custom:sysmon:read!group=ops"],
        False,
        marks=pytest.mark.filterwarnings("ignore:.*combinations of filters:UserWarning"),
    ),
    (["read:users", "list:servers"], False),
    ([], False),
]


@pytest.mark.parametrize(("scopes", "admitted"), READERS)
async def test_a_reader_is_admitted_by_a_read_scope_for_this_server_only(
    scopes: list[str], admitted: bool
) -> None:
    hub_auth = TableHubAuth({"t": model("monitor", *scopes)})
    if admitted:
        reader = await admit_reader(hub_auth, Handler("t"), ReaderCache(10.0))
        assert isinstance(reader, HubReader) and reader.username == "monitor"
        assert reader.granted and all(g.startswith(SYSMON_READ_SCOPE) for g in reader.granted)
    else:
        with pytest.raises(web.HTTPError) as refused:
            await admit_reader(hub_auth, Handler("t"), ReaderCache(10.0))
        assert refused.value.status_code == 403
        assert "may not read this server" in refused.value.log_message
    assert hub_auth.asked == [("t", False)]  # the hub's fresh answer, not its cache


async def test_an_unknown_token_admits_nobody() -> None:
    hub_auth = TableHubAuth({})
    assert await admit_reader(hub_auth, Handler("nope"), ReaderCache(10.0)) is None
    assert await admit_reader(hub_auth, Handler(""), ReaderCache(10.0)) is None


@pytest.mark.parametrize(
    ("now", "verdict"),
    [
        (None, (CLOSE_CREDENTIALS_EXPIRED, "credentials expired or revoked")),  # revoked
        (model("someone-else", "custom:sysmon:read"), (CLOSE_CREDENTIALS_EXPIRED, None)),
        (model("monitor", "read:users"), (CLOSE_NOT_ADMIN, "no longer holds custom:sysmon:read")),
        (model("monitor", "custom:sysmon:read!user=alice"), (CLOSE_NOT_ADMIN, None)),
        (model("monitor", "custom:sysmon:read!user=bob"), None),
    ],
)
async def test_a_recheck_closes_a_revoked_or_narrowed_reader(
    now: dict[str, Any] | None, verdict: tuple[int, str | None] | None
) -> None:
    hub_auth = TableHubAuth({"t": now})
    reader = HubReader(model("monitor", "custom:sysmon:read"), {"custom:sysmon:read"})
    result = await recheck_reader(hub_auth, "t", reader, ReaderCache(0.0))
    if verdict is None:
        assert result is None
    else:
        assert result is not None and result[0] == verdict[0]
        assert verdict[1] is None or result[1] == verdict[1]
    assert hub_auth.asked == [("t", False)]


# -- the reader cache ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_repeated_concurrent_and_refused_lookups_cost_one_hub_call_per_period() -> None:
    hub_auth = TableHubAuth(
        {"reader": model("monitor", "custom:sysmon:read"), "nosy": model("nosy", "read:users")}
    )
    clock = Clock()
    cache = ReaderCache(10.0, clock=clock)
    for _ in range(50):
        assert (await admit_reader(hub_auth, Handler("reader"), cache)) is not None
    await asyncio.gather(*(admit_reader(hub_auth, Handler("reader"), cache) for _ in range(20)))
    for _ in range(50):  # refused, and the refusal is shared too
        with pytest.raises(web.HTTPError):
            await admit_reader(hub_auth, Handler("nosy"), cache)
    assert sorted(hub_auth.asked) == [("nosy", False), ("reader", False)]
    clock.now += 10.0  # the period is over: the hub is asked again, once
    await asyncio.gather(*(admit_reader(hub_auth, Handler("reader"), cache) for _ in range(20)))
    assert len(hub_auth.asked) == 3
    assert cache.calls == 3


async def test_concurrent_lookups_share_one_call_even_without_a_period() -> None:
    hub_auth = TableHubAuth({"reader": model("monitor", "custom:sysmon:read")})
    cache = ReaderCache(0.0)
    await asyncio.gather(*(cache.model(hub_auth, "reader") for _ in range(20)))
    assert len(hub_auth.asked) == 1
    await cache.model(hub_auth, "reader")
    assert len(hub_auth.asked) == 2  # nothing kept with a period of 0


async def test_a_hub_that_cannot_be_reached_is_asked_again_next_time() -> None:
    hub_auth = TableHubAuth({"reader": model("monitor", "custom:sysmon:read")})
    cache = ReaderCache(10.0)
    hub_auth.failure = ConnectionRefusedError(111, "refused")
    results = await asyncio.gather(
        *(cache.model(hub_auth, "reader") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert len(hub_auth.asked) == 1
    hub_auth.failure = None
    assert (await cache.model(hub_auth, "reader")) is not None  # the failure was not kept
    assert len(hub_auth.asked) == 2


async def test_the_cache_is_bounded() -> None:
    hub_auth = TableHubAuth({})
    cache = ReaderCache(60.0, max_entries=8)
    for n in range(100):
        await cache.model(hub_auth, f"made-up-{n}")
    assert len(cache._answers) == 8
    await cache.model(hub_auth, "made-up-99")  # the newest are kept
    assert len(hub_auth.asked) == 100


# -- through a real server: jupyterhub's provider, the stand-in hub API --------------------

#: bob's server, as a hub would configure it (small limits, to fill them)
SERVER_CONFIG = {
    "ServerApp": {
        "identity_provider_class": "jupyterhub.singleuser.extension.JupyterHubIdentityProvider",
        "authorizer_class": "jupyterhub.singleuser.extension.JupyterHubAuthorizer",
    },
    "SysmonExtension": {
        "max_connections": 4,
        "non_admin_share": 0.5,
        "max_connections_per_identity": 2,
        # longer than the tests however loaded the machine: the bound on hub calls is the
        # point here, the period's end is tested above with a clock of the test's own
        "reader_cache_seconds": 600,
    },
}


@pytest.fixture(scope="module")
def hub_api() -> Iterator[HubAPI]:
    api = HubAPI()
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def bobs_server(
    hub_api: HubAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterProcess]:
    tmp = tmp_path_factory.mktemp("hub-shaped")
    (tmp / "jupyter-config").mkdir()
    (tmp / "jupyter-config" / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
    server = JupyterProcess(tmp, env=isolated_env(tmp, **hub_env(hub_api.url)), interval=0.5)
    yield server
    server.stop()


def token(value: str) -> dict[str, str]:
    return {"Authorization": f"token {value}"}


def get(server: JupyterProcess, path: str, value: str) -> int:
    return request(server.url + path, headers=token(value))[0]


def test_reader_requests_cost_the_hub_a_bounded_number_of_calls(
    bobs_server: JupyterProcess, hub_api: HubAPI
) -> None:
    for _ in range(50):
        assert get(bobs_server, "sysmon/api/status", "reader-token") == 200
    # the hub provider's cached look-up, and one fresh answer for the reader path
    assert hub_api.calls["reader-token"] <= 2, hub_api.calls
    for _ in range(50):
        assert get(bobs_server, "sysmon/metrics", "other-reader-token") == 403
    assert hub_api.calls["other-reader-token"] <= 2, hub_api.calls
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: get(bobs_server, "sysmon/metrics", "reader2-token"),
                              range(40)))  # fmt: skip
    assert set(codes) == {200}
    assert hub_api.calls["reader2-token"] <= 2, hub_api.calls
    # a reader's token opens nothing else of the server
    assert get(bobs_server, "api/kernels", "reader-token") == 403
    assert get(bobs_server, "api/contents", "reader-token") == 403


def ws(server: JupyterProcess, value: str) -> Any:
    url = server.url.replace("http", "ws", 1) + "sysmon/ws?metrics=cpu"
    return ws_connect(url, additional_headers=token(value), open_timeout=30)


def hello(connection: Any) -> str:
    return str(json.loads(connection.recv(timeout=30))["type"])


def refused(server: JupyterProcess, value: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as excinfo, ws(server, value):
        pass
    response = excinfo.value.response
    return response.status_code, json.loads(response.body)["message"]


def test_readers_take_their_share_and_admins_keep_theirs(bobs_server: JupyterProcess) -> None:
    # max_connections 4: readers 2 of them, 2 per identity
    with ws(bobs_server, "reader-token") as r1, ws(bobs_server, "reader3-token") as r2:
        assert hello(r1) == hello(r2) == "hello"
        # readers hold their whole share: the next reader gets 429 with the reason ...
        code, reason = refused(bobs_server, "reader2-token")
        assert code == 429 and "kept for administrators" in reason
        assert refused(bobs_server, "reader-token")[0] == 429
        # ... and admins still connect: the slots kept for them
        with ws(bobs_server, "admin-token") as a1, ws(bobs_server, "admin2-token") as a2:
            assert hello(a1) == hello(a2) == "hello"
            code, reason = refused(bobs_server, "admin2-token")  # now the server is full
            assert code == 503 and "too many" in reason


def test_one_identity_holds_at_most_its_cap(bobs_server: JupyterProcess) -> None:
    with ws(bobs_server, "admin-token") as a1, ws(bobs_server, "admin-token") as a2:
        assert hello(a1) == hello(a2) == "hello"
        code, reason = refused(bobs_server, "admin-token")
        assert code == 429 and "at most 2 per identity" in reason and "'root'" in reason
        with ws(bobs_server, "reader-token") as other:  # another identity is not affected
            assert hello(other) == "hello"
    # the slots come back when the connections close (the server notices a moment later)
    deadline = time.monotonic() + 20
    while True:
        try:
            with ws(bobs_server, "admin-token") as b1, ws(bobs_server, "admin-token") as b2:
                assert hello(b1) == hello(b2) == "hello"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the slots never came back"
            time.sleep(0.1)
