"""Part 6: the widget's cost per dashboard update, in this process.

A :class:`~sysmon_nb.dashboard.SysmonDashboard` at the default window (10 minutes) is
given an hour of samples at the default interval (5 s, as a ``history`` frame on
connect), then fed status messages one at a time, as the client feeds it. Its widgets
talk to a counting comm, the kernel's side of the wire to the front end, so what it
measures is what a kernel spends and sends: CPU per update (median) and bytes per
update (JSON plus binary buffers, median and max), and then, over a long run of updates,
whether the kernel's memory stays flat (growth of Python's traced allocations).

The samples are real ones from this machine's sampler (default groups, top 5
processes), replayed with times 5 s apart and moving values, so every chart changes on
every update. Each also carries what a busy JupyterHub pod's server sends for the
dashboard's tables (:func:`table_groups`): 12 kernels with notebook paths, 8 users, a
container with limits, throttling and pressure, a home volume, GPU processes, an active
alert and an event now and then, with moving CPU and memory, so the kernels and users
tables change on every update too. References from the same run: decoding the status
frame the update came in (CPU) and that frame's size (bytes).

Goals: <= 5 ms CPU and <= 64 KB per update; the kernel's memory flat over a long run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .common import Bench, Result

TITLE = "Widget cost per dashboard update"
INTERVAL = 5.0
HOUR = 3600.0
CPU_GOAL_S = 0.005
BYTES_GOAL = 64 * 1024
#: Traced memory may grow by this much over the long run and still count as flat.
FLAT_BYTES = 256 * 1024


class CountingComm:
    """The kernel's comm as a widget sees it, counting what would go to the front end."""

    def __init__(self, counter: dict[str, int], **kwargs: Any) -> None:
        self.counter = counter
        self.comm_id = f"bench-{id(self)}"
        self.kernel = "bench"

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        size = len(json.dumps(data, separators=(",", ":"), default=str))
        for buffer in buffers or ():
            size += memoryview(buffer).nbytes
        self.counter["messages"] += 1
        self.counter["bytes"] += size


@contextmanager
def counting_comms() -> Iterator[dict[str, int]]:
    """Widgets created inside talk to counting comms; yields the running totals."""
    import comm

    counter = {"messages": 0, "bytes": 0}
    original = comm.create_comm
    setattr(comm, "create_comm", lambda **kwargs: CountingComm(counter, **kwargs))  # noqa: B010
    try:
        yield counter
    finally:
        setattr(comm, "create_comm", original)  # noqa: B010


def table_groups(i: int, at: float) -> dict[str, Any]:
    """The turn-2 groups and fields of sample ``i`` (time ``at``), moving with ``i``."""
    gib = 1024**3
    kernels = [
        {
            "id": f"{k:08x}-0000-4000-8000-{k:012x}",
            "name": "python3",
            "pid": 1000 + k,
            "cpu_percent": float((i * 7 + k * 13) % 100),
            "rss_bytes": (k + 1) * 150 * 1024**2 + (i % 10) * 4096 * k,
            "path": f"users/user{k % 8}/project-{k}/analysis-{k}.ipynb",
            "execution_state": "busy" if (i + k) % 3 == 0 else "idle",
            "last_activity": at - 30.0 * k,
            "connections": 1 + k % 2,
        }
        for k in range(12)
    ]
    users = [
        {
            "name": f"jupyter-user{u}",
            "processes": 3 + u,
            "cpu_percent": float((i * 3 + u * 11) % 100),
            "rss_bytes": (u + 1) * 300 * 1024**2 + (i % 7) * 8192,
        }
        for u in range(8)
    ]
    events = []
    if i % 60 == 0:
        events.append(
            {
                "time": at,
                "kind": "oom_kill",
                "message": "memory.events oom_kill rose",
                "kernel_id": kernels[i % 12]["id"],
                "path": kernels[i % 12]["path"],
            }
        )
    return {
        "jupyter": {"kernels": 12, "terminals": 1, "sessions": 12, "kernel_usage": kernels},
        "users": {"users": users},
        "container": {
            "cgroup": 2,
            "memory_limit_bytes": 16 * gib,
            "memory_used_bytes": 9 * gib + (i % 50) * 1024**2,
            "cpu_limit_cores": 4.0,
            "cpu_usage_cores": 1.0 + (i % 30) / 10,
            "cpu_throttled_percent": float(i % 40),
            "oom_kills": i // 60,
            "memory_pressure": float(i % 20),
            "cpu_pressure": float(i % 15),
            "io_pressure": 0.5,
        },
        "alerts": {
            "active": [
                {
                    "name": "memory",
                    "group": "container",
                    "value": 91.0,
                    "threshold": 90.0,
                    "since": at - 300,
                }
            ],
            "events": events,
        },
        "gpu_processes": {
            "index": 0,
            "processes": [
                {
                    "pid": 1000 + k,
                    "user": f"jupyter-user{k}",
                    "used_memory_bytes": (k + 1) * gib,
                    "kernel_id": kernels[k]["id"],
                }
                for k in range(3)
            ],
        },
    }


