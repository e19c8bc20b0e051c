"""Reference servers: the same frames, fanned out the plainest ways tornado allows.

``--mode tornado``: ``write_message(same_str)`` to every connection (with
``--compression``, each connection deflates with its own context, tornado's default).
``--mode raw``: one prebuilt frame, ``socket.send`` to every connection (a would-block
send is counted, not retried: this is the floor, not a server).

Every ``--interval`` seconds the frame is the template sample (a real sysmon-nb status
frame) with a fresh ``seq`` and ``time``. No auth, no pings, no history: only the
fan-out. ``GET /ready`` answers once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from jupyter_server_ext.fanout import Frame
from sysmon_nb.protocol import dumps

from .common import raise_nofile

clients: set[WebSocketHandler] = set()
would_block = 0


class FloorHandler(WebSocketHandler):
    compression = False

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.compression else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        clients.add(self)

    def on_close(self) -> None:
        clients.discard(self)

    def on_message(self, message: str | bytes) -> None:
        pass


class Ready(web.RequestHandler):
    def get(self) -> None:
        self.finish({"clients": len(clients), "would_block": would_block})


async def publish(template: dict[str, Any], mode: str, interval: float) -> None:
    global would_block
    seq = 0
    next_tick = time.monotonic()
    while True:
        next_tick += interval
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        seq += 1
        text = dumps({**template, "seq": seq, "time": time.time()})
        if mode == "tornado":
            for handler in list(clients):
                try:
                    handler.write_message(text)
                except WebSocketClosedError:
                    clients.discard(handler)
        else:
            data = Frame(text).wire()
            for handler in list(clients):
                conn: Any = handler.ws_connection
                if conn is None:
                    continue
                try:
                    if conn.stream.socket.send(data) < len(data):
                        would_block += 1
                except BlockingIOError:
                    would_block += 1
                except OSError:
                    clients.discard(handler)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["tornado", "raw"], required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--compression", action="store_true")
    args = parser.parse_args()
    raise_nofile()
    with open(args.template) as f:
        template = json.load(f)
    FloorHandler.compression = args.compression
    asyncio.run(serve(args.port, template, args.mode, args.interval))


async def serve(port: int, template: dict[str, Any], mode: str, interval: float) -> None:
    app = web.Application([(r"/ws", FloorHandler), (r"/ready", Ready)])
    app.listen(port, address="127.0.0.1", backlog=1024)
    await publish(template, mode, interval)


if __name__ == "__main__":
    main()
