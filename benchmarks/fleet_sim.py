"""A simulated JupyterHub fleet in one process: ``python -m benchmarks.fleet_sim N PORT``.

One ``websockets`` server answers, on one port, both the hub's REST API (``GET
/hub/api/user`` and the paginated ``/hub/api/users``: N users ``u0000``… each with a
ready default server) and every server's ``/user/<name>/sysmon/ws``, speaking protocol
1: a hello, a history of the latest sample when asked, then a status frame per interval.
One timer sends every connection its frame each tick (no task per connection). The
frames carry realistic groups (cpu, memory, disk with a home mount, container, jupyter,
processes) with values that differ per server and move per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

TOKEN = "fleet-sim-token"
PAGE_MAX = 200


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
    def __init__(self, count: int, interval: float) -> None:
        self.names = users(count)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.interval = interval
        self.seq = 0
        self.connections: dict[ServerConnection, int] = {}

    def listing(self, query: dict[str, list[str]]) -> dict[str, Any]:
        offset = int(query.get("offset", ["0"])[0])
        limit = min(PAGE_MAX, int(query.get("limit", [str(PAGE_MAX)])[0]))
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

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"token {TOKEN}":
            return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
        parts = urlsplit(request.path)
        if parts.path == "/hub/api/user":
            body: Any = {"name": "admin", "kind": "user", "admin": True,
                         "scopes": ["list:users", "read:servers", "access:servers"]}  # fmt: skip
        elif parts.path == "/hub/api/users":
            body = self.listing(parse_qs(parts.query))
        elif parts.path.endswith("/sysmon/ws"):
            return None  # the WebSocket handshake goes on
        else:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        data = json.dumps(body).encode()
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return Response(200, "OK", headers, data)

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        user = self.index.get(ws.request.path.split("/")[2], 0)
        hello = {"type": "hello", "protocol": 1, "server": "sim", "host": f"node-{user % 40}",
                 "interval": self.interval, "server_id": f"sim-{user}",
                 "metrics": ["cpu", "memory", "disk", "processes", "container", "jupyter"],
                 "subscribed": ["cpu", "memory", "disk", "processes", "container", "jupyter"],
                 "expires_at": None}  # fmt: skip
        await ws.send(json.dumps(hello))
        if "history=" in ws.request.path:
            sample = status(user, self.seq, self.interval)
            del sample["type"]
            await ws.send(json.dumps({"type": "history", "samples": [sample]}))
        self.connections[ws] = user
        try:
            await ws.wait_closed()
        finally:
            self.connections.pop(ws, None)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.seq += 1
            for ws, user in list(self.connections.items()):
                frame = json.dumps(status(user, self.seq, self.interval))
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(frame)


async def main(count: int, port: int, interval: float) -> None:
    fleet = Fleet(count, interval)
    async with serve(
        fleet.handler, "127.0.0.1", port, process_request=fleet.process_request, backlog=1024
    ):
        print("ready", flush=True)
        await fleet.tick()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
