"""JWTIdentityProvider through a real jupyter_server: who gets in, who does not, and
what happens when a token runs out while connected."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import websockets
from tornado.httpclient import HTTPClientError

from jupyter_server_ext.auth import JWTIdentityProvider
from jupyter_server_ext.errors import ConfigError
from sysmon_nb.protocol import CLOSE_CREDENTIALS_EXPIRED

from .conftest import eventually, recv_json, recv_type
from .jwt_tools import (
    AUDIENCE,
    ISSUER,
    OTHER_PRIVATE_KEY,
    PRIVATE_KEY,
    PUBLIC_PEM,
    SECRET,
    b64,
    bearer,
    claims,
    hmac_token,
    provider_config,
    raw_token,
    server_config,
    token,
)
from .test_handlers import assert_still_serving, refused


@pytest.fixture
def jwt_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``c.JWTIdentityProvider``: RS256 with a public key unless a test asks otherwise;
    ``{"use_jwks": True}`` takes the keys from the local JWKS endpoint instead."""
    settings = dict(getattr(request, "param", {}))
    if settings.pop("use_jwks", False):
        settings.update(public_key="", jwks_url=request.getfixturevalue("jwks").url)
    return provider_config(**settings)


@pytest.fixture
def jp_server_config(jwt_config: dict[str, Any], sysmon_config: dict[str, Any]) -> Any:
    return server_config(jwt_config, sysmon_config)


def tampered() -> str:
    """A non-admin's valid token whose payload is then changed to claim the admin role."""
    head, _, sig = token(roles=["reader"]).split(".")
    body = b64(json.dumps(claims(roles=["admin"])).encode())
    return f"{head}.{body}.{sig}"


