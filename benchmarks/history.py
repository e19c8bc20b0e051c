"""Part: history replay on connect. ``history_clients`` admins connect (10 at a time,
as after a server restart), each asking for ``history=N`` with its own random N from 1
to ``history_samples`` (720: an hour at the default interval, about 1.2 MB; the same
seeded N in both runs), with the default settings (interval 5 s, compression on). The
ring is filled at start-up by :mod:`benchmarks.history_seed`.

Figure: the server's event-loop CPU per connect (its main thread, from
``/proc/<pid>/task/<pid>/stat`` through psutil), less its idle rate, after a first
connect has been served. Reference, same run: the same connects with the history-frame
cache off (every connect encodes and compresses its history anew, as before the cache).
Goal: <= 5 ms.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import websockets

from .common import AUTH, Bench, Result, Server, jupyter_server

TITLE = "History on connect: encoded once, shared until the next sample"
GOAL_MS = 5.0
BATCH = 10


#: The random N of each client (the same in both runs).
SEED = 720


async def _connect(url: str, samples: int) -> int:
    """One admin: hello, then the history frame; returns how many samples it held."""
    async with websockets.connect(
        f"{url}?history={samples}", additional_headers={"Authorization": AUTH}, max_size=None
    ) as ws:
        await ws.recv()  # hello
        history = json.loads(await ws.recv())
    assert history["type"] == "history", history["type"]
    return len(history["samples"])


async def _storm(url: str, counts: list[int]) -> list[int]:
    got: list[int] = []
    for start in range(0, len(counts), BATCH):
        got += await asyncio.gather(*(_connect(url, n) for n in counts[start : start + BATCH]))
    return got


def _measure(bench: Bench, cached: bool) -> tuple[float, bool]:
    """Loop CPU per connect (ms), and whether each client got the samples it asked for."""
    s = bench.settings
    server: Server = jupyter_server(
        bench.workdir,
        extensions={
            "jupyter_server_ext": True,
            "benchmarks.history_seed": True,
            "jupyter_resource_usage": False,
        },
        sysmon={"interval": 5.0, "history": s.history_samples},
        name="sysmon-nb" + ("" if cached else ", history cache off"),
        extra_env={
            "SYSMON_BENCH_HISTORY": str(s.history_samples),
            "SYSMON_BENCH_HISTORY_CACHE": "1" if cached else "0",
        },
    )
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(_connect(server.ws_url, s.history_samples)) < s.history_samples:
            if time.monotonic() > deadline:
                raise RuntimeError("the history ring was not filled in time")
            time.sleep(0.2)
        _, idle_loop = bench.idle_rates(server)
        rng = random.Random(SEED)
        counts = [rng.randint(1, s.history_samples) for _ in range(s.history_clients)]
        loop_start, start = server.loop_cpu(), time.monotonic()
        got = asyncio.run(_storm(server.ws_url, counts))
        loop_end, end = server.loop_cpu(), time.monotonic()
    finally:
        server.stop()
    busy = (loop_end - loop_start) - idle_loop * (end - start)
    return 1000 * busy / s.history_clients, got == counts


def run(bench: Bench) -> list[Result]:
    s = bench.settings
    cached, complete = _measure(bench, cached=True)
    uncached, complete_uncached = _measure(bench, cached=False)
    print(
        f"  {s.history_clients} clients, each history=N with its own random N <= "
        f"{s.history_samples} (each got its N: {complete and complete_uncached}): "
        f"event-loop CPU per connect {cached:.3g} ms with the cache, {uncached:.3g} ms "
        "without",
        flush=True,
    )
    return [
        Result(
            "history",
            f"event-loop CPU per connect, {s.history_clients} clients x random "
            f"N <= {s.history_samples} samples",
            cached,
            "ms",
            uncached,
            "history encoded for every connect",
            goal=f"<= {GOAL_MS:g} ms",
            met=cached <= GOAL_MS and complete,
        )
    ]
