"""A client process: ``count`` connections to one server, driven by JSON lines.

``--mode ws``: WebSocket clients (the ``websockets`` library) that record, for each
status frame, its ``seq``, its ``time`` and when it arrived. ``--mode poll``: HTTP
clients that GET the URL once per ``--interval`` on a kept-alive connection (how the
peers' front ends poll), each at its own phase.

stdout: one JSON line ``{"connected", "failed"}`` once connected, then one answer per
command read from stdin: ``stall`` / ``resume`` (only ``--stallable`` connections:
they stop and restart reading, with tiny socket buffers so the server feels it) and
``stop`` (report the frames timed in ``[start, end)``, then exit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection

from .common import raise_nofile

_HEAD = re.compile(r'"seq":(\d+),"time":([0-9.eE+-]+)')
CONNECT_CONCURRENCY = 32


class CountingConnection(ClientConnection):
    """Counts the bytes the server sends (frames as they are on the wire)."""

    wire_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.wire_bytes += len(data)
        super().data_received(data)


class Receiver:
    """One connection's record of what it received."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        # seq, frame time, arrival time, bytes received on the connection so far
        self.frames: list[tuple[int, float, float, int]] = []
        self.out_of_order = 0
        self.last_seq = -1
        self.reading = asyncio.Event()
        self.reading.set()
        self.close_code: int | None = None
        self.stopping = False

    def record(self, seq: int, sent: float, now: float, wire: int = 0) -> None:
        if seq <= self.last_seq:
            self.out_of_order += 1
        self.last_seq = seq
        self.frames.append((seq, round(sent, 6), round(now, 6), wire))

    def report(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "frames": self.frames,
            "out_of_order": self.out_of_order,
            "close_code": self.close_code,
        }


async def run_ws(args: argparse.Namespace, auth: str) -> None:
    receivers: list[Receiver] = []
    connections: list[CountingConnection] = []
    failed = 0
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(index: int) -> None:
        nonlocal failed
        kind = "stalled" if args.stallable else "normal"
        receiver = Receiver(kind)
        try:
            async with gate:
                sock = None
                if args.stallable:
                    # a small receive buffer, set before connecting, so that a client
                    # that stops reading pushes back on the server within seconds
                    parts = urlsplit(args.url)
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.setblocking(False)
                    await asyncio.get_running_loop().sock_connect(
                        sock, (parts.hostname, parts.port)
                    )
                ws = await websockets.connect(
                    args.url,
                    additional_headers={"Authorization": auth},
                    compression="deflate" if args.compression else None,
                    create_connection=CountingConnection,
                    open_timeout=120,
                    ping_interval=None,
                    max_queue=1 if args.stallable else 64,
                    sock=sock,
                )
        except Exception as err:
            failed += 1
            print(f"connect failed: {err!r}", file=sys.stderr)
            return
        receivers.append(receiver)
        connections.append(ws)  # type: ignore[arg-type]
        asyncio.get_running_loop().create_task(read(ws, receiver))

    async def read(ws: Any, receiver: Receiver) -> None:
        try:
            while True:
                await receiver.reading.wait()
                text = await ws.recv()
                now = time.time()
                match = _HEAD.search(text, 0, 200)
                if match is not None and text.startswith('{"type":"status"'):
                    receiver.record(int(match.group(1)), float(match.group(2)), now, ws.wire_bytes)
        except websockets.ConnectionClosed as closed:
            if not receiver.stopping:  # closed by the server, not by our stop
                receiver.close_code = closed.rcvd.code if closed.rcvd is not None else None

    await asyncio.gather(*(one(i) for i in range(args.count)))
    emit({"connected": len(receivers), "failed": failed})
    await commands(receivers, connections)


async def commands(receivers: list[Receiver], connections: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        if command["cmd"] == "stall":
            for r in receivers:
                r.reading.clear()
            emit({"stalled": len(receivers)})
        elif command["cmd"] == "resume":
            for r in receivers:
                r.reading.set()
            emit({"resumed": len(receivers)})
        elif command["cmd"] == "stop":
            for r in receivers:
                r.stopping = True
            await asyncio.gather(
                *(asyncio.wait_for(c.close(), 5) for c in connections), return_exceptions=True
            )
            emit({"connections": [r.report() for r in receivers]})
            return


async def run_poll(args: argparse.Namespace, auth: str) -> None:
    """HTTP clients polling ``url`` once per interval, each on a kept-alive connection."""
    parts = urlsplit(args.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {auth}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    receivers: list[Receiver] = []
    failed = 0
    stop = asyncio.Event()
    started = asyncio.Event()

    async def one() -> None:
        nonlocal failed
        receiver = Receiver("poll")
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError:
            failed += 1
            return
        receivers.append(receiver)
        await started.wait()
        await asyncio.sleep(random.uniform(0, args.interval))
        seq = 0
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                sent = time.time()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                if status == b"200":
                    seq += 1
                    receiver.record(seq, sent, time.time())
                next_at += args.interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(args.count)]
    await asyncio.sleep(0.5)
    emit({"connected": len(receivers), "failed": failed})
    started.set()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # stop
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    emit({"connections": [r.report() for r in receivers]})


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients")
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--mode", choices=["ws", "poll"], default="ws")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--compression", action="store_true")
    parser.add_argument("--stallable", action="store_true")
    args = parser.parse_args()
    raise_nofile()
    auth = os.environ.get("SYSMON_BENCH_AUTH", "")
    asyncio.run(run_ws(args, auth) if args.mode == "ws" else run_poll(args, auth))


if __name__ == "__main__":
    main()
