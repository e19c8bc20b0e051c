"""A simulated JupyterHub fleet in one process: ``python -m benchmarks.fleet_sim N PORT``.

One tornado server answers, on one port, both the hub's REST API and every server's
``/user/<name>/sysmon/ws``, speaking protocol 1: a hello, a history of the latest sample
when asked, then a status frame per interval. One timer sends every connection its frame
each tick (no task per connection). The frames carry realistic groups (cpu, memory, disk
with a home mount, container, jupyter, processes) with values that differ per server and
move per tick.

The REST API is the part of the hub's that the fleet uses, with the hub's rules for
tokens: ``GET hub/api/user`` and the paginated ``GET hub/api/users`` (N users ``u0000``…
each with a ready default server) answer the fleet's token (:data:`TOKEN`, an admin's);
``POST``/``GET hub/api/users/admin/tokens`` and ``DELETE .../tokens/<id>`` mint, list
and revoke tokens of that admin with one ``access:servers!server=<user>/`` or
``custom:sysmon:read!server=<user>/`` scope and an ``expires_in``. A server admits only a
live token minted for it (the fleet's own token is refused there, as a server should
never be sent it), and closes a connection with 4401 once its token has expired or been
revoked, as sysmon's re-check does. ``GET /sim/stats`` says what happened (tests read it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sys
import time
from typing import Any

from tornado import web, websocket

TOKEN = "fleet-sim-token"
PAGE_MAX = 200
ADMIN = "admin"


def users(count: int) -> list[str]:
    return [f"u{i:04d}" for i in range(count)]


def status(user: int, seq: int, interval: float) -> dict[str, Any]:
    wave = (user * 7 + seq * 13) % 100
    return {
        "type": "status",
        "seq": seq,
        "time": time.time(),
        "host": f"node-{user % 40}",
        "interval": interval,
        "errors": {},
        "cpu": {"percent": float(wave), "per_cpu": [float(wave)] * 4, "count": 4,
                "load_1m": 0.5, "load_5m": 0.4, "load_15m": 0.3},
        "memory": {"total_bytes": 8 << 30, "available_bytes": 6 << 30, "used_bytes": 2 << 30,
                   "percent": 25.0 + wave / 2, "swap_total_bytes": 0, "swap_used_bytes": 0,
                   "swap_percent": 0.0},
        "disk": {"read_bytes_per_s": 1000.0, "write_bytes_per_s": 2000.0,
                 "read_ops_per_s": 1.0, "write_ops_per_s": 2.0,
                 "mounts": [{"path": "/home/jovyan", "fstype": "nfs", "total_bytes": 10 << 30,
                             "used_bytes": 5 << 30, "percent": 50.0, "home": True}]},
        "container": {"cgroup": 2, "memory_limit_bytes": 4 << 30,
                      "memory_used_bytes": (2 << 30) + wave * (1 << 24),
                      "cpu_limit_cores": 2.0, "cpu_usage_cores": wave / 50},
        "jupyter": {"kernels": user % 4, "terminals": 0, "sessions": user % 4,
                    "kernel_usage": []},
        "processes": {"count": 40, "top_cpu": [
            {"pid": 100 + i, "name": "python", "user": "jovyan", "cpu_percent": 1.0,
             "rss_bytes": 1 << 26} for i in range(5)], "top_memory": []},
    }  # fmt: skip


class Fleet:
    """The simulated hub's state: users, minted tokens, open connections, counts."""

    def __init__(self, count: int, interval: float) -> None:
        self.names = users(count)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.interval = interval
        self.seq = 0
        self.connections: dict[ServerSocket, int] = {}
        #: token -> (id, scope, expires at (monotonic)).
        self.tokens: dict[str, tuple[str, str, float]] = {}
        self.ids = itertools.count(1)
        self.stats = {"minted": 0, "revoked": 0, "fleet_token_at_servers": 0,
                      "refused_at_servers": 0, "closed_4401": 0}  # fmt: skip

    def listing(self, offset: int, limit: int) -> dict[str, Any]:
        limit = min(PAGE_MAX, limit)
        page = self.names[offset : offset + limit]
        items = [
            {"name": n, "kind": "user", "admin": False,
             "servers": {"": {"name": "", "ready": True, "pending": None,
                              "url": f"/user/{n}/"}}}
            for n in page
        ]  # fmt: skip
        following = offset + limit < len(self.names)
        nxt = {"offset": offset + limit, "limit": limit, "url": ""} if following else None
        total = len(self.names)
        return {"items": items, "_pagination": {"offset": offset, "limit": limit,
                                                "total": total, "next": nxt}}  # fmt: skip

    def live(self, token: str, user: str) -> bool:
        """Whether ``token`` is a live token minted for ``user``'s default server."""
        minted = self.tokens.get(token)
        if minted is None or minted[2] <= time.monotonic():
            return False
        return minted[1].endswith(f"!server={user}/")

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.seq += 1
            for ws, user in list(self.connections.items()):
                if not self.live(ws.token, self.names[user]):
                    self.stats["closed_4401"] += 1
                    self.connections.pop(ws, None)
                    ws.close(4401, "credentials expired or revoked")
                    continue
                ws.write_message(json.dumps(status(user, self.seq, self.interval)))


