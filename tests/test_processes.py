"""The process walk shared by ``processes`` and ``users`` (jupyter_server_ext/processes.py):
the users group from recorded processes, one walk per tick for both groups, pauses,
a stuck walk under the sampler, this machine's own users, and a real server: a
subscriber gets users from one walk per tick, a Prometheus scrape wants users."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_server_ext.app import SysmonExtension
from jupyter_server_ext.processes import (
    UNKNOWN_USER,
    WALK_KEY,
    ProcessesCollector,
    ProcessWalk,
    UsersCollector,
)
from jupyter_server_ext.sampler import Sampler

from .conftest import eventually, recv_type
from .other_user import HELD_BYTES
from .test_collectors import FakeProcess, FakePsutil
from .test_kernels import SPAWNER

MIB = 2**20


def users_ps() -> FakePsutil:
    """Four users: ann (two processes, most memory), bob (one busy process), root, and
    one process whose user cannot be read."""
    ps = FakePsutil()
    ps.processes = {
        1: FakeProcess(1, "init", [0.0, 0.5], 10 * MIB, user="root"),
        2: FakeProcess(2, "python", [0.0, 150.0], 300 * MIB, user="jupyter-bob"),
        3: FakeProcess(3, "python", [0.0, 10.0], 500 * MIB, user="jupyter-ann"),
        4: FakeProcess(4, "jupyter", [0.0, 2.5], 100 * MIB, user="jupyter-ann"),
        5: FakeProcess(5, "odd", [0.0, 1.0], 1 * MIB, user=""),
    }
    for pid, seconds in {1: 0.5, 2: 7.0, 3: 3.0, 4: 2.0, 5: 0.25}.items():
        ps.processes[pid].cpu_seconds = seconds
    return ps


def test_users_sum_processes_cpu_and_memory_heaviest_first() -> None:
    collector = UsersCollector(top_n=10, ps=users_ps())
    assert collector.on_demand and collector.name == "users"
    first = collector.collect(0.0)
    # the first walk has no CPU share yet: null, never 0
    assert [(u["name"], u["cpu_percent"]) for u in first["users"]] == [
        ("jupyter-ann", None),
        ("jupyter-bob", None),
        ("root", None),
        (UNKNOWN_USER, None),
    ]
    second = collector.collect(1.0)
    assert second == {
        "users": [
            {
                "name": "jupyter-ann",
                "processes": 2,
                "cpu_percent": 12.5,
                "rss_bytes": 600 * MIB,
                "cpu_seconds_total": 5.0,
            },
            {
                "name": "jupyter-bob",
                "processes": 1,
                "cpu_percent": 150.0,
                "rss_bytes": 300 * MIB,
                "cpu_seconds_total": 7.0,
            },
            {
                "name": "root",
                "processes": 1,
                "cpu_percent": 0.5,
                "rss_bytes": 10 * MIB,
                "cpu_seconds_total": 0.5,
            },
            {
                "name": UNKNOWN_USER,
                "processes": 1,
                "cpu_percent": 1.0,
                "rss_bytes": 1 * MIB,
                "cpu_seconds_total": 0.25,
            },
        ],
        "count": 4,
        "others": None,
    }


def test_equal_memory_is_ranked_by_cpu_then_name() -> None:
    ps = FakePsutil()
    ps.processes = {
        1: FakeProcess(1, "a", [0.0, 5.0], 100, user="b-user"),
        2: FakeProcess(2, "a", [0.0, 5.0], 100, user="a-user"),
        3: FakeProcess(3, "a", [0.0, 50.0], 100, user="z-user"),
    }
    collector = UsersCollector(top_n=10, ps=ps)
    collector.collect(0.0)
    names = [u["name"] for u in collector.collect(1.0)["users"]]
    assert names == ["z-user", "a-user", "b-user"]


def test_top_users_bounds_the_list_and_sums_the_rest() -> None:
    collector = UsersCollector(top_n=2, ps=users_ps())
    collector.collect(0.0)
    result = collector.collect(1.0)
    assert [u["name"] for u in result["users"]] == ["jupyter-ann", "jupyter-bob"]
    assert result["count"] == 4
    assert result["others"] == {
        "users": 2,
        "processes": 2,
        "cpu_percent": 1.5,
        "rss_bytes": 11 * MIB,
        "cpu_seconds_total": 0.75,  # root's and the unknown user's
    }
    only_totals = UsersCollector(top_n=0, ps=users_ps()).collect(0.0)
    assert only_totals["users"] == [] and only_totals["count"] == 4
    assert only_totals["others"] == {
        "users": 4,
        "processes": 5,
        "cpu_percent": None,  # nobody's CPU share is known on a first walk
        "rss_bytes": 911 * MIB,
        "cpu_seconds_total": 12.75,  # CPU times are known from the first walk
    }


def test_others_cpu_seconds_never_fall_as_users_move_in_and_out_of_the_list() -> None:
    ps = FakePsutil()
    ann = FakeProcess(1, "a", [], 100 * MIB, user="ann")
    bob = FakeProcess(2, "b", [], 50 * MIB, user="bob")
    ann.cpu_seconds, bob.cpu_seconds = 10.0, 20.0
    ps.processes = {1: ann, 2: bob}
    users = UsersCollector(top_n=1, ps=ps)
    first = users.collect(0.0)
    assert first["users"][0]["name"] == "ann" and first["others"]["cpu_seconds_total"] == 20.0
    bob.cpu_seconds, bob._rss = 25.0, 200 * MIB  # bob is listed now, ann is not
    second = users.collect(1.0)
    assert [u["name"] for u in second["users"]] == ["bob"]
    assert second["users"][0]["cpu_seconds_total"] == 25.0
    # bob's 5 s went to his own row; ann used nothing: others stays, never falls
    assert second["others"]["cpu_seconds_total"] == 20.0
    ann.cpu_seconds = 12.0
    assert users.collect(2.0)["others"]["cpu_seconds_total"] == 22.0


def test_one_walk_per_tick_feeds_processes_and_users() -> None:
    ps = users_ps()
    walk = ProcessWalk(ps)
    processes = ProcessesCollector(top_n=5, walk=walk)
    users = UsersCollector(top_n=5, walk=walk)
    for now in (0.0, 1.0, 2.0):
        processes.collect(now)
        users.collect(now)
    assert walk.walks == 3
    assert all(p.reads == 1 for p in ps.processes.values())  # identified once each
    # processes and users see the very same readings
    top = processes.collect(3.0)["top_memory"]
    ann = users.collect(3.0)["users"][0]
    assert walk.walks == 4
    assert ann["rss_bytes"] == sum(p["rss_bytes"] for p in top if p["user"] == "jupyter-ann")


def test_the_walk_is_kept_while_either_group_reads_it() -> None:
    walk = ProcessWalk(users_ps())
    processes = ProcessesCollector(top_n=2, walk=walk)
    users = UsersCollector(top_n=5, walk=walk)
    processes.collect(0.0)
    users.collect(0.0)
    processes.pause()  # nobody wants processes; users is still read
    assert walk.tracked == 5
    assert users.collect(1.0)["users"][0]["cpu_percent"] == 12.5
    users.pause()  # now nobody reads it: the readings go
    assert walk.tracked == 0
    assert users.collect(2.0)["users"][0]["cpu_percent"] is None


def test_the_walk_closes_its_held_files_when_paused_and_when_the_sampler_stops() -> None:
    """With the real psutil the walk keeps each process's stat file open between ticks;
    a pause (nobody wants either group) and a stopped sampler close them all."""

    def held_stat_files() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}").endswith("/stat")
        return count

    before = held_stat_files()
    walk = ProcessWalk()
    processes = ProcessesCollector(top_n=3, walk=walk)
    users = UsersCollector(top_n=3, walk=walk)
    processes.collect(time.monotonic())
    users.collect(time.monotonic())
    assert walk.held_files > 0 and held_stat_files() == before + walk.held_files
    processes.pause()
    assert walk.held_files > 0  # users still reads the walk
    users.pause()
    assert walk.held_files == 0 and walk.tracked == 0
    assert held_stat_files() == before
    for group in (users, processes):  # the sampler closes each, whichever runs alone
        sampler = Sampler([group], 60.0, lambda status: None, "test")
        status = sampler.sample_once()
        assert group.name in status.groups and held_stat_files() > before
        sampler.stop()
        assert walk.held_files == 0 and held_stat_files() == before


def test_processes_count_only_does_not_walk_for_users_sake() -> None:
    ps = users_ps()
    walk = ProcessWalk(ps)
    assert ProcessesCollector(top_n=0, walk=walk).collect(0.0)["count"] == 5
    assert walk.walks == 0 and all(p.reads == 0 for p in ps.processes.values())


class HangingPids(FakePsutil):
    """A process table whose walk hangs (a process stuck in the kernel) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.processes = users_ps().processes
        self.release = threading.Event()
        self.hang = False

    def Process(self, pid: int) -> FakeProcess:
        if self.hang:
            assert self.release.wait(30), "never released"
        return super().Process(pid)


