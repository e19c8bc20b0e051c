"""sysmon_nb.hub_tokens without a hub: which scope a server's token gets, who may mint,
when tokens rotate, and ServerTokens' calls through a recording stand-in for the hub's
REST API (the real hub: tests/test_fleet_hub.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from sysmon_nb.hub_api import HubError
from sysmon_nb.hub_tokens import (
    ROTATE_FROM,
    ROTATE_TO,
    NarrowingRefusedError,
    ServerTokens,
    holds,
    minting_problem,
    narrowed_scope,
    retry_delay,
    rotation_time,
)

READ, ACCESS = "custom:sysmon:read", "access:servers"


def test_the_read_scope_is_preferred_and_each_token_names_one_server() -> None:
    assert narrowed_scope([READ, ACCESS], "ben", "gpu") == f"{READ}!server=ben/gpu"
    assert narrowed_scope([ACCESS], "ben", "") == f"{ACCESS}!server=ben/"
    assert narrowed_scope(["list:users", "read:servers"], "ben", "") is None
    # filtered grants cover what they name, and nothing next to it
    assert narrowed_scope([f"{READ}!user=ben"], "ben", "gpu") == f"{READ}!server=ben/gpu"
    assert narrowed_scope([f"{READ}!user=ben"], "bent", "") is None
    assert narrowed_scope([f"{READ}!user=be"], "ben", "") is None
    assert narrowed_scope([f"{READ}!server=ben/"], "ben", "") == f"{READ}!server=ben/"
    assert narrowed_scope([f"{READ}!server=ben/"], "ben", "gpu") is None
    assert narrowed_scope([f"{READ}!server=ben/gpu"], "ben", "") is None
    # a read grant elsewhere falls back to an access grant here
    assert narrowed_scope([f"{READ}!user=cat", f"{ACCESS}!user=ben"], "ben", "") == (
        f"{ACCESS}!server=ben/"
    )
    # groups count only when the user's groups are known to hold the group
    assert narrowed_scope([f"{READ}!group=ops"], "ben", "", groups=["ops"]) is not None
    assert narrowed_scope([f"{READ}!group=ops"], "ben", "", groups=["dev"]) is None
    assert narrowed_scope([f"{READ}!group=ops"], "ben", "") is None
    # look-alike scope names grant nothing
    assert narrowed_scope(["custom:sysmon:read:all", "access:servers:x"], "ben", "") is None


def test_holds_reads_user_filters_for_user_scopes() -> None:
    assert holds(["tokens"], "tokens", user="ada")
    assert holds(["tokens!user=ada"], "tokens", user="ada")
    assert not holds(["tokens!user=ada"], "tokens", user="adam")
    assert not holds(["tokens!server=ada/"], "tokens", user="ada")  # no server given
    assert not holds(["read:tokens"], "tokens", user="ada")


def model(kind: str = "user", name: str = "rita", *scopes: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "name": name, "scopes": list(scopes), **extra}


def test_minting_needs_a_user_token_with_the_tokens_scope_for_its_owner() -> None:
    assert minting_problem(model("user", "ada", "tokens", ACCESS)) is None
    assert minting_problem(model("user", "rita", "tokens!user=rita", READ)) is None
    problem = minting_problem(model("user", "rita", READ, "list:users"))
    assert problem is not None and "lacks tokens!user=rita" in problem
    assert "'rita'" in problem
    # tokens for someone else do not mint for the owner
    assert minting_problem(model("user", "rita", "tokens!user=bob")) is not None
    # a group filter counts for the owner's own groups
    assert minting_problem(model("user", "rita", "tokens!group=ops", groups=["ops"])) is None
    assert minting_problem(model("user", "rita", "tokens!group=ops", groups=[])) is not None


def test_a_service_mints_only_for_a_named_user() -> None:
    problem = minting_problem(model("service", "exporter", "tokens", READ))
    assert problem is not None
    assert "service 'exporter'" in problem and "users only" in problem
    assert "token_owner" in problem and "tokens!user=<that user>" in problem
    service = model("service", "exporter", "tokens!user=sysmon-metrics", READ)
    assert minting_problem(service, "sysmon-metrics") is None
    problem = minting_problem(service, "someone-else")
    assert problem is not None and "tokens!user=someone-else" in problem


def test_rotations_fall_between_half_and_three_quarters_of_the_life() -> None:
    assert rotation_time(100.0, 60.0, lambda: 0.0) == 100.0 + 60.0 * ROTATE_FROM
    assert rotation_time(100.0, 60.0, lambda: 1.0) == 100.0 + 60.0 * ROTATE_TO
    rng = random.Random(7)
    times = [rotation_time(0.0, 1800.0, rng.random) for _ in range(1000)]
    assert min(times) >= 900.0 and max(times) <= 1350.0
    assert max(times) - min(times) > 400.0  # spread out, not bunched
    assert retry_delay(0.0, 8.0) == 2.0
    assert retry_delay(0.0, 1.0) == 1.0  # at least a second
    assert retry_delay(0.0, 1800.0) == 30.0  # at most RETRY_MAX


class FakeHub:
    """Records the calls ServerTokens makes; answers as JupyterHub's token API does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.live: dict[str, dict[str, Any]] = {}
        self.fail: HubError | None = None
        self.in_flight = self.most_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.ids = 0

    async def call(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            if method == "POST":
                self.ids += 1
                token = {"id": f"a{self.ids}", "token": f"secret{self.ids}", **body}
                self.live[token["id"]] = token
                return token
            token_id = path.rsplit("/", 1)[1]
            if self.live.pop(token_id, None) is None:
                raise HubError("no such token", 404)
            return None
        finally:
            self.in_flight -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tokens_for(hub: FakeHub, clock: Clock, *scopes: str, **kw: Any) -> ServerTokens:
    owner = model("user", "ada", "tokens", *scopes)
    return ServerTokens(hub, owner, lifetime=60, clock=clock, rng=lambda: 0.5, **kw)


async def test_one_token_per_server_minted_once_with_its_scope_and_life() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, ACCESS)
    first, again = await asyncio.gather(tokens.get(("ben", "gpu")), tokens.get(("ben", "gpu")))
    assert first is again and hub.calls == [
        (
            "POST",
            "users/ada/tokens",
            {"scopes": ["access:servers!server=ben/gpu"], "expires_in": 60,
             "note": "sysmon fleet: ben/gpu"},
        )
    ]  # fmt: skip
    assert first.rotate_at == 1000.0 + 60 * (ROTATE_FROM + ROTATE_TO) / 2
    assert "secret" not in repr(first) + repr(tokens)
    other = await tokens.get(("cat", ""))
    assert other.token != first.token and other.scope == "access:servers!server=cat/"
    clock.now += 61  # expired: the next get mints another and revokes the old
    fresh = await tokens.get(("ben", "gpu"))
    assert fresh.token != first.token
    await tokens.aclose()
    assert hub.live == {} and tokens.revoked == tokens.minted == 3