def bearer(handler: web.RequestHandler) -> str:
    header = handler.request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value if scheme.lower() in ("token", "bearer") else ""


class HubAPI(web.RequestHandler):
    """``/hub/api/...``: what the fleet calls, for the fleet's token only."""

    def initialize(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def prepare(self) -> None:
        if bearer(self) != TOKEN:
            raise web.HTTPError(403)

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def get(self, path: str) -> None:
        if path == "user":
            scopes = ["list:users", "read:servers", "access:servers", "tokens"]
            self.reply({"name": ADMIN, "kind": "user", "admin": True, "groups": [],
                        "scopes": scopes})  # fmt: skip
        elif path == "users":
            offset = int(self.get_argument("offset", "0"))
            self.reply(self.fleet.listing(offset, int(self.get_argument("limit", "200"))))
        elif path == f"users/{ADMIN}/tokens":
            now = time.monotonic()
            tokens = [{"id": i, "scopes": [s], "note": "sim"}
                      for i, s, exp in self.fleet.tokens.values() if exp > now]  # fmt: skip
            self.reply({"api_tokens": tokens})
        else:
            raise web.HTTPError(404)

    def post(self, path: str) -> None:
        if path != f"users/{ADMIN}/tokens":
            raise web.HTTPError(404)
        body = json.loads(self.request.body or b"{}")
        scopes, expires_in = body.get("scopes"), body.get("expires_in")
        if not (isinstance(scopes, list) and len(scopes) == 1 and isinstance(expires_in, int)):
            raise web.HTTPError(400, "one scope and expires_in, please")
        token, token_id = secrets.token_hex(16), f"a{next(self.fleet.ids)}"
        self.fleet.tokens[token] = (token_id, scopes[0], time.monotonic() + expires_in)
        self.fleet.stats["minted"] += 1
        self.reply({"id": token_id, "token": token, "scopes": scopes}, 201)

    def delete(self, path: str) -> None:
        prefix = f"users/{ADMIN}/tokens/"
        token_id = path[len(prefix) :] if path.startswith(prefix) else None
        found = [t for t, (i, _, _) in self.fleet.tokens.items() if i == token_id]
        if not found:
            raise web.HTTPError(404)
        del self.fleet.tokens[found[0]]
        self.fleet.stats["revoked"] += 1
        self.set_status(204)
        self.finish()


class Stats(web.RequestHandler):
    def initialize(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def get(self) -> None:
        now = time.monotonic()
        live = sum(exp > now for _, _, exp in self.fleet.tokens.values())
        self.finish({**self.fleet.stats, "live_tokens": live,
                     "connections": len(self.fleet.connections)})  # fmt: skip


class ServerSocket(websocket.WebSocketHandler):
    """``/user/<name>/sysmon/ws`` of every simulated server."""

    def initialize(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.token = ""
        self.user = 0

    async def get(self, *args: Any, **kwargs: Any) -> None:
        name = self.path_args[0]
        self.token = bearer(self)
        if self.token == TOKEN:
            self.fleet.stats["fleet_token_at_servers"] += 1
        if name not in self.fleet.index or not self.fleet.live(self.token, name):
            self.fleet.stats["refused_at_servers"] += 1
            self.set_status(403)
            self.finish(json.dumps({"message": f"not a live token for {name}'s server"}))
            return
        self.user = self.fleet.index[name]
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        user, fleet = self.user, self.fleet
        groups = ["cpu", "memory", "disk", "processes", "container", "jupyter"]
        hello = {"type": "hello", "protocol": 1, "server": "sim", "host": f"node-{user % 40}",
                 "interval": fleet.interval, "server_id": f"sim-{user}",
                 "metrics": groups, "subscribed": groups, "expires_at": None}  # fmt: skip
        self.write_message(json.dumps(hello))
        if self.get_argument("history", None):
            sample = status(user, fleet.seq, fleet.interval)
            del sample["type"]
            self.write_message(json.dumps({"type": "history", "samples": [sample]}))
        fleet.connections[self] = user

    def on_message(self, message: str | bytes) -> None:
        pass  # subscriptions are ignored: every group is sent

    def on_close(self) -> None:
        self.fleet.connections.pop(self, None)


async def main(count: int, port: int, interval: float) -> None:
    fleet = Fleet(count, interval)
    app = web.Application(
        [
            (r"/hub/api/(.*)", HubAPI, {"fleet": fleet}),
            (r"/sim/stats", Stats, {"fleet": fleet}),
            (r"/user/([^/]+)/sysmon/ws", ServerSocket, {"fleet": fleet}),
        ],
        log_function=lambda handler: None,  # no access log: 403s are expected here
    )
    app.listen(port, "127.0.0.1", backlog=1024)
    print("ready", flush=True)
    await fleet.tick()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
