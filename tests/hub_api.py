"""A stand-in for the hub's REST API, in a thread of this process: what a single-user
server asks the hub about a token (``GET /hub/api/user``), answered from a table and
counted.

The real hub runs in tests/test_hub.py; this one lets fast tests count the calls that
jupyterhub's own ``HubAuth`` makes in a real single-user-shaped server process (its
cache, its request, its error handling: nothing of it is replaced). The server runs in
its own process because jupyterhub's ``HubOAuth`` patches jupyter_server's handler
classes for the whole process (its XSRF check), as it may in a server of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer

from .servers import TOKEN

#: The single-user server the stand-in's tokens are judged for: bob's default server.
ACCESS_SCOPES = ["access:servers!server=bob/", "access:servers!user=bob"]
#: The server's own token with the hub (JUPYTERHUB_API_TOKEN).
SERVER_TOKEN = "stand-in-server-token"


def model(name: str, *scopes: str, admin: bool = False, kind: str = "user") -> dict[str, Any]:
    """A hub's answer about a token: its owner and the scopes the token holds."""
    return {"kind": kind, "name": name, "admin": admin, "groups": [], "scopes": list(scopes)}


#: token -> the hub's model of it
TOKENS: dict[str, dict[str, Any]] = {
    "admin-token": model("root", "access:servers", admin=True),
    "owner-token": model("bob", *ACCESS_SCOPES),
    "reader-token": model("monitor", "custom:sysmon:read"),
    "reader2-token": model("monitor2", "custom:sysmon:read!user=bob"),
    "reader3-token": model("monitor3", "custom:sysmon:read!server=bob/"),
    "other-reader-token": model("nosy", "custom:sysmon:read!user=alice"),
    "group-reader-token": model("ops", "custom:sysmon:read!group=ops"),
    "plain-token": model("eve", "read:users:name"),
    "admin2-token": model("root2", "access:servers", admin=True),
    # the token tests/servers.py's JupyterProcess waits with: an admin's here
    TOKEN: model("ready", "access:servers", admin=True),
}


class HubAPI:
    """``GET /hub/api/user`` on 127.0.0.1; ``calls`` counts the requests per token;
    ``down`` makes every answer a 502 (a hub behind its proxy, restarting)."""

    def __init__(self, tokens: dict[str, dict[str, Any]] | None = None) -> None:
        self.tokens = dict(TOKENS if tokens is None else tokens)
        self.calls: dict[str, int] = {}
        self.down = False
        outer = self

        class User(web.RequestHandler):
            def get(self) -> None:
                scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
                outer.calls[token] = outer.calls.get(token, 0) + 1
                if outer.down:
                    raise web.HTTPError(502)
                found = outer.tokens.get(token) if scheme.lower() == "token" else None
                if found is None:
                    raise web.HTTPError(403)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(found))

        self._app = web.Application([(r"/hub/api/user", User)])
        self._server: HTTPServer | None = None
        self.url = ""

    def start(self) -> None:
        """Listen on a free port, served by an event loop in a thread of its own."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hub/api"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def listen() -> None:
            self._server = HTTPServer(self._app)
            self._server.add_sockets([sock])

        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.stop()
                self._server = None

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def total(self, *tokens: str) -> int:
        return sum(self.calls.get(t, 0) for t in tokens) if tokens else sum(self.calls.values())


def hub_env(api_url: str, base_url: str = "/") -> dict[str, str]:
    """The environment a spawner gives bob's single-user server, for jupyterhub's
    ``JupyterHubIdentityProvider`` (its ``HubOAuth`` reads it)."""
    return {
        "JUPYTERHUB_API_URL": api_url,
        "JUPYTERHUB_API_TOKEN": SERVER_TOKEN,
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bob",
        "JUPYTERHUB_USER": "bob",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_SERVICE_PREFIX": base_url,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps(ACCESS_SCOPES),
    }
