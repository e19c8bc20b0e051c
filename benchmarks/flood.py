"""Part: a hostile client. One authenticated client sends 64 KiB bad messages as fast as
it can for ``flood_seconds`` (reading every answer, so it is never closed for not
reading), while a bystander watches the stream.

Figures: the server log's growth (bytes per second of flood), the server's CPU during
the flood, the bystander's largest gap between status frames, and how many bad
messages the server took. Goals: the whole flood adds < 10 KB to the log, and the
bystander's frames keep coming at the interval (largest gap <= 2 intervals). The
reference is the server's CPU with the bystander alone, read just before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import websockets

from .common import AUTH, Bench, Result, Server, jupyter_server

TITLE = "Hostile client: a flood of 64 KiB bad messages"
LOG_GOAL_BYTES = 10_000
INTERVAL = 0.5

#: 64 KiB less a little: under the 1009 limit, and echoed whole by a server that quotes
#: what it refuses (an unknown metric name is repeated in the error).
BAD_MESSAGE = json.dumps({"type": "subscribe", "metrics": ["x" * (64 * 1024 - 64)]})


async def _bystander(url: str, stop: asyncio.Event, arrivals: list[float]) -> None:
    async with websockets.connect(
        url + "?metrics=cpu", additional_headers={"Authorization": AUTH}, max_size=None
    ) as ws:
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except asyncio.TimeoutError:
                continue
            if json.loads(text)["type"] == "status":
                arrivals.append(time.monotonic())


async def _flooder(
    url: str, seconds: float, report: dict[str, Any], at_end: Callable[[], None]
) -> None:
    sent = answered = 0
    async with websockets.connect(
        url + "?metrics=cpu",
        additional_headers={"Authorization": AUTH},
        max_size=None,
        compression=None,
    ) as ws:

        async def reader() -> None:
            nonlocal answered
            async for text in ws:
                if json.loads(text)["type"] == "error":
                    answered += 1

        reading = asyncio.create_task(reader())
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                await ws.send(BAD_MESSAGE)
                sent += 1
        except websockets.ConnectionClosed:
            pass
        at_end()  # the window ends here, not after the close handshake
        await ws.close()
        reading.cancel()
        close = ws.close_code
    report.update(sent=sent, answered=answered, close_code=close)


async def _flood(server: Server, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    arrivals: list[float] = []
    watcher = asyncio.create_task(_bystander(server.ws_url, stop, arrivals))
    await asyncio.sleep(3 * INTERVAL)  # the bystander is streaming
    idle_cpu, idle_start = server.cpu(), time.monotonic()
    await asyncio.sleep(2.0)
    idle_rate = (server.cpu() - idle_cpu) / (time.monotonic() - idle_start)
    log_before = server.log.stat().st_size
    cpu_before, start = server.cpu(), time.monotonic()
    report: dict[str, Any] = {}
    window: list[float] = []
    await _flooder(
        server.ws_url, seconds, report, lambda: window.extend((time.monotonic(), server.cpu()))
    )
    elapsed = window[0] - start
    cpu = (window[1] - cpu_before) / elapsed
    await asyncio.sleep(2 * INTERVAL)  # what the flood queued is logged by now
    log_growth = server.log.stat().st_size - log_before
    stop.set()
    await watcher
    during = [t for t in arrivals if start <= t <= start + elapsed + INTERVAL]
    edges = [start, *during, start + elapsed]
    gap = max(b - a for a, b in itertools.pairwise(edges))
    report.update(
        seconds=elapsed,
        log_bytes=log_growth,
        cpu_percent=100 * cpu,
        idle_cpu_percent=100 * idle_rate,
        bystander_frames=len(during),
        bystander_max_gap_s=gap,
    )
    return report


def run(bench: Bench) -> list[Result]:
    seconds = 1.5 if bench.settings.interval < 1 and not bench.settings.warm_up else 5.0
    server = jupyter_server(
        bench.workdir,
        extensions={"jupyter_server_ext": True, "jupyter_resource_usage": False},
        sysmon={"interval": INTERVAL},
        server_app={"log_level": "INFO"},
        name="sysmon-nb, INFO log",
    )
    try:
        r = asyncio.run(_flood(server, seconds))
    finally:
        server.stop()
    print(
        f"  {r['sent']} bad messages of 64 KiB in {r['seconds']:.1f} s, {r['answered']} "
        f"answered, flooder closed with {r['close_code']}; log +{r['log_bytes']:,} bytes "
        f"({r['log_bytes'] / r['seconds']:,.0f} B/s); server CPU {r['cpu_percent']:.0f} % "
        f"(bystander alone {r['idle_cpu_percent']:.1f} %); bystander got "
        f"{r['bystander_frames']} frames, largest gap {r['bystander_max_gap_s']:.2f} s",
        flush=True,
    )
    return [
        Result(
            "flood",
            "server log growth during the flood",
            float(r["log_bytes"]),
            "bytes",
            goal=f"< {LOG_GOAL_BYTES:,} bytes",
            met=r["log_bytes"] < LOG_GOAL_BYTES,
        ),
        Result(
            "flood",
            "server log bytes per second of flood",
            r["log_bytes"] / r["seconds"],
            "B/s",
        ),
        Result(
            "flood",
            "server CPU during the flood",
            r["cpu_percent"],
            "%",
            r["idle_cpu_percent"],
            "the bystander alone",
        ),
        Result(
            "flood",
            "bystander's largest gap between status frames",
            r["bystander_max_gap_s"],
            "s",
            INTERVAL,
            "the interval",
            goal="<= 2 intervals",
            met=r["bystander_max_gap_s"] <= 2 * INTERVAL and r["bystander_frames"] > 0,
        ),
    ]
