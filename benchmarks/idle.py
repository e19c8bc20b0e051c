"""Part 7: nobody watching costs nearly nothing, however many processes the host runs.

A real jupyter server with the extension and no client at all (interval 0.25 s): its CPU
per tick (every thread, read from ``/proc/<pid>/task/*/schedstat`` in nanoseconds: the
clock-tick counters are too coarse for ~1 ms) with ``extra`` sleeping processes on the
host, against the same server with none (read before and after, averaged). The process
walk runs only while someone wants ``processes`` or ``users`` (see
``SysmonExtension.want``), so the extra processes should cost nothing.

Goal: <= 1.2x. ``extra`` is 2,000 (``--quick``: 200).
"""

from __future__ import annotations

import os
import subprocess
import time

from .common import Bench, Result, Server, jupyter_server

TITLE = "Idle server CPU per tick with many processes on the host"
GOAL = 1.2
INTERVAL = 0.25


def run_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total


def per_tick_ms(server: Server, seconds: float) -> float:
    start_ns, start = run_ns(server.popen.pid), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return (run_ns(server.popen.pid) - start_ns) / 1e6 / (elapsed / INTERVAL)


def sleepers(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` sleeping processes (``sleep``), the cheapest real processes to spawn."""
    procs = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    ["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
            )
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(10)


def run(bench: Bench) -> list[Result]:
    quick = bench.settings.sampler_ticks < 20
    extra = 200 if quick else 2000
    seconds = 2.0 if quick else 8.0
    server = jupyter_server(
        bench.workdir,
        extensions={"jupyter_server_ext": True, "jupyter_resource_usage": False},
        sysmon={"interval": INTERVAL},
        name="sysmon-nb, no client",
    )
    try:
        time.sleep(4 * INTERVAL)  # past start-up, and past the start-up REST probe's want
        before = per_tick_ms(server, seconds)
        procs = sleepers(extra)
        try:
            time.sleep(2 * INTERVAL)
            loaded = per_tick_ms(server, seconds)
        finally:
            stop(procs)
        after = per_tick_ms(server, seconds)
    finally:
        server.stop()
    reference = (before + after) / 2
    print(
        f"  idle CPU per tick at {INTERVAL:g} s: {before:.3g} ms, with {extra} extra "
        f"sleeping processes {loaded:.3g} ms, after they ended {after:.3g} ms",
        flush=True,
    )
    return [
        Result(
            "idle",
            f"idle server CPU per tick, {extra} extra processes on the host",
            loaded,
            "ms",
            reference,
            "same server, no extra process",
            goal=f"<= {GOAL}x",
            met=loaded <= GOAL * reference,
        )
    ]
