"""Part 7: the fleet view's cost in the kernel, for 50, 200 and 500 servers.

A simulated hub (:mod:`benchmarks.fleet_sim`, its own process: the hub's REST API and
every server's ``sysmon/ws`` speaking protocol 1 at the default 5 s interval) is watched
by a :class:`~sysmon_nb.fleet.FleetClient` and its table (:class:`FleetView`) in a
fresh child process per size, the kernel's stand-in; its widgets talk to the counting
comm of the widget part. Measured there: time from starting the view to a table whose
every row has figures; the process's CPU over a window of intervals, as % of a core;
its RSS growth per server (from before the view to the end of the window); and the bytes
sent to the front end per redraw.

Goals at 500 servers: CPU <= 5 % of a core, <= 50 KiB per server, <= 100 KiB per
refresh, a full table within 10 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from .common import Bench, Result, free_port

TITLE = "Fleet view: kernel CPU, memory, bytes per refresh, time to a full table"
INTERVAL = 5.0
SIZES = (50, 200, 500)
CPU_GOAL_PERCENT = 5.0
MEMORY_GOAL_KIB = 50.0
BYTES_GOAL_KIB = 100.0
FULL_GOAL_S = 10.0


async def measure(count: int, port: int, interval: float, window_intervals: int) -> dict[str, Any]:
    """In this process: the view against the simulated hub at ``port``."""
    import psutil

    from sysmon_nb.fleet import FleetClient
    from sysmon_nb.fleet_table import FleetView

    from .fleet_sim import TOKEN
    from .widget import counting_comms

    proc = psutil.Process()
    with counting_comms() as counter:
        FleetView(FleetClient("http://127.0.0.1:1", "x")).redraw()  # import and warm up
        rss_before = proc.memory_info().rss
        started = time.monotonic()
        fleet = FleetClient(f"http://127.0.0.1:{port}", TOKEN, max_opening=16)
        view = FleetView(fleet, interval=interval).start()
        redraws = 0
        original = view.redraw

        def counted(now: float | None = None) -> None:
            nonlocal redraws
            redraws += 1
            original(now)

        view.redraw = counted  # type: ignore[method-assign]
        deadline = started + 120
        while time.monotonic() < deadline:
            table = view.table.value
            if table.count("<tr") == count + 1 and "<tr class=d>" not in table:
                break
            await asyncio.sleep(0.02)
        full_s = time.monotonic() - started
        # settle into the per-interval rhythm, then measure whole intervals
        await asyncio.sleep(interval)
        cpu0, bytes0, redraws0 = time.process_time(), counter["bytes"], redraws
        wall0 = time.monotonic()
        await asyncio.sleep(interval * window_intervals)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        sent = counter["bytes"] - bytes0
        window_redraws = max(1, redraws - redraws0)
        rss = proc.memory_info().rss - rss_before
        streaming = sum(s.samples > 0 for s in fleet.servers.values())
        await view.wait_stopped()
    return {
        "full_s": full_s,
        "cpu_percent": 100.0 * cpu / wall,
        "kib_per_server": rss / 1024 / count,
        "kib_per_refresh": sent / 1024 / window_redraws,
        "redraws": window_redraws,
        "streaming": streaming,
    }


def child(count: int, interval: float, window_intervals: int) -> dict[str, Any]:
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet_sim", str(count), str(port), str(interval)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        assert sim.stdout.readline().strip() == "ready"
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.fleet", str(count), str(port), str(interval),
             str(window_intervals)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"fleet measurement failed: {run.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        return result
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


def run(bench: Bench) -> list[Result]:
    quick = bench.settings.interval < 1.0
    sizes = (5,) if quick else SIZES
    interval = 0.5 if quick else INTERVAL
    window = 2 if quick else 6
    results = []
    for count in sizes:
        m = child(count, interval, window)
        goal = count == sizes[-1]
        note = f"{m['streaming']}/{count} streaming, {m['redraws']} redraws in the window"
        results += [
            Result("fleet", f"time to a full table, N={count}", m["full_s"], "s",
                   goal=f"<= {FULL_GOAL_S:.0f} s" if goal else "",
                   met=m["full_s"] <= FULL_GOAL_S if goal else None),
            Result("fleet", f"kernel CPU, N={count}", m["cpu_percent"], "% of a core",
                   goal=f"<= {CPU_GOAL_PERCENT:.0f} %" if goal else "",
                   met=m["cpu_percent"] <= CPU_GOAL_PERCENT if goal else None, reason=note),
            Result("fleet", f"kernel memory per server, N={count}", m["kib_per_server"], "KiB",
                   goal=f"<= {MEMORY_GOAL_KIB:.0f} KiB" if goal else "",
                   met=m["kib_per_server"] <= MEMORY_GOAL_KIB if goal else None),
            Result("fleet", f"bytes to the front end per refresh, N={count}",
                   m["kib_per_refresh"], "KiB",
                   goal=f"<= {BYTES_GOAL_KIB:.0f} KiB" if goal else "",
                   met=m["kib_per_refresh"] <= BYTES_GOAL_KIB if goal else None),
        ]  # fmt: skip
    return results


if __name__ == "__main__":
    count, port, interval, window = sys.argv[1:5]
    out = asyncio.run(measure(int(count), int(port), float(interval), int(window)))
    print(json.dumps(out))