# Each of these is refused before the upgrade; a valid admin token is admitted.
REFUSED: dict[str, Any] = {
    "no credentials": lambda: {},
    "wrong server token": lambda: {"Authorization": "token not-the-token"},
    "bearer that is not a JWT": lambda: {"Authorization": "Bearer not-the-token"},
    "signed with the wrong key": lambda: bearer(token(key=OTHER_PRIVATE_KEY)),
    "alg none": lambda: bearer(raw_token({"alg": "none", "typ": "JWT"}, claims())),
    "alg none, upper case": lambda: bearer(raw_token({"alg": "NONE"}, claims(), b"x")),
    "algorithm not in the list": lambda: bearer(token(alg="RS512")),
    "public key as HMAC secret": lambda: bearer(hmac_token(PUBLIC_PEM.encode(), claims())),
    "wrong aud": lambda: bearer(token(aud="another-service")),
    "wrong iss": lambda: bearer(token(iss="https://evil.example.test/")),
    "expired": lambda: bearer(token(exp=int(time.time()) - 120)),
    "nbf in the future": lambda: bearer(token(nbf=int(time.time()) + 120)),
    "missing exp": lambda: bearer(token(exp=None)),
    "missing iss": lambda: bearer(token(iss=None)),
    "missing aud": lambda: bearer(token(aud=None)),
    "payload altered after signing": lambda: bearer(tampered()),
    "valid without the admin role": lambda: bearer(token(roles=["reader"])),
    "valid without any roles": lambda: bearer(token(roles=None)),
    "valid with an empty subject": lambda: bearer(token(sub="")),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_before_the_upgrade_and_others_keep_streaming(
    connect: Any, jp_fetch: Any, case: str
) -> None:
    async with connect("metrics=cpu", headers=bearer(token())) as admin:
        assert (await recv_json(admin))["type"] == "hello"
        headers = REFUSED[case]()
        code, body = await refused(connect, "metrics=cpu", headers=headers)
        assert code == 403, body
        assert "Traceback" not in json.dumps(body)
        # the status route refuses the same credentials
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("sysmon", "api", "status", headers=headers or {"Authorization": ""})
        assert err.value.code == 403
        # the admitted admin is unaffected
        assert "cpu" in await recv_type(admin, "status")
    await assert_still_serving(connect)


async def test_valid_admin_token_streams_and_hello_says_when_it_expires(connect: Any) -> None:
    exp = int(time.time()) + 300
    async with connect("metrics=cpu", headers=bearer(token(exp=exp))) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello"
        assert hello["expires_at"] == exp
        assert "cpu" in await recv_type(ws, "status")
        # a JWT is sent with every request: no login cookie that would outlive it
        assert "Set-Cookie" not in ws.response.headers


async def test_server_token_as_bearer_is_still_plain_token_auth(
    connect: Any, jp_auth_header: dict[str, str]
) -> None:
    server_token = jp_auth_header["Authorization"].split()[1]
    async with connect("metrics=cpu", headers={"Authorization": f"Bearer {server_token}"}) as ws:
        hello = await recv_json(ws)
    assert hello["expires_at"] is None  # the owner's token does not expire


@pytest.mark.parametrize(
    "jwt_config",
    [{"algorithms": ["HS256"], "public_key": "", "secret": SECRET}],
    indirect=True,
)
async def test_hmac_configuration(connect: Any) -> None:
    async with connect("metrics=cpu", headers=bearer(token(SECRET, "HS256"))) as ws:
        assert (await recv_json(ws))["type"] == "hello"
    # an RS256 token, however well signed, is not accepted by an HS-only server
    code, _ = await refused(connect, headers=bearer(token()))
    assert code == 403
    code, _ = await refused(connect, headers=bearer(token("x" * 40, "HS256")))
    assert code == 403


@pytest.mark.parametrize("jwt_config", [{"roles_claim": "realm_access.roles"}], indirect=True)
@pytest.mark.parametrize("sysmon_config", [{"admin_role": "sysmon-admin"}], indirect=True)
async def test_nested_roles_claim_and_custom_admin_role(connect: Any) -> None:
    good = token(roles=None, realm_access={"roles": ["sysmon-admin", "x"]})
    async with connect("metrics=cpu", headers=bearer(good)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
    for roles in (["admin"], "admin", {"sysmon-admin": True}):
        bad = token(roles=None, realm_access={"roles": roles})
        code, body = await refused(connect, headers=bearer(bad))
        assert code == 403
        assert "not an administrator" in body["message"]


async def test_roles_as_a_space_separated_string(connect: Any) -> None:
    async with connect("metrics=cpu", headers=bearer(token(roles="reader admin"))) as ws:
        assert (await recv_json(ws))["type"] == "hello"


async def test_cookie_upgrade_from_a_foreign_origin_is_refused(
    connect: Any, jp_fetch: Any, jp_http_port: int
) -> None:
    """Cross-site WebSocket hijacking: a browser sends the victim's cookie to a socket
    opened by another site's page; the Origin check must stop it."""
    reply = await jp_fetch("api", "me")  # token auth; the server sets its login cookie
    cookie = reply.headers["Set-Cookie"].split(";")[0]
    own = f"http://127.0.0.1:{jp_http_port}"
    async with connect("metrics=cpu", headers={"Cookie": cookie}, origin=own) as ws:
        assert (await recv_json(ws))["type"] == "hello"  # the cookie itself is good
        with pytest.raises(websockets.InvalidStatus) as excinfo:
            async with connect(headers={"Cookie": cookie}, origin="https://evil.example.test"):
                pass
        assert excinfo.value.response.status_code == 403
        assert "cpu" in await recv_type(ws, "status")
    # A bearer JWT is explicit, like the server's token: a page elsewhere (a dashboard)
    # that holds one may connect; a browser never attaches it by itself.
    async with connect(headers=bearer(token()), origin="https://dashboard.example.test") as ws:
        assert (await recv_json(ws))["type"] == "hello"


async def test_login_page_and_password_login_still_work(
    connect: Any, jp_fetch: Any, jp_http_port: int, jp_auth_header: dict[str, str]
) -> None:
    """The provider keeps the server's login form: the token typed into it logs in
    (a cookie), a wrong one is told so (401, not a server error)."""
    page = await jp_fetch("login", headers={"Authorization": ""})
    assert page.code == 200
    assert b'name="password"' in page.body
    xsrf = next(
        c.split(";")[0].split("=", 1)[1]
        for c in page.headers.get_list("Set-Cookie")
        if c.startswith("_xsrf=")
    )
    server_token = jp_auth_header["Authorization"].split()[1]

    async def login(password: str) -> Any:
        return await jp_fetch(
            "login",
            method="POST",
            body=f"password={password}&_xsrf={xsrf}",
            headers={"Authorization": "", "Cookie": f"_xsrf={xsrf}"},
            follow_redirects=False,
            raise_error=False,
        )

    assert (await login("wrong")).code == 401
    reply = await login(server_token)
    assert reply.code == 302
    cookie = next(c for c in reply.headers.get_list("Set-Cookie") if c.startswith("username-"))
    own = f"http://127.0.0.1:{jp_http_port}"
    async with connect("metrics=cpu", headers={"Cookie": cookie.split(";")[0]}, origin=own) as ws:
        assert (await recv_json(ws))["type"] == "hello"


# -- a JWT is a monitoring credential: sysmon's routes and nothing else ----------------------


async def api_code(jp_fetch: Any, *path: str, headers: dict[str, str], **kwargs: Any) -> int:
    try:
        reply = await jp_fetch(*path, headers=headers, **kwargs)
    except HTTPClientError as err:
        return err.code
    return int(reply.code)


@pytest.mark.parametrize("roles", [["admin"], ["viewer"]], ids=["admin", "non-admin"])
async def test_a_jwt_opens_sysmon_and_nothing_else(
    sysmon: Any, jp_fetch: Any, jp_ws_fetch: Any, roles: list[str]
) -> None:
    jwt_headers = bearer(token(roles=roles))
    # the owner (the server's token, as the provider's fallback) starts a kernel to aim at
    kernel = json.loads(
        (await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))).body
    )
    try:
        kernels_before = json.loads((await jp_fetch("api", "kernels")).body)
        new_kernel = json.dumps({"name": "python3"})
        assert await api_code(jp_fetch, "api", "kernels", method="POST", body=new_kernel,
                              headers=jwt_headers) == 403  # fmt: skip
        for path in (
            ("api", "kernels"),
            ("api", "kernels", kernel["id"]),
            ("api", "sessions"),
            ("api", "contents"),
            ("api", "terminals"),
            ("api", "me"),
            ("api", "kernelspecs"),
            ("metrics",),  # jupyter_server's own
        ):
            assert await api_code(jp_fetch, *path, headers=jwt_headers) == 403, path
        terminal = await api_code(jp_fetch, "api", "terminals", method="POST", body="{}",
                                  headers=jwt_headers)  # fmt: skip
        assert terminal == 403
        with pytest.raises(HTTPClientError) as channels:
            await jp_ws_fetch("api", "kernels", kernel["id"], "channels", headers=jwt_headers)
        assert channels.value.code == 403
        assert json.loads((await jp_fetch("api", "kernels")).body) == kernels_before
    finally:
        await jp_fetch("api", "kernels", kernel["id"], method="DELETE")
    # sysmon's own routes: as before (the admin role decides)
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    expected = 200 if roles == ["admin"] else 403
    for path in (("sysmon", "api", "status"), ("sysmon", "metrics")):
        assert await api_code(jp_fetch, *path, headers=jwt_headers) == expected, path


