"""Part 1: the sampler's CPU per tick, in this process (median of many ticks).

- the default groups, process walk off (``top_processes = 0``), against the plainest
  psutil read of the same system-wide facts (the floor);
- the top-N process walk (``top_processes = 5``) with the ``users`` group built from
  the same walk (as a server makes them while both are watched), against the naive
  ``process_iter([...])`` walk that reads every field of every process each tick.

Goals: default tick <= 1.3x the floor; top-N walk <= 0.5x the naive walk. Ticks of
each kind alternate, so machine noise falls on both alike.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence

import psutil

from jupyter_server_ext.cgroup import ContainerCollector
from jupyter_server_ext.collectors import (
    CpuCollector,
    DiskCollector,
    JupyterCollector,
    JupyterCounts,
    MemoryCollector,
    NetworkCollector,
)
from jupyter_server_ext.gpu import GpuCollector
from jupyter_server_ext.processes import ProcessesCollector, ProcessWalk, UsersCollector
from jupyter_server_ext.sampler import Collector, Sampler

from .common import Bench, Result, median

TITLE = "Sampler cost per tick"
TICK_GOAL = 1.3
WALK_GOAL = 0.5
NAIVE_FIELDS = ["pid", "name", "cpu_percent", "memory_info", "username"]


def _no_kernels() -> JupyterCounts:
    return JupyterCounts(kernels=(), terminals=0, sessions=0)


def default_sampler(top_processes: int) -> Sampler:
    """The collectors a server with the default settings runs."""
    collectors: list[Collector] = [
        CpuCollector(),
        MemoryCollector(),
        DiskCollector(),
        NetworkCollector(),
        ProcessesCollector(top_n=top_processes),
        ContainerCollector(),
        GpuCollector(),
        JupyterCollector(_no_kernels),
    ]
    return Sampler(collectors, 1.0, lambda status: None, "bench")


def server_sampler(wanted: Collection[str] | None = None) -> Sampler:
    """The collectors a server with the default settings makes (``top_processes=5``,
    ``top_users=10``, one process walk for both groups), asking ``wanted`` each tick
    which groups someone wants, as the server does (``None``: every group)."""
    walk = ProcessWalk()
    collectors: list[Collector] = [
        CpuCollector(),
        MemoryCollector(),
        DiskCollector(),
        NetworkCollector(),
        ProcessesCollector(top_n=5, walk=walk),
        UsersCollector(top_n=10, walk=walk),
        ContainerCollector(),
        GpuCollector(),
        JupyterCollector(_no_kernels),
    ]
    ask = None if wanted is None else (lambda: wanted)
    return Sampler(collectors, 1.0, lambda status: None, "bench", wanted=ask)


def floor_tick(mounts: list[str]) -> Callable[[], object]:
    def tick() -> object:
        psutil.cpu_times(percpu=True)
        psutil.virtual_memory()
        psutil.swap_memory()
        for path in mounts:
            psutil.disk_usage(path)
        psutil.disk_io_counters(perdisk=False)
        psutil.net_io_counters(pernic=True)
        psutil.getloadavg()
        return len(psutil.pids())

    return tick


def naive_walk() -> object:
    return [p.info for p in psutil.process_iter(NAIVE_FIELDS)]


def cpu_ms(fn: Callable[[], object]) -> float:
    """CPU ms of ``fn`` in this whole process: the sampler's collectors run on its runner
    thread, so this thread's own time would leave them out."""
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start)


def alternate(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """CPU ms of ``a`` and ``b``, run in turn (in a random order each round), so that
    noise and cache effects fall on both alike."""
    times_a, times_b = alternate_all([a, b], rounds)
    return times_a, times_b


def alternate_all(fns: Sequence[Callable[[], object]], rounds: int) -> list[list[float]]:
    """CPU ms of each of ``fns``, run in turn in a new random order each round."""
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(rounds):
        random.shuffle(order)
        for index in order:
            times[index].append(cpu_ms(fns[index]))
        time.sleep(0.01)
    return times


def run(bench: Bench) -> list[Result]:
    ticks = bench.settings.sampler_ticks
    sampler = default_sampler(top_processes=0)
    disk = next(c for c in sampler.collectors if isinstance(c, DiskCollector))
    mounts = [mount.path for mount in disk._mounted(time.monotonic())]
    floor = floor_tick(mounts)
    walk_both = ProcessWalk()
    top5 = ProcessesCollector(top_n=5, walk=walk_both)
    users = UsersCollector(top_n=10, walk=walk_both)

    def walker_tick() -> object:
        now = time.monotonic()
        return top5.collect(now), users.collect(now)

    # prime: first readings open files and fill caches on both sides
    for _ in range(2):
        sampler.sample_once()
        floor()
        walker_tick()
        naive_walk()
    ours, theirs = alternate(sampler.sample_once, floor, ticks)
    walk, naive = alternate(walker_tick, naive_walk, ticks)
    sampler.stop()
    processes = len(psutil.pids())
    tick, base = median(ours), median(theirs)
    w, nv = median(walk), median(naive)
    assert tick is not None and base is not None and w is not None and nv is not None
    print(
        f"  {ticks} ticks, {processes} processes: default tick {tick:.3g} ms, "
        f"psutil floor {base:.3g} ms; top-5 + users walk {w:.3g} ms "
        f"({1000 * w / processes:.3g} us/process), naive walk {nv:.3g} ms "
        f"({1000 * nv / processes:.3g} us/process)",
        flush=True,
    )
    return [
        Result(
            "sampler",
            "default tick (top_processes=0), median CPU",
            tick,
            "ms",
            base,
            "psutil floor",
            goal=f"<= {TICK_GOAL}x the floor",
            met=tick <= TICK_GOAL * base,
        ),
        Result(
            "sampler",
            f"top-5 processes + users, one walk over {processes} processes, median CPU",
            w,
            "ms",
            nv,
            "naive process_iter walk",
            goal=f"<= {WALK_GOAL}x the naive walk",
            met=w <= WALK_GOAL * nv,
        ),
    ]