def test_a_stuck_walk_leaves_both_groups_stale_and_holds_one_thread() -> None:
    ps = HangingPids()
    walk = ProcessWalk(ps)
    stuck: list[Any] = []
    sampler = Sampler(
        [ProcessesCollector(top_n=2, walk=walk), UsersCollector(top_n=5, walk=walk)],
        interval=0.5, on_sample=lambda s: None, host="h", timeout=0.05,
        on_stuck=stuck.append,
    )  # fmt: skip
    good = sampler.sample_once()
    assert set(good.groups) == {"processes", "users"}
    ps.processes[9] = FakeProcess(9, "new", [0.0], 1, user="carol")
    ps.hang = True  # the new process cannot be read
    for _ in range(5):
        sample = sampler.sample_once()
    assert set(sample.stale) == {"processes", "users"}
    assert sample.groups["users"] == good.groups["users"]  # the last good reading
    assert [s.key for s in stuck] == [WALK_KEY]  # one stuck call, reported once
    assert stuck[0].group == "processes" and stuck[0].mount is None
    assert len(sampler.threads) <= 2  # the runner, and the one thread in the walk
    ps.release.set()
    deadline = time.monotonic() + 10
    while "users" in sampler.sample_once().stale:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sampler.stop()


# -- this machine ---------------------------------------------------------------------