# -- expiry while connected -------------------------------------------------------------


async def test_connection_is_closed_with_4401_at_exp(connect: Any, sysmon: Any) -> None:
    exp = int(time.time()) + 3
    async with (
        connect("metrics=cpu", headers=bearer(token())) as bystander,
        connect("metrics=cpu", headers=bearer(token(exp=exp))) as ws,
    ):
        hello = await recv_json(ws)
        assert hello["expires_at"] == exp
        await recv_json(bystander)
        with pytest.raises(websockets.ConnectionClosed) as excinfo:
            for _ in range(200):
                await recv_json(ws)
        closed_at = time.time()
        assert excinfo.value.rcvd is not None
        assert excinfo.value.rcvd.code == CLOSE_CREDENTIALS_EXPIRED
        assert excinfo.value.rcvd.reason == "credentials expired"
        # at exp, not before it (the server honours leeway only at the door) nor late
        assert exp <= closed_at < exp + 1.0, closed_at - exp
        assert "cpu" in await recv_type(bystander, "status")
    await eventually(lambda: not sysmon.connections)


async def test_closing_first_cancels_the_expiry_timer(connect: Any, sysmon: Any) -> None:
    async with connect("metrics=cpu", headers=bearer(token(exp=int(time.time()) + 60))) as ws:
        await recv_json(ws)
        (handler,) = sysmon.connections
        watcher = handler._watcher
        assert watcher._timer is not None
    await eventually(lambda: not sysmon.connections)
    assert watcher._timer is None and watcher._done


# -- JWKS ---------------------------------------------------------------------------------


