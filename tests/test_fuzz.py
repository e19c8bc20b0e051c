"""Property-based tests: random bytes and random JSON, as credentials or as client
messages, never crash the server and never admit anyone."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import jwt
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_server_ext.auth import AdminPolicy, InvalidCredentials, JWTIdentityProvider, JWTUser

from .conftest import recv_json, recv_type
from .jwt_tools import (
    AUDIENCE,
    ISSUER,
    PRIVATE_KEY,
    b64,
    bearer,
    provider_config,
    raw_token,
    server_config,
    token,
)
from .test_handlers import assert_still_serving

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
segment = st.binary(max_size=64).map(b64)
header_text = st.text(alphabet=string.printable[:95], max_size=300).map(str.strip)

#: Authorization header values: random text, random token-ish words, JWT-shaped garbage,
#: and JWTs whose header and payload are random JSON.
authorization_values = st.one_of(
    header_text,
    st.builds(lambda s: f"token {s}", header_text),
    st.builds(lambda s: f"Bearer {s}", header_text),
    st.builds(lambda a, b, c: f"Bearer {a}.{b}.{c}", segment, segment, segment),
    st.builds(
        lambda h, p, sig: bearer(raw_token(h, p, sig))["Authorization"],
        json_objects,
        json_objects,
        st.binary(max_size=64),
    ),
    st.builds(
        lambda alg, p: bearer(raw_token({"alg": alg, "typ": "JWT"}, p))["Authorization"],
        st.sampled_from(["none", "None", "HS256", "RS256", "ES256", ""]),
        json_objects,
    ),
)

#: For examples run against one real server (each example is a connection).
FUZZ = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture
def jp_server_config(sysmon_config: dict[str, Any]) -> Any:
    return server_config(provider_config(), sysmon_config)


# -- without a server: the verifier itself --------------------------------------------------


PROVIDER = JWTIdentityProvider(**provider_config())
POLICY = AdminPolicy.from_config((), (), "admin", False, None)


@settings(max_examples=300, deadline=None, database=None)
@given(value=st.one_of(st.text(max_size=400), authorization_values))
def test_verify_random_text_only_ever_refuses(value: str) -> None:
    candidate = value.removeprefix("Bearer ")
    with pytest.raises(InvalidCredentials):
        asyncio.run(PROVIDER.verify(candidate))


@settings(max_examples=150, deadline=None, database=None)
@given(extra=json_objects, roles=json_values, sub=json_values, exp_delta=json_values)
def test_signed_random_claims_admit_only_a_real_admin(
    extra: dict[str, Any], roles: Any, sub: Any, exp_delta: Any
) -> None:
    """Correctly signed, right issuer and audience, everything else random: the
    verifier either refuses or returns a user the policy judges by its roles alone."""
    claims = {**extra, "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles}
    claims["exp"] = exp_delta
    encoded = jwt.encode(claims, PRIVATE_KEY, algorithm="RS256")
    try:
        user = PROVIDER.user_from_claims(asyncio.run(PROVIDER.verify(encoded)))
    except InvalidCredentials:
        return
    assert isinstance(user, JWTUser) and user.username == sub
    expected = roles == "admin" or (isinstance(roles, str) and "admin" in roles.split())
    expected = expected or (isinstance(roles, list) and "admin" in roles)
    assert POLICY.check(user).allowed is expected


# -- through the real server: one server takes every example, then still serves --------


def test_random_credentials_never_admit_or_crash(jp_asyncio_loop: Any, connect: Any) -> None:
    async def attempt(value: str) -> None:
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with connect("metrics=cpu", headers={"Authorization": value}):
                pass
        assert excinfo.value.response.status_code == 403

    @FUZZ
    @given(value=authorization_values)
    def refused(value: str) -> None:
        jp_asyncio_loop.run_until_complete(attempt(value))

    refused()
    jp_asyncio_loop.run_until_complete(assert_still_serving(connect))


client_messages = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=2000),
    json_values.map(json.dumps),
    st.builds(
        lambda extra: json.dumps({"type": "subscribe", **extra}),
        st.dictionaries(st.sampled_from(["metrics", "type", "x"]), json_values, max_size=2),
    ),
    st.lists(st.sampled_from(["cpu", "memory", "gpu", "nope", ""]), max_size=5).map(
        lambda m: json.dumps({"type": "subscribe", "metrics": m})
    ),
)


async def converse(connect: Any, messages: list[Any]) -> None:
    """Each message gets an ``error`` or ``subscribed`` answer; the socket stays open."""
    async with connect("metrics=cpu", headers=bearer(token())) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        for message in messages:
            await ws.send(message)
            for _ in range(50):
                answer = await recv_json(ws)
                if answer["type"] in ("error", "subscribed"):
                    break
            else:
                raise AssertionError("no answer to a client message")
            assert "Traceback" not in json.dumps(answer)
        await ws.send(json.dumps({"type": "subscribe", "metrics": ["cpu"]}))
        assert (await recv_type(ws, "subscribed"))["metrics"] == ["cpu"]


def test_random_client_messages_are_answered_and_the_stream_goes_on(
    jp_asyncio_loop: Any, connect: Any
) -> None:
    @FUZZ
    @given(messages=st.lists(client_messages, min_size=1, max_size=5))
    def answered(messages: list[Any]) -> None:
        jp_asyncio_loop.run_until_complete(converse(connect, messages))

    answered()
    jp_asyncio_loop.run_until_complete(assert_still_serving(connect))