def test_users_against_this_machine(nobody_process: tuple[str, Any]) -> None:
    name, _child = nobody_process
    collector = UsersCollector(top_n=1000)  # the real psutil: the /proc path
    collector.collect(time.monotonic())
    result = collector.collect(time.monotonic() + 1)
    by_name = {u["name"]: u for u in result["users"]}
    assert by_name[name]["processes"] >= 1
    assert by_name[name]["rss_bytes"] >= HELD_BYTES
    assert by_name["root"]["processes"] >= 2  # this test and its server's helpers
    assert result["count"] == len(by_name) and result["others"] is None
    rss = [u["rss_bytes"] for u in result["users"]]
    assert rss == sorted(rss, reverse=True)


def test_a_users_cpu_seconds_never_fall_as_processes_exit_or_the_walk_pauses(
    tmp_path: Path,
) -> None:
    """This user's ``cpu_seconds_total`` while its processes come and go (three children
    that spin 0.3 s each and exit), with a pause in the middle: never lower than before,
    and grown at least by the children's CPU time."""
    me = psutil.Process().username()
    done = tmp_path / "done"
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER, str(done)])
    users = UsersCollector(top_n=1000)  # the real psutil: the /proc path

    def seconds() -> float:
        rows = users.collect(time.monotonic())["users"]
        return float(next(u["cpu_seconds_total"] for u in rows if u["name"] == me))

    values = [seconds()]
    try:
        deadline = time.monotonic() + 90
        ticks = 0
        while not done.exists():
            assert time.monotonic() < deadline, values[-5:]
            ticks += 1
            if ticks == 5:
                users.pause()  # nobody wants the group for a while
                time.sleep(0.5)
            values.append(seconds())
            time.sleep(0.1)
        values.append(seconds())
    finally:
        spawner.kill()
        spawner.wait(10)
        users.close()
    assert all(b >= a for a, b in itertools.pairwise(values)), values
    assert values[-1] - values[0] >= 3 * 0.3 * 0.95


# -- a real server ----------------------------------------------------------------------


def collector(sysmon: SysmonExtension, name: str) -> Any:
    return next(c for c in sysmon.sampler.collectors if c.name == name)


def latest_groups(sysmon: SysmonExtension) -> set[str]:
    latest = sysmon.broadcaster.latest
    return set() if latest is None else set(latest.groups)


@pytest.mark.parametrize("sysmon_config", [{"top_users": 1000}], indirect=True)
async def test_a_subscriber_gets_users_from_one_walk_per_tick(
    sysmon: SysmonExtension, connect: Any, nobody_process: tuple[str, Any]
) -> None:
    name, _child = nobody_process
    walk = collector(sysmon, "users").walk
    assert collector(sysmon, "processes").walk is walk
    await eventually(lambda: sysmon.broadcaster.published >= 2, 20)
    assert "users" not in latest_groups(sysmon) and walk.tracked == 0  # nobody wants it
    async with connect("metrics=processes,users") as ws:
        await recv_type(ws, "hello")
        frames = [await recv_type(ws, "status") for _ in range(3)]
        users = {u["name"]: u for u in frames[-1]["users"]["users"]}
        assert users[name]["processes"] >= 1
        assert users[name]["rss_bytes"] >= HELD_BYTES
        assert users["root"]["cpu_percent"] is not None  # known from the second walk on
        assert frames[-1]["users"]["count"] == len(users)
        walks, published = walk.walks, sysmon.broadcaster.published
        for _ in range(4):
            await recv_type(ws, "status")
        # both groups, one walk a tick (a tick may be walked and not yet published)
        ticks = sysmon.broadcaster.published - published
        assert ticks >= 4 and abs((walk.walks - walks) - ticks) <= 1, (walk.walks, ticks)
    await eventually(lambda: "users" not in latest_groups(sysmon), 20)
    assert walk.tracked == 0  # the readings went with the last reader


@pytest.mark.parametrize("sysmon_config", [{"top_users": 1000}], indirect=True)
async def test_a_scrape_wants_users_and_the_process_count(
    sysmon: SysmonExtension, jp_fetch: Any, nobody_process: tuple[str, Any]
) -> None:
    name, _child = nobody_process
    await eventually(lambda: sysmon.broadcaster.published >= 2, 20)
    assert "users" not in latest_groups(sysmon)
    await jp_fetch("sysmon", "metrics")  # a scrape reads the last sample, wants what it exports
    # users for its series, processes for sysmon_processes (one walk feeds both)
    await eventually(lambda: {"users", "processes"} <= latest_groups(sysmon), 20)
    body = (await jp_fetch("sysmon", "metrics")).body.decode()
    assert f'sysmon_user_memory_rss_bytes{{user="{name}"}}' in body
    assert "sysmon_users " in body
    assert "sysmon_processes " in body
    assert "pid=" not in body  # the process lists themselves are never exported