class JWKSServer:
    """A local JWKS endpoint whose key set the test changes; counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, kid: str, private_key: Any) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})


@pytest.fixture(scope="module")
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    server.publish("k1", PRIVATE_KEY)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(10)


@pytest.mark.parametrize("jwt_config", [{"use_jwks": True}], indirect=True)
async def test_jwks_keys_cached_unknown_kid_refreshed_once(jwks: JWKSServer, connect: Any) -> None:
    async def admitted(value: str) -> bool:
        try:
            async with connect("metrics=cpu", headers=bearer(value)) as ws:
                return (await recv_json(ws))["type"] == "hello"
        except websockets.InvalidStatus as err:
            assert err.response.status_code == 403
            return False

    assert await admitted(token(kid="k1"))
    assert jwks.fetches == 1
    assert await admitted(token(kid="k1"))
    assert jwks.fetches == 1  # cached
    # the issuer rotates in a new key: its first token makes the server refetch once
    jwks.publish("k2", OTHER_PRIVATE_KEY)
    assert await admitted(token(OTHER_PRIVATE_KEY, kid="k2"))
    assert jwks.fetches == 2
    # made-up key ids do not turn into a stream of requests to the key server
    assert not await admitted(token(kid="k3"))
    assert not await admitted(token(kid="k4"))
    assert jwks.fetches == 2
    # a known kid with the wrong key's signature
    assert not await admitted(token(OTHER_PRIVATE_KEY, kid="k1"))
    await assert_still_serving(connect)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


@pytest.mark.parametrize(
    "jwt_config",
    [{"public_key": "", "jwks_url": f"http://127.0.0.1:{closed_port()}/jwks.json"}],
    indirect=True,
)
async def test_unreachable_jwks_refuses_jwts_and_the_server_carries_on(connect: Any) -> None:
    code, body = await refused(connect, headers=bearer(token(kid="k1")))
    assert code == 403
    assert "Traceback" not in json.dumps(body)
    await assert_still_serving(connect)  # the server's own token still works


@pytest.mark.parametrize("jwt_config", [{"use_jwks": True}], indirect=True)
async def test_a_made_up_kid_is_logged_cut_not_whole(
    jwks: JWKSServer, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "k" * 40_000
    with caplog.at_level(logging.DEBUG):
        code, _ = await refused(connect, headers=bearer(token(kid=huge)))
        assert code == 403
    lines = [r.getMessage() for r in caplog.records if "refused a bearer JWT" in r.getMessage()]
    assert lines and all(len(line) < 400 for line in lines), [len(line) for line in lines]
    assert "no JWKS key with kid 'kkkk" in lines[0] and lines[0].endswith("\u2026")
    assert not [r for r in caplog.records if huge in r.getMessage()]


# -- misconfiguration stops the server ------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithms": []}, "set algorithms"),
        ({"algorithms": ["none"]}, "unsupported algorithms"),
        ({"algorithms": ["RS256", "HS256"]}, "mix HMAC and public-key"),
        ({"public_key": ""}, "exactly one of"),
        ({"secret": SECRET}, "exactly one of"),
        ({"public_key": "", "secret": SECRET}, "need public_key or jwks_url"),
        ({"algorithms": ["HS256"]}, "HMAC algorithms need secret"),
        ({"algorithms": ["HS256"], "public_key": "", "secret": "short"}, "at least 32 bytes"),
        ({"algorithms": ["HS512"], "public_key": "", "secret": SECRET}, "at least 64 bytes"),
        ({"algorithms": ["HS256"], "public_key": "", "secret": PUBLIC_PEM}, "looks like a PEM"),
        ({"public_key": "not a key"}, "not a usable PEM public key"),
        ({"issuer": ""}, "set issuer"),
        ({"audience": ""}, "set audience"),
    ],
)
def test_misconfiguration_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JWTIdentityProvider(**provider_config(**settings))


def test_leeway_is_small() -> None:
    with pytest.raises(ConfigError, match="leeway"):
        JWTIdentityProvider(**provider_config(leeway=3600))


def test_misconfigured_server_does_not_start(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.identity_provider_class=jupyter_server_ext.auth.JWTIdentityProvider",
        "--JWTIdentityProvider.algorithms=HS256",
        "--JWTIdentityProvider.algorithms=RS256",
        f"--JWTIdentityProvider.secret={SECRET}",
        f"--JWTIdentityProvider.issuer={ISSUER}",
        f"--JWTIdentityProvider.audience={AUDIENCE}",
    ]
    if os.getuid() == 0:
        argv.append("--allow-root")
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode != 0
    assert "JWTIdentityProvider is misconfigured" in done.stderr
    assert "mix HMAC and public-key" in done.stderr


async def test_verify_checks_nothing_it_should_not_trust(jp_serverapp: Any) -> None:
    provider = jp_serverapp.identity_provider
    assert isinstance(provider, JWTIdentityProvider)
    assert (await provider.verify(token()))["sub"] == "alice"