async def test_a_server_the_token_may_not_read_is_refused_without_a_hub_call() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, f"{READ}!user=ben")
    with pytest.raises(NarrowingRefusedError, match="may not read cat/"):
        await tokens.get(("cat", ""))
    assert hub.calls == []
    hub.fail = HubError("the hub answered POST ...: Not assigning requested scopes", 400)
    with pytest.raises(NarrowingRefusedError, match="Not assigning requested scopes") as err:
        await tokens.get(("ben", ""))
    assert err.value.code == 400
    hub.fail = HubError("cannot reach the hub", 599)
    with pytest.raises(HubError):  # not a refusal: the stream retries it
        await tokens.get(("ben", ""))


class Stream:
    """A stream that uses a server's token (what StatusClient does with a token_source)."""

    def __init__(self, tokens: ServerTokens, key: tuple[str, str]) -> None:
        self.tokens, self.key = tokens, key
        self.credential: str | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        self.credential = (await self.tokens.get(self.key)).token

    async def reconnect(self) -> None:
        self.reconnects += 1
        await self.connect()


async def test_a_due_token_is_renewed_its_streams_moved_then_the_old_one_revoked() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, READ)
    stream = Stream(tokens, ("ben", ""))
    await stream.connect()
    old = tokens.current(("ben", ""))
    assert old is not None and tokens.take_due() == [] and tokens.next_rotation_in() == 37.5
    clock.now += 37.5
    assert tokens.take_due() == [old] and tokens.take_due() == []  # handed out once
    assert await tokens.rotate(("ben", ""), [stream])
    new = tokens.current(("ben", ""))
    assert new is not None and new.token != old.token
    assert stream.reconnects == 1 and stream.credential == new.token
    assert set(hub.live) == {new.id} and tokens.rotated == 1
    # the hub unreachable: the old token stays, due again a little later
    clock.now = new.rotate_at
    assert tokens.take_due() == [new]
    hub.fail = HubError("cannot reach the hub", 599)
    assert not await tokens.rotate(("ben", ""), [stream])
    assert tokens.current(("ben", "")) is new and new.rotate_at == clock.now + retry_delay(
        clock.now, new.expires_at
    )
    assert stream.credential == new.token
    hub.fail = None
    await tokens.aclose()
    assert hub.live == {}


