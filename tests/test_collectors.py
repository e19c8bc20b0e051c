"""The psutil collectors against recorded readings (tests/fixtures/psutil_linux.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_server_ext.collectors import (
    CpuCollector,
    DiskCollector,
    JupyterCollector,
    JupyterCounts,
    KernelRef,
    MemoryCollector,
    NetworkCollector,
    holding_mount,
)
from jupyter_server_ext.counters import CountersCollector
from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.processes import ProcessesCollector, ProcessTable
from jupyter_server_ext.procfs import CPU_MODES

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "psutil_linux.json").read_text())


def _nt(name: str, values: dict[str, Any]) -> Any:
    return namedtuple(name, list(values))(**values)


class FakePsutil:
    """psutil's module functions serving recorded readings; ``advance`` moves to the
    next reading. Process objects come from ``processes`` ({pid: FakeProcess})."""

    NoSuchProcess = psutil.NoSuchProcess
    ZombieProcess = psutil.ZombieProcess
    AccessDenied = psutil.AccessDenied

    def __init__(self, readings: list[dict[str, Any]] | None = None) -> None:
        self.readings = [dict(r) for r in (readings or RECORDED["readings"])]
        self.index = 0
        self.processes: dict[int, FakeProcess] = {}
        self.partition_reads = 0

    @property
    def now(self) -> dict[str, Any]:
        return self.readings[self.index]

    def advance(self) -> None:
        self.index += 1

    def cpu_times(self, percpu: bool = False) -> list[Any]:
        assert percpu
        return [_nt("scputimes", t) for t in self.now["cpu_times_percpu"]]

    def cpu_count(self) -> int:
        return int(self.now["cpu_count"])

    def getloadavg(self) -> tuple[float, float, float]:
        a, b, c = self.now["getloadavg"]
        return a, b, c

    def virtual_memory(self) -> Any:
        return _nt("svmem", self.now["virtual_memory"])

    def swap_memory(self) -> Any:
        return _nt("sswap", self.now["swap_memory"])

    def disk_io_counters(self, perdisk: bool = False) -> Any:
        io = self.now["disk_io_counters"]
        return None if io is None else _nt("sdiskio", io)

    def disk_partitions(self, all: bool = False) -> list[Any]:
        self.partition_reads += 1
        return [_nt("sdiskpart", p) for p in self.now["disk_partitions"]]

    def disk_usage(self, path: str) -> Any:
        usage = self.now["disk_usage"].get(path)
        if usage is None:
            raise PermissionError(13, "Permission denied", path)
        return _nt("sdiskusage", usage)

    def net_io_counters(self, pernic: bool = False) -> dict[str, Any]:
        return {k: _nt("snetio", v) for k, v in self.now["net_io_counters_pernic"].items()}

    def pids(self) -> list[int]:
        return list(self.processes) or list(self.now["pids"])

    def Process(self, pid: int) -> FakeProcess:
        try:
            return self.processes[pid]
        except KeyError:
            raise psutil.NoSuchProcess(pid) from None


class FakeProcess:
    def __init__(self, pid: int, name: str, cpu: list[float], rss: int, user: str = "u"):
        self.pid, self._name, self._cpu, self._rss, self._user = pid, name, list(cpu), rss, user
        self.gone = False
        self.denied = False
        self.reads = 0

    @contextmanager
    def oneshot(self) -> Any:
        yield

    def _check(self) -> None:
        if self.gone:
            raise psutil.NoSuchProcess(self.pid)
        if self.denied:
            raise psutil.AccessDenied(self.pid)

    def name(self) -> str:
        self._check()
        self.reads += 1
        return self._name

    def username(self) -> str:
        self._check()
        return self._user

    def cpu_percent(self, interval: float | None = None) -> float:
        self._check()
        return self._cpu.pop(0) if self._cpu else 0.0

    def memory_info(self) -> Any:
        self._check()
        return _nt("pmem", {"rss": self._rss, "vms": self._rss * 2})

    #: CPU seconds so far: its own, and its reaped children's (``cpu_times``).
    cpu_seconds = 0.0
    reaped_seconds = 0.0
    created = 1.0

    def cpu_times(self) -> Any:
        self._check()
        return _nt(
            "pcputimes",
            {"user": self.cpu_seconds, "system": 0.0, "children_user": self.reaped_seconds,
             "children_system": 0.0},
        )  # fmt: skip

    def create_time(self) -> float:
        self._check()
        return self.created

    def children(self, recursive: bool = False) -> list[FakeProcess]:
        assert recursive
        self._check()
        return list(self.descendants)

    descendants: tuple[FakeProcess, ...] = ()


# -- cpu ------------------------------------------------------------------------------


def test_cpu_first_tick_is_null_then_percent_from_deltas() -> None:
    ps = FakePsutil()
    cpu = CpuCollector(ps)
    first = cpu.collect(0.0)
    assert first["percent"] is None and first["per_cpu"] is None
    assert first["count"] == 2
    ps.advance()
    second = cpu.collect(1.0)
    # the recording spun one core for a second: roughly half of two cores busy
    assert 30.0 <= second["percent"] <= 100.0
    assert len(second["per_cpu"]) == 2
    assert all(0.0 <= p <= 100.0 for p in second["per_cpu"])
    assert second["load_1m"] == round(RECORDED["readings"][1]["getloadavg"][0], 2)


def test_cpu_counter_going_backwards_is_null_not_negative() -> None:
    a, b = RECORDED["readings"]
    ps = FakePsutil([b, a])  # time runs backwards: a reset
    cpu = CpuCollector(ps)
    cpu.collect(0.0)
    ps.advance()
    result = cpu.collect(1.0)
    assert result["percent"] is None
    assert result["per_cpu"] == [None, None]


def test_cpu_core_count_change_restarts_rates() -> None:
    a, b = RECORDED["readings"]
    b = dict(b, cpu_times_percpu=b["cpu_times_percpu"][:1])
    ps = FakePsutil([a, b])
    cpu = CpuCollector(ps)
    cpu.collect(0.0)
    ps.advance()
    assert cpu.collect(1.0)["per_cpu"] is None


# -- memory ---------------------------------------------------------------------------


def test_memory_fields_and_units() -> None:
    ps = FakePsutil()
    result = MemoryCollector(ps).collect(0.0)
    vm = RECORDED["readings"][0]["virtual_memory"]
    assert result["total_bytes"] == vm["total"]
    assert result["available_bytes"] == vm["available"]
    assert result["used_bytes"] == vm["total"] - vm["available"]
    assert result["percent"] == round(100 * result["used_bytes"] / vm["total"], 1)
    assert result["swap_total_bytes"] == 0 and result["swap_percent"] == 0.0


# -- disk -----------------------------------------------------------------------------


def test_disk_rates_from_recorded_io_and_mounts() -> None:
    ps = FakePsutil()
    disk = DiskCollector(ps)
    first = disk.collect(10.0)
    assert first["write_bytes_per_s"] is None and first["read_ops_per_s"] is None
    assert [m["path"] for m in first["mounts"]] == ["/"]
    assert first["mounts"][0]["total_bytes"] > 0
    ps.advance()
    second = disk.collect(12.0)  # 2 s later on the monotonic clock
    a, b = (r["disk_io_counters"] for r in RECORDED["readings"])
    assert second["write_bytes_per_s"] == round((b["write_bytes"] - a["write_bytes"]) / 2, 1)
    assert second["write_bytes_per_s"] >= 50 * 2**20 / 2  # the recording wrote 50 MiB
    assert second["write_ops_per_s"] == round((b["write_count"] - a["write_count"]) / 2, 1)
    # the counters themselves, for Prometheus's rate()
    assert first["read_bytes_total"] == a["read_bytes"]
    assert second["write_bytes_total"] == b["write_bytes"]
    assert (second["read_ops_total"], second["write_ops_total"]) == (
        b["read_count"],
        b["write_count"],
    )


def test_disk_counter_reset_is_null_and_recovers() -> None:
    a, b = RECORDED["readings"]
    ps = FakePsutil([b, a, b])
    disk = DiskCollector(ps)
    disk.collect(0.0)
    ps.advance()
    assert disk.collect(1.0)["write_bytes_per_s"] is None
    ps.advance()
    assert disk.collect(2.0)["write_bytes_per_s"] is not None


def test_disk_without_block_devices_and_with_unreadable_mount() -> None:
    reading = dict(RECORDED["readings"][0])
    reading["disk_io_counters"] = None
    reading["disk_partitions"] = [
        {"device": "/dev/a", "mountpoint": "/", "fstype": "ext4", "opts": "rw"},
        {"device": "/dev/a", "mountpoint": "/var/lib/x", "fstype": "ext4", "opts": "rw"},
        {"device": "/dev/b", "mountpoint": "/secret", "fstype": "xfs", "opts": "rw"},
    ]
    ps = FakePsutil([reading, reading])
    disk = DiskCollector(ps)
    disk.collect(0.0)
    ps.advance()
    result = disk.collect(1.0)
    assert result["read_bytes_per_s"] is None  # no disks: unknown, never 0
    # /dev/a once at its shortest path; /secret unreadable, left out
    assert [m["path"] for m in result["mounts"]] == ["/"]


def test_mount_table_is_reread_every_30_s_usage_every_tick() -> None:
    ps = FakePsutil([RECORDED["readings"][0]] * 2)
    disk = DiskCollector(ps)
    for now in (0.0, 5.0, 29.0):
        assert disk.collect(now)["mounts"][0]["path"] == "/"
    assert ps.partition_reads == 2  # the local disks and the whole table, once
    ps.readings[0] = dict(ps.readings[0], disk_partitions=[])  # the mount vanished...
    ps.readings[0]["disk_usage"] = {}  # ...and / is unreadable: left out, not an error
    assert disk.collect(31.0)["mounts"] == []
    assert ps.partition_reads == 4


class MountTable(FakePsutil):
    """A host's mount table: ``all=False`` gives the local disks only, as psutil does
    (it hides tmpfs, overlay, NFS, CIFS and FUSE); ``all=True`` every mount."""

    LOCAL = (
        ("/dev/sda1", "/", "ext4"),
        ("/dev/sda1", "/etc/hosts", "ext4"),
        ("/dev/sdb", "/data", "xfs"),
    )
    OTHER = (
        ("overlay", "/", "overlay"),  # stacked on /: the visible one
        ("tmpfs", "/dev/shm", "tmpfs"),
        ("nas:/export/home", "/home", "nfs4"),
        ("nas:/export/scratch", "/scratch", "nfs"),
        ("//files/share", "/mnt/share", "cifs"),
        ("s3fs", "/mnt/bucket", "fuse.s3fs"),
        ("tmpfs", "/tmp/vol", "tmpfs"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.usage_paths: list[str] = []

    def disk_partitions(self, all: bool = False) -> list[Any]:
        self.partition_reads += 1
        rows = self.LOCAL + (self.OTHER if all else ())
        return [
            _nt("sdiskpart", {"device": d, "mountpoint": m, "fstype": t, "opts": "rw"})
            for d, m, t in rows
        ]

    def disk_usage(self, path: str) -> Any:
        self.usage_paths.append(path)
        return _nt("sdiskusage", {"total": 1000, "used": 950, "free": 50, "percent": 95.0})


def mounts_of(disk: DiskCollector) -> dict[str, tuple[str, bool]]:
    return {m["path"]: (m["fstype"], m["home"]) for m in disk.collect(0.0)["mounts"]}


def test_local_disks_only_by_default_every_mount_not_home() -> None:
    assert mounts_of(DiskCollector(MountTable())) == {
        "/": ("ext4", False),
        "/data": ("xfs", False),
    }


def test_the_home_volume_is_listed_whatever_its_type() -> None:
    disk = DiskCollector(MountTable(), home_paths=["/home/jovyan", "/home/jovyan/work"])
    mounts = disk.collect(0.0)["mounts"]
    home = next(m for m in mounts if m["path"] == "/home")
    assert home == {
        "path": "/home", "fstype": "nfs4", "total_bytes": 1000, "used_bytes": 950,
        "free_bytes": 50, "percent": 95.0, "home": True, "stuck": False,
    }  # fmt: skip
    assert [m["path"] for m in mounts] == ["/", "/data", "/home"]  # the other NFS: opt-in
    for home, mount, fstype in [("/tmp/vol/x", "/tmp/vol", "tmpfs"),
                                ("/mnt/bucket", "/mnt/bucket", "fuse.s3fs")]:  # fmt: skip
        disk = DiskCollector(MountTable(), home_paths=[home])
        assert mounts_of(disk)[mount] == (fstype, True)


def test_a_home_on_the_root_filesystem_marks_the_visible_root() -> None:
    # /root is on / where an overlay is stacked over the disk: the overlay is the home
    assert mounts_of(DiskCollector(MountTable(), home_paths=["/root", "/home2"])) == {
        "/": ("overlay", True),
        "/data": ("xfs", False),
    }


def test_a_home_path_is_resolved_through_symlinks(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/home/jovyan")
    disk = DiskCollector(MountTable(), home_paths=[str(tmp_path / "link")])
    assert mounts_of(disk)["/home"] == ("nfs4", True)


def test_network_mounts_are_opt_in() -> None:
    disk = DiskCollector(MountTable(), network_mounts=True)
    assert mounts_of(disk) == {
        "/": ("ext4", False),
        "/data": ("xfs", False),
        "/home": ("nfs4", False),
        "/mnt/bucket": ("fuse.s3fs", False),
        "/mnt/share": ("cifs", False),
        "/scratch": ("nfs", False),
    }


def test_holding_mount_takes_the_longest_mount_point_above() -> None:
    parts = MountTable().disk_partitions(all=True)
    assert holding_mount("/home", parts).mountpoint == "/home"
    assert holding_mount("/homework", parts).mountpoint == "/"  # a prefix is not enough
    assert holding_mount("/tmp/vol/a/b", parts).mountpoint == "/tmp/vol"
    assert holding_mount("/", parts).fstype == "overlay"
    assert holding_mount("/x", []) is None


# -- network --------------------------------------------------------------------------


def test_network_rates_exclude_loopback() -> None:
    a, b = RECORDED["readings"]
    b = json.loads(json.dumps(b))
    b["net_io_counters_pernic"]["lo"]["bytes_recv"] += 10**9  # must not count
    ps = FakePsutil([a, b])
    net = NetworkCollector(ps)
    assert net.collect(0.0)["recv_bytes_per_s"] is None
    ps.advance()
    result = net.collect(1.0)
    expected = sum(
        b["net_io_counters_pernic"][nic]["bytes_recv"]
        - a["net_io_counters_pernic"][nic]["bytes_recv"]
        for nic in a["net_io_counters_pernic"]
        if nic != "lo"
    )
    assert result["recv_bytes_per_s"] == float(expected)
    assert result["recv_bytes_per_s"] > 0


def test_network_interface_reset_or_new_is_left_out_of_the_sum() -> None:
    a, b = RECORDED["readings"]
    b = json.loads(json.dumps(b))
    b["net_io_counters_pernic"]["eth0"]["bytes_sent"] = 0  # reset
    b["net_io_counters_pernic"]["veth9"] = dict(
        b["net_io_counters_pernic"]["eth0"], bytes_sent=10**9
    )
    ps = FakePsutil([a, b])
    net = NetworkCollector(ps)
    net.collect(0.0)
    ps.advance()
    result = net.collect(1.0)
    others = sum(
        b["net_io_counters_pernic"][n]["bytes_sent"] - a["net_io_counters_pernic"][n]["bytes_sent"]
        for n in ("ifb0", "ifb1")
    )
    assert result["sent_bytes_per_s"] == float(others)
    assert result["sent_bytes_per_s"] >= 0


# -- counters (on demand) ---------------------------------------------------------------


def test_counters_per_core_and_mode_and_per_interface_loopback_included() -> None:
    ps = FakePsutil()
    counters = CountersCollector(ps)
    assert counters.on_demand and counters.name == "counters"
    result = counters.collect(0.0)
    recorded = RECORDED["readings"][0]
    assert result["cpu"][1] == {
        "cpu": 1, **{m: round(recorded["cpu_times_percpu"][1][m], 2) for m in CPU_MODES}
    }  # fmt: skip
    assert len(result["cpu"]) == 2
    nics = recorded["net_io_counters_pernic"]
    assert [n["device"] for n in result["network"]] == ["lo", "eth0", "ifb0", "ifb1"]
    assert result["network"][0] == {
        "device": "lo",
        "receive_bytes": nics["lo"]["bytes_recv"],
        "transmit_bytes": nics["lo"]["bytes_sent"],
        "receive_packets": nics["lo"]["packets_recv"],
        "transmit_packets": nics["lo"]["packets_sent"],
    }
    assert result["network_devices_left_out"] == 0


def test_counters_list_a_bounded_and_stable_set_of_interfaces() -> None:
    reading = json.loads(json.dumps(RECORDED["readings"][0]))
    nics = reading["net_io_counters_pernic"]
    ps = FakePsutil([reading])
    counters = CountersCollector(ps, max_devices=3)

    def listed() -> tuple[list[str], int]:
        result = counters.collect(0.0)
        return [n["device"] for n in result["network"]], result["network_devices_left_out"]

    assert listed() == (["lo", "eth0", "ifb0"], 1)  # loopback first, then by name
    nics["a0"] = dict(nics["eth0"])  # a new interface does not push a listed one out
    assert listed() == (["lo", "eth0", "ifb0"], 2)
    del nics["ifb0"]  # a listed one goes: the next by name takes its place
    assert listed() == (["lo", "a0", "eth0"], 1)


def test_counters_without_their_proc_files_fail_in_words(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(CollectorError, match="missing does not exist"):
        CountersCollector(net_dev_path=missing).collect(0.0)
    with pytest.raises(CollectorError, match="missing does not exist"):
        CountersCollector(stat_path=missing).collect(0.0)


def test_counters_from_proc_agree_with_psutil_and_close_when_paused() -> None:
    counters = CountersCollector()  # the real psutil: /proc/stat and /proc/net/dev
    before = psutil.net_io_counters(pernic=True)["lo"].bytes_recv
    result = counters.collect(0.0)
    after = psutil.net_io_counters(pernic=True)["lo"].bytes_recv
    lo = next(n for n in result["network"] if n["device"] == "lo")
    assert before <= lo["receive_bytes"] <= after
    assert len(result["cpu"]) == len(psutil.cpu_times(percpu=True))
    assert result["cpu"][0]["idle"] > 0
    counters.pause()
    assert counters.collect(1.0)["cpu"][0]["idle"] >= result["cpu"][0]["idle"]
    counters.close()


# -- processes ------------------------------------------------------------------------


def make_processes(ps: FakePsutil) -> None:
    ps.processes = {
        1: FakeProcess(1, "init", [0.0, 0.1], 10_000_000),
        2: FakeProcess(2, "python", [0.0, 180.0], 50_000_000),
        3: FakeProcess(3, "postgres", [0.0, 20.0], 900_000_000),
        4: FakeProcess(4, "secret", [0.0, 99.0], 1),
    }
    ps.processes[4].denied = True


def test_processes_top_lists_after_priming() -> None:
    ps = FakePsutil()
    make_processes(ps)
    collector = ProcessesCollector(top_n=2, ps=ps)
    first = collector.collect(0.0)
    assert first["count"] == 4
    assert first["top_cpu"] == []  # first reading of every process is unknown
    assert [p["pid"] for p in first["top_memory"]] == [3, 2]
    second = collector.collect(1.0)
    assert [(p["name"], p["cpu_percent"]) for p in second["top_cpu"]] == [
        ("python", 180.0),
        ("postgres", 20.0),
    ]
    assert second["top_cpu"][0] == {
        "pid": 2,
        "name": "python",
        "user": "u",
        "cpu_percent": 180.0,
        "rss_bytes": 50_000_000,
    }
    # name is read once per process, not every tick
    assert ps.processes[2].reads == 1


def test_processes_vanishing_mid_walk_are_skipped() -> None:
    ps = FakePsutil()
    make_processes(ps)
    collector = ProcessesCollector(top_n=5, ps=ps)
    collector.collect(0.0)
    ps.processes[2].gone = True
    result = collector.collect(1.0)
    assert 2 not in [p["pid"] for p in result["top_memory"]]
    assert result["count"] == 4  # still listed by pids(), gone by the time it was read


def test_processes_count_only_when_top_is_zero() -> None:
    ps = FakePsutil()
    make_processes(ps)
    result = ProcessesCollector(top_n=0, ps=ps).collect(0.0)
    assert result == {"count": 4, "top_cpu": [], "top_memory": []}
    assert all(p.reads == 0 for p in ps.processes.values())


def test_process_table_forgets_exited_pids() -> None:
    ps = FakePsutil()
    make_processes(ps)
    table = ProcessTable(ps)
    table.read([1, 2, 3])
    table.read([1])
    assert set(table._tracked) == {1}


def test_processes_against_this_machine() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        collector = ProcessesCollector(top_n=3)  # the real psutil: the /proc path
        collector.collect(time.monotonic())
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.3)
            result = collector.collect(time.monotonic())
            top_cpu = {p["pid"]: p for p in result["top_cpu"]}
            if busy.pid in top_cpu and top_cpu[busy.pid]["cpu_percent"] > 20:
                break
            assert time.monotonic() < deadline, result["top_cpu"]
    finally:
        busy.kill()
        busy.wait(10)
    assert top_cpu[busy.pid]["cpu_percent"] <= 100 * (os.cpu_count() or 1) + 10
    assert top_cpu[busy.pid]["name"].startswith("python")
    assert result["count"] == pytest.approx(len(psutil.pids()), abs=20)
    assert len(result["top_memory"]) == 3
    rss = [p["rss_bytes"] for p in result["top_memory"]]
    assert rss == sorted(rss, reverse=True) and rss[-1] > 0


def test_processes_run_on_demand_and_forget_readings_when_paused() -> None:
    ps = FakePsutil()
    make_processes(ps)
    collector = ProcessesCollector(top_n=2, ps=ps)
    assert collector.on_demand
    collector.collect(0.0)
    collector.pause()
    # after a pause every process is read afresh: no CPU share over the pause
    assert collector.collect(1.0)["top_cpu"] == []


# -- jupyter --------------------------------------------------------------------------


def test_jupyter_kernel_usage_from_pids() -> None:
    ps = FakePsutil()
    ps.processes = {42: FakeProcess(42, "python", [0.0, 12.5], 80_000_000)}
    counts = JupyterCounts(
        kernels=(
            KernelRef("k1", "python3", 42, "work/analysis.ipynb", "busy", 1700000000.5, 2),
            KernelRef("k2", "remote", None),
        ),
        terminals=2,
        sessions=1,
    )
    collector = JupyterCollector(lambda: counts, ps=ps)
    collector.collect(0.0)
    result = collector.collect(1.0)
    assert result["kernels"] == 2 and result["terminals"] == 2 and result["sessions"] == 1
    assert result["kernel_usage"] == [
        {
            "id": "k1",
            "name": "python3",
            "pid": 42,
            "path": "work/analysis.ipynb",
            "execution_state": "busy",
            "last_activity": 1700000000.5,
            "connections": 2,
            "cpu_percent": 12.5,
            "cpu_seconds_total": 0.0,
            "rss_bytes": 80_000_000,
        },
        {
            "id": "k2",
            "name": "remote",
            "pid": None,
            "path": None,
            "execution_state": None,
            "last_activity": None,
            "connections": None,
            "cpu_percent": None,
            "cpu_seconds_total": None,
            "rss_bytes": None,
        },
    ]


def test_jupyter_kernel_usage_covers_the_process_tree() -> None:
    ps = FakePsutil()
    kernel = FakeProcess(42, "python", [0.0, 10.0], 100)
    child = FakeProcess(43, "python", [0.0, 50.0], 1000)
    grandchild = FakeProcess(44, "sleep", [], 10)  # first seen on the second tick
    kernel.descendants = (child,)
    kernel.cpu_seconds, kernel.reaped_seconds, child.cpu_seconds = 2.0, 0.5, 4.0
    ps.processes = {42: kernel, 43: child}
    counts = JupyterCounts(kernels=(KernelRef("k1", "python3", 42),), terminals=0, sessions=0)
    collector = JupyterCollector(lambda: counts, ps=ps)
    first = collector.collect(0.0)["kernel_usage"][0]
    assert (first["rss_bytes"], first["cpu_percent"]) == (1100, None)
    assert first["cpu_seconds_total"] == 6.5  # the tree's, its reaped children's too
    kernel.descendants = (child, grandchild)
    ps.processes[44] = grandchild
    grandchild.cpu_seconds = 0.25
    second = collector.collect(1.0)["kernel_usage"][0]
    assert second["rss_bytes"] == 1110
    assert second["cpu_percent"] == 60.0  # the grandchild's first reading counts as 0
    assert second["cpu_seconds_total"] == 6.75  # a new process counts in full
    assert collector.kernel_pids == {42: "k1", 43: "k1", 44: "k1"}  # for the gpu group


def test_jupyter_server_not_answering_is_a_collector_error() -> None:
    def slow() -> JupyterCounts:
        raise TimeoutError

    with pytest.raises(CollectorError, match="did not answer"):
        JupyterCollector(slow, ps=FakePsutil()).collect(0.0)
