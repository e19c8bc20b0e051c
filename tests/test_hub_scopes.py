"""Read-only hub credentials (jupyter_server_ext/hub_scopes.py): which scopes admit a
reader to *this* server, what a re-check says, how often the hub is asked; then through
a real jupyter_server running jupyterhub's own identity provider against a stand-in of
the hub's API (tests/hub_api.py): reader admission, the hub calls it costs, and the
connection slots kept for administrators. The real hub: tests/test_hub.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpclient import HTTPClientError

from jupyter_server_ext.hub_scopes import (
    SYSMON_READ_SCOPE,
    HubReader,
    ReaderCache,
    admit_reader,
    read_scopes,
    recheck_reader,
)
from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED, CLOSE_NOT_ADMIN

from .conftest import TEST_INTERVAL, eventually, recv_json
from .hub_api import ACCESS_SCOPES, SERVER_TOKEN, HubAPI, hub_env, model

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


@pytest.fixture
def hub_api(
    jp_asyncio_loop: Any, monkeypatch: pytest.MonkeyPatch, jp_base_url: str
) -> Iterator[HubAPI]:
    api = HubAPI()
    api.start()
    hub_env(monkeypatch, api.url, jp_base_url)
    yield api
    api.stop()


@pytest.fixture
def jp_server_config(hub_api: HubAPI, sysmon_config: dict[str, Any]) -> Any:
    from jupyterhub.singleuser.extension import JupyterHubIdentityProvider

    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_server_ext": True},
            "identity_provider_class": JupyterHubIdentityProvider,
        },
        "SysmonExtension": {"interval": TEST_INTERVAL, "history": 50, **sysmon_config},
    }


def token(value: str) -> dict[str, str]:
    return {"Authorization": f"token {value}"}


async def status_code(jp_fetch: Any, *path: str, headers: dict[str, str]) -> int:
    try:
        reply = await jp_fetch(*path, headers=headers)
    except HTTPClientError as err:
        return err.code
    return int(reply.code)


async def test_reader_requests_cost_the_hub_a_bounded_number_of_calls(
    sysmon: Any, jp_fetch: Any, hub_api: HubAPI
) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    for _ in range(50):
        assert (
            await status_code(jp_fetch, "sysmon", "api", "status", headers=token("reader-token"))
            == 200
        )
    # the hub provider's cached look-up, and one fresh answer for the reader path
    assert hub_api.calls["reader-token"] <= 2, hub_api.calls
    for _ in range(50):
        code = await status_code(jp_fetch, "sysmon", "metrics", headers=token("other-reader-token"))
        assert code == 403
    assert hub_api.calls["other-reader-token"] <= 2, hub_api.calls
    codes = await asyncio.gather(
        *(status_code(jp_fetch, "sysmon", "api", "status", headers=token("reader2-token"))
          for _ in range(20))
    )  # fmt: skip
    assert set(codes) == {200}
    assert hub_api.calls["reader2-token"] <= 2, hub_api.calls
    # a reader's token opens nothing else of the server, and costs no more calls there
    assert await status_code(jp_fetch, "api", "kernels", headers=token("reader-token")) == 403
    assert await status_code(jp_fetch, "api", "contents", headers=token("reader-token")) == 403


@pytest.mark.parametrize(
    "sysmon_config",
    [{"max_connections": 4, "non_admin_share": 0.5, "max_connections_per_identity": 3}],
    indirect=True,
)
async def test_readers_take_their_share_and_admins_keep_theirs(
    sysmon: Any, ws_url: Any, http_server_client: Any
) -> None:

    def open_ws(value: str) -> Any:
        return websockets.connect(ws_url("metrics=cpu"), additional_headers=token(value))

    async def refused(value: str) -> tuple[int, str]:
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with open_ws(value):
                pass
        response = excinfo.value.response
        return response.status_code, json.loads(response.body)["message"]

    async with open_ws("reader-token") as r1, open_ws("reader3-token") as r2:
        for ws in (r1, r2):
            assert (await recv_json(ws))["type"] == "hello"
        # readers hold their whole share: the next reader gets 429 with the reason...
        code, reason = await refused("reader2-token")
        assert code == 429 and "kept for administrators" in reason
        code, _ = await refused("reader-token")
        assert code == 429
        # ... and an admin still connects, twice: the slots kept for administrators
        async with open_ws("admin-token") as a1, open_ws("admin-token") as a2:
            for ws in (a1, a2):
                assert (await recv_json(ws))["type"] == "hello"
            code, reason = await refused("admin-token")  # now the server is full
            assert code == 503 and "too many" in reason
    await eventually(lambda: sysmon.slots.held == 0)


@pytest.mark.parametrize("sysmon_config", [{"max_connections_per_identity": 2}], indirect=True)
async def test_one_identity_holds_at_most_its_cap(
    sysmon: Any, ws_url: Any, http_server_client: Any
) -> None:
    def open_ws(value: str) -> Any:
        return websockets.connect(ws_url("metrics=cpu"), additional_headers=token(value))

    async with open_ws("admin-token") as a1, open_ws("admin-token") as a2:
        for ws in (a1, a2):
            assert (await recv_json(ws))["type"] == "hello"
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with open_ws("admin-token"):
                pass
        assert excinfo.value.response.status_code == 429
        message = json.loads(excinfo.value.response.body)["message"]
        assert "at most 2 per identity" in message and "'root'" in message
        async with open_ws("reader-token") as other:  # another identity is not affected
            assert (await recv_json(other))["type"] == "hello"
    await eventually(lambda: sysmon.slots.held == 0)
    async with open_ws("admin-token") as again:  # the slots came back
        assert (await recv_json(again))["type"] == "hello"