class Opening(Stream):
    """A stream whose connection was opening with the old token when told to reconnect:
    it keeps that token until the connection opens (then it is closed and reopened)."""

    async def reconnect(self) -> None:
        self.reconnects += 1


async def test_the_old_token_is_revoked_only_once_no_stream_still_uses_it() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, READ)
    stream = Opening(tokens, ("ben", ""))
    await stream.connect()
    old = stream.credential
    in_use_at_revoke: list[str | None] = []
    record = hub.call

    async def call(method: str, path: str, **kw: Any) -> Any:
        if method == "DELETE":
            in_use_at_revoke.append(stream.credential)
        return await record(method, path, **kw)

    hub.call = call
    rotation = asyncio.ensure_future(tokens.rotate(("ben", ""), [stream]))
    await asyncio.sleep(0.3)
    assert not rotation.done() and in_use_at_revoke == []  # still waiting for the stream
    await stream.connect()  # it opened, was closed, and took the new token
    assert await asyncio.wait_for(rotation, 5)
    assert stream.credential != old and in_use_at_revoke == [stream.credential]
    await tokens.aclose()


async def test_close_revokes_tokens_being_replaced_too() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, READ)
    await tokens.get(("ben", ""))
    renewed = await tokens.renew(("ben", ""))
    assert renewed is not None and len(hub.live) == 2  # the caller never revoked the old
    await tokens.aclose()
    assert hub.live == {}
    tokens.discard(("ben", ""))  # idempotent after close
    await tokens.aclose()


async def test_a_mint_in_flight_when_the_fleet_closes_is_revoked_too() -> None:
    """The stream that asked is cancelled while the hub is still minting: the hub makes
    the token all the same, so close waits for its answer and revokes it; and nothing is
    minted after close."""
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, READ)
    hub.gate = asyncio.Event()
    asking = asyncio.ensure_future(tokens.get(("ben", "")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert hub.in_flight == 1
    asking.cancel()
    closing = asyncio.ensure_future(tokens.aclose())
    await asyncio.sleep(0)
    hub.gate.set()  # the hub answers after its caller went away
    await asyncio.wait_for(closing, 5)
    assert tokens.minted == 1 and hub.live == {} and tokens.held() == []
    with pytest.raises(HubError):
        await tokens.get(("cat", ""))
    assert tokens.minted == 1


async def test_hub_calls_are_bounded_however_many_servers_start_at_once() -> None:
    hub, clock = FakeHub(), Clock()
    tokens = tokens_for(hub, clock, READ, max_calls=3)
    hub.gate = asyncio.Event()
    gets = [asyncio.ensure_future(tokens.get((f"u{i}", ""))) for i in range(20)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert hub.in_flight == 3
    hub.gate.set()
    await asyncio.gather(*gets)
    assert hub.most_in_flight == 3 and tokens.minted == 20
    await tokens.aclose()
    assert hub.most_in_flight == 3 and hub.live == {}


def test_a_service_without_a_token_owner_cannot_mint() -> None:
    with pytest.raises(NarrowingRefusedError, match="users only"):
        ServerTokens(FakeHub(), model("service", "exporter", "tokens", READ))
