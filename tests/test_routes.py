"""What each identity gets on each route: sysmon's, and the server's own that a monitoring
credential must never open. docs/security.md's table is this file's ``EXPECTED`` (a test
below keeps the two equal).

One real server per identity source, shared by its cells: here a ``jupyter server``
process with ``JWTIdentityProvider`` (JWTs, and its fallback, the server's own token);
the hub's identities run through a real JupyterHub in tests/test_hub.py
(``test_hub_route``) with the same probes.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from .jwt_tools import AUDIENCE, ISSUER, PUBLIC_PEM, bearer, token
from .servers import TOKEN, JupyterProcess

ROOT = Path(__file__).resolve().parent.parent

#: The routes probed, in the table's order; what each probe does is in :func:`probe`.
ROUTES = (
    "sysmon/ws",
    "sysmon/api/status",
    "sysmon/metrics",
    "/metrics",
    "api/kernels",
    "api/kernels/<id>/channels",
    "api/sessions",
    "api/contents",
    "api/terminals",
    "api/me",
    "lab",
)

#: What a probe found. The docs' table uses these words.
STREAM = "stream"  # upgraded, hello first
OK = "200"
SYSMON_SERIES = "200 sysmon_*"
NO_SYSMON = "200 no sysmon_*"
CREATED = "201"
UPGRADED = "101"
REFUSED = "403"
LOGIN = "302 login"

_ALL_JUPYTER = {
    "/metrics": NO_SYSMON,
    "api/kernels": CREATED,
    "api/kernels/<id>/channels": UPGRADED,
    "api/sessions": OK,
    "api/contents": OK,
    "api/terminals": OK,
    "api/me": OK,
    "lab": OK,
}
_SYSMON = {"sysmon/ws": STREAM, "sysmon/api/status": OK, "sysmon/metrics": SYSMON_SERIES}
_NO_SYSMON = {"sysmon/ws": REFUSED, "sysmon/api/status": REFUSED, "sysmon/metrics": REFUSED}
_NO_JUPYTER = {route: REFUSED for route in _ALL_JUPYTER}

#: identity -> route -> outcome. ``admin``, ``reader``, ``hub-owner``, ``plain-user`` and
#: ``hub-none`` are tested through the real hub (tests/test_hub.py), the rest here.
EXPECTED: dict[str, dict[str, str]] = {
    # a JupyterHub admin (access to every server): JupyterHub's grant, sysmon's admin
    "admin": {**_SYSMON, **_ALL_JUPYTER},
    # a token with custom:sysmon:read only: sysmon's routes, nothing else
    "reader": {**_SYSMON, **_NO_JUPYTER},
    # the user the hub spawned the server for (allow_owner off under a hub)
    "hub-owner": {**_NO_SYSMON, **_ALL_JUPYTER},
    # a hub user given access to the server (shared access), not an administrator
    "plain-user": {**_NO_SYSMON, **_ALL_JUPYTER},
    # the server's own token, no hub (allow_owner on by default there)
    "owner": {**_SYSMON, **_ALL_JUPYTER},
    "jwt-admin": {**_SYSMON, **_NO_JUPYTER, "lab": LOGIN},
    "jwt-non-admin": {**_NO_SYSMON, **_NO_JUPYTER, "lab": LOGIN},
    "none": {**_NO_SYSMON, **_NO_JUPYTER, "lab": LOGIN},
    "hub-none": {**_NO_SYSMON, **_NO_JUPYTER, "lab": LOGIN},
}
#: the hub's provider answers a known token without access to the server with 403, also
#: where it would redirect someone not logged in to the login page
EXPECTED["reader"]["lab"] = REFUSED

#: The identities of the JWT server here, and how each presents itself.
LOCAL: dict[str, dict[str, str]] = {
    "owner": {"Authorization": f"token {TOKEN}"},
    "jwt-admin": {},  # a fresh token per probe: see headers_for
    "jwt-non-admin": {},
    "none": {},
}


def headers_for(identity: str) -> dict[str, str]:
    if identity == "jwt-admin":
        return bearer(token(roles=["admin"]))
    if identity == "jwt-non-admin":
        return bearer(token(roles=["viewer"]))
    return dict(LOCAL[identity])


# -- probes -------------------------------------------------------------------------------


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, redirects not followed: (status, headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def ws_outcome(url: str, headers: dict[str, str], hello: bool) -> str:
    try:
        with ws_connect(url, additional_headers=headers, open_timeout=30) as ws:
            if hello:
                first = json.loads(ws.recv(timeout=30))
                return STREAM if first.get("type") == "hello" else f"101 {first}"
            return UPGRADED
    except InvalidStatus as err:
        return str(err.response.status_code)


def probe(base: str, route: str, headers: dict[str, str], kernel_id: str) -> str:
    """What ``route`` of the server at ``base`` (``http://host:port/prefix/``) gives the
    bearer of ``headers``: one of the outcome words above, or the status code."""
    ws_base = "ws" + base[len("http") :]
    if route == "sysmon/ws":
        return ws_outcome(ws_base + "sysmon/ws?metrics=cpu", headers, hello=True)
    if route == "api/kernels/<id>/channels":
        return ws_outcome(f"{ws_base}api/kernels/{kernel_id}/channels", headers, hello=False)
    if route == "api/kernels":  # try to run code: start a kernel
        body = json.dumps({"name": "python3"})
        status, _, reply = request(base + "api/kernels", "POST", headers, body)
        if status == 201:
            request(f"{base}api/kernels/{json.loads(reply)['id']}", "DELETE", headers)
        return str(status)
    status, reply_headers, body = request(base + route.lstrip("/"), headers=headers)
    if route.endswith("metrics") and status == 200:
        return SYSMON_SERIES if b"\nsysmon_" in b"\n" + body else NO_SYSMON
    if status == 302 and re.search(r"/login|/oauth2/authorize", reply_headers["location"]):
        return LOGIN
    return str(status)


# -- a JWT server, shared by every cell of its identities -------------------------------


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterProcess]:
    tmp = tmp_path_factory.mktemp("routes")
    config = tmp / "jupyter-config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {
                    "identity_provider_class": "jupyter_server_ext.auth.JWTIdentityProvider"
                },
                "JWTIdentityProvider": {
                    "algorithms": ["RS256"],
                    "public_key": PUBLIC_PEM,
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                },
            }
        )
    )
    server = JupyterProcess(tmp, interval=0.5)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kernel_id(jwt_server: JupyterProcess) -> Iterator[str]:
    """A kernel of the owner's, for the channels probes."""
    owner = headers_for("owner")
    status, _, body = request(
        jwt_server.url + "api/kernels", "POST", owner, json.dumps({"name": "python3"})
    )
    assert status == 201, body
    kernel = json.loads(body)["id"]
    yield kernel
    request(f"{jwt_server.url}api/kernels/{kernel}", "DELETE", owner)


CELLS = [(identity, route) for identity in LOCAL for route in ROUTES]


@pytest.mark.timeout(240)  # the first cell starts the server and its kernel
@pytest.mark.parametrize(("identity", "route"), CELLS, ids=[f"{i}-{r}" for i, r in CELLS])
def test_route(jwt_server: JupyterProcess, kernel_id: str, identity: str, route: str) -> None:
    got = probe(jwt_server.url, route, headers_for(identity), kernel_id)
    assert got == EXPECTED[identity][route], (identity, route)


# -- the docs say the same -------------------------------------------------------------------


def docs_table() -> dict[str, dict[str, str]]:
    """docs/security.md's route table: identity -> route -> outcome."""
    text = (ROOT / "docs/security.md").read_text()
    start = text.index("<!-- route-table -->")
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in text[start:].splitlines()[1:]
        if line.startswith("|")
    ]
    header, body = rows[0], [r for r in rows[2:] if r[0] in ROUTES or r[0] == "tested by"]
    identities = [re.search(r"\(([\w-]+)\)", h).group(1) for h in header[1:]]  # type: ignore[union-attr]
    table: dict[str, dict[str, str]] = {i: {} for i in identities}
    for row in body:
        if row[0] == "tested by":
            continue
        for identity, cell in zip(identities, row[1:]):
            table[identity][row[0]] = cell
    return table


def test_the_docs_table_is_this_one() -> None:
    assert docs_table() == EXPECTED