def real_samples(count: int) -> list[Any]:
    """``count`` samples of this machine, 5 s apart, ending now, with moving values."""
    from .sampler import default_sampler

    sampler = default_sampler(top_processes=5)
    try:
        seeds = []
        for _ in range(3):
            seeds.append(sampler.sample_once())
            time.sleep(0.05)
    finally:
        sampler.stop()
    seeds = [s for s in seeds if s.groups.get("cpu", {}).get("percent") is not None] or seeds
    start = time.time() - count * INTERVAL
    samples = []
    for i in range(count):
        seed = seeds[i % len(seeds)]
        groups = {name: dict(group) for name, group in seed.groups.items()}
        wave = (i * 37) % 100
        if "cpu" in groups:
            cores = len(groups["cpu"].get("per_cpu") or ())
            groups["cpu"]["percent"] = float(wave)
            groups["cpu"]["per_cpu"] = [float((wave + 13 * c) % 100) for c in range(cores)]
        for name, key in (("network", "recv_bytes_per_s"), ("disk", "write_bytes_per_s")):
            if name in groups:
                groups[name][key] = float(wave * 1000)
        if "memory" in groups and groups["memory"].get("used_bytes") is not None:
            groups["memory"]["used_bytes"] += wave * 4096
        at = start + i * INTERVAL
        extra = table_groups(i, at)
        device = extra.pop("gpu_processes")
        groups.update(extra)
        if "disk" in groups:
            home = {
                "path": "/home/jovyan", "fstype": "nfs4", "total_bytes": 100 * 1024**3,
                "used_bytes": 60 * 1024**3, "free_bytes": 40 * 1024**3, "percent": 60.0,
                "home": True, "stuck": False,
            }  # fmt: skip
            groups["disk"]["mounts"] = [*(groups["disk"].get("mounts") or []), home]
        gpu = dict(groups.get("gpu") or {})
        devices = [dict(d) for d in gpu.get("devices") or []] or [
            {"index": 0, "name": "GPU", "utilization_percent": float(wave),
             "memory_used_bytes": 6 * 1024**3, "memory_total_bytes": 80 * 1024**3}
        ]  # fmt: skip
        devices[0]["processes"] = device["processes"]
        gpu["devices"] = devices
        groups["gpu"] = gpu
        samples.append(dataclasses.replace(seed, seq=i, time=at, groups=groups))
    return samples


def run(bench: Bench) -> list[Result]:
    from sysmon_nb.dashboard import SysmonDashboard
    from sysmon_nb.protocol import GROUPS, Hello, History, decode, encode

    measured = bench.settings.widget_measured
    long_run = bench.settings.widget_long_run
    history_samples = int(HOUR / INTERVAL)
    samples = real_samples(history_samples + measured + long_run)
    history, updates = samples[:history_samples], samples[history_samples:]
    frames = [encode(sample) for sample in updates]

    with counting_comms() as counter:
        dashboard = SysmonDashboard()
        hello = Hello(
            server="bench",
            host=samples[0].host,
            interval=INTERVAL,
            metrics=GROUPS,
            subscribed=GROUPS,
        )
        dashboard.update(hello)
        dashboard.update(History(samples=tuple(history)))

        cpu: list[float] = []
        sizes: list[int] = []
        messages: list[int] = []
        decode_cpu: list[float] = []
        for frame in frames[:measured]:
            t0 = time.process_time()
            message = decode(frame)
            t1 = time.process_time()
            before_bytes, before_messages = counter["bytes"], counter["messages"]
            dashboard.update(message)
            t2 = time.process_time()
            decode_cpu.append(t1 - t0)
            cpu.append(t2 - t1)
            sizes.append(counter["bytes"] - before_bytes)
            messages.append(counter["messages"] - before_messages)
        points = len(dashboard.samples)

        tracemalloc.start()
        try:
            rest = frames[measured:]
            half = len(rest) // 2
            for frame in rest[:half]:
                dashboard.update(decode(frame))
            middle = tracemalloc.get_traced_memory()[0]
            for frame in rest[half:]:
                dashboard.update(decode(frame))
            end = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    cpu_median = statistics.median(cpu)
    bytes_median = statistics.median(sizes)
    frame_bytes = statistics.median(len(frame.encode()) for frame in frames[:measured])
    growth = end - middle
    note = f"{points} points in the window, {max(messages)} comm messages per update at most"
    return [
        Result(
            "widget",
            "kernel CPU per dashboard update (median)",
            cpu_median * 1e3,
            "ms",
            reference=statistics.median(decode_cpu) * 1e3,
            reference_name="decoding its status frame",
            goal="<= 5 ms",
            met=cpu_median <= CPU_GOAL_S,
            reason=note,
        ),
        Result(
            "widget",
            "bytes to the front end per update (median)",
            bytes_median / 1024,
            "KiB",
            reference=frame_bytes / 1024,
            reference_name="its status frame",
            goal="<= 64 KB",
            met=bytes_median <= BYTES_GOAL,
            reason=f"max {max(sizes) / 1024:.1f} KiB",
        ),
        Result(
            "widget",
            f"kernel memory growth over the last {len(rest) - half} of {long_run} updates",
            growth / 1024,
            "KiB",
            goal=f"flat (< {FLAT_BYTES // 1024} KiB)",
            met=growth < FLAT_BYTES,
            reason="Python allocations traced by tracemalloc",
        ),
    ]
