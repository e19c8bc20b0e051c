"""The /proc readers the collectors use with the real psutil on Linux."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from jupyter_server_ext import procfs
from jupyter_server_ext.collectors import (
    CpuCollector,
    DiskCollector,
    MemoryCollector,
    NetworkCollector,
)
from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.processes import ProcessTable

pytestmark = pytest.mark.skipif(
    not procfs.AVAILABLE and not os.environ.get("CI"), reason="Linux /proc only"
)


def test_process_stat_agrees_with_psutil() -> None:
    me = psutil.Process()
    stat = procfs.process_stat(os.getpid())
    rss = me.memory_info().rss
    assert abs(stat.rss_bytes - rss) <= 0.1 * rss
    times = me.cpu_times()
    assert stat.cpu_seconds == pytest.approx(times.user + times.system, abs=0.05)
    assert procfs.process_stat(os.getpid()).start_ticks == stat.start_ticks


def test_process_stat_of_gone_and_zombie_processes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 20
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "child never exited"
            time.sleep(0.05)
        with pytest.raises(procfs.ProcessGone):
            procfs.process_stat(child.pid)
    finally:
        child.wait(10)
    with pytest.raises(procfs.ProcessGone):
        procfs.process_stat(child.pid)


def test_a_zombie_keeps_its_cpu_times_and_its_parent_gets_them_when_it_reaps() -> None:
    """The counters of a kernel's tree rest on this: a zombie's stat still holds its CPU
    time, and a parent that waits for a child adds the child's to its cutime + cstime."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.process_time() + 0.3\n"
         "while time.process_time() < t: pass"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            stat = procfs.parse_stat_fields(procfs.read_bytes(f"/proc/{child.pid}/stat"))
            if stat.zombie:
                break
            assert time.monotonic() < deadline, "child never exited"
            time.sleep(0.05)
        assert stat.cpu_ticks >= 0.25 * procfs.CLOCK_TICKS  # it spun 0.3 s
        assert stat.rss_pages == 0
        reaped_before = procfs.parse_stat_fields(procfs.read_bytes("/proc/self/stat"))
    finally:
        child.wait(10)
    reaped_after = procfs.parse_stat_fields(procfs.read_bytes("/proc/self/stat"))
    grown = reaped_after.reaped_ticks - reaped_before.reaped_ticks
    assert grown >= stat.cpu_ticks - 1  # the kernel's own rounding of utime/stime
    assert not reaped_after.zombie


def test_process_stat_parses_names_with_spaces_and_parentheses(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 6 + ["12345", "0", "3"]
    (tmp_path / "77" / "stat").write_text("77 (a) (b c) " + " ".join(fields) + " 0 0\n")
    stat = procfs.process_stat(77, proc=str(tmp_path))
    assert stat.cpu_seconds == pytest.approx(400 / procfs.CLOCK_TICKS)
    assert stat.start_ticks == 12345
    assert stat.rss_bytes == 3 * procfs.PAGE_BYTES


def test_meminfo_matches_psutil_and_falls_back_without_memavailable(tmp_path: Path) -> None:
    real = procfs.meminfo()
    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    assert real.total_bytes == vm.total
    assert real.swap_total_bytes == sw.total
    old = tmp_path / "meminfo"
    old.write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n")
    info = procfs.meminfo(str(old))
    assert info.total_bytes == 1_024_000
    assert info.available_bytes == 150 * 1024
    assert info.swap_total_bytes == 0
    result = MemoryCollector().collect(0.0)
    assert result["total_bytes"] == vm.total
    assert result["used_bytes"] == result["total_bytes"] - result["available_bytes"]


def test_diskstats_sums_whole_disks_only(tmp_path: Path) -> None:
    sys_block = tmp_path / "block"
    (sys_block / "vda").mkdir(parents=True)
    (sys_block / "cciss!c0d0").mkdir()
    stats = tmp_path / "diskstats"
    stats.write_text(
        " 252 0 vda 10 0 80 0 20 0 160 0 0 0 0\n"
        " 252 1 vda1 9 0 70 0 19 0 150 0 0 0 0\n"
        " 104 0 cciss/c0d0 1 0 8 0 2 0 16 0 0 0 0\n"
    )
    totals = procfs.DiskStats(str(stats), str(sys_block)).read()
    assert totals == procfs.DiskTotals(
        read_bytes=88 * 512, write_bytes=176 * 512, read_ops=11, write_ops=22
    )


def test_disk_collector_reads_the_same_counters_as_psutil() -> None:
    before = psutil.disk_io_counters(perdisk=False)
    ours = procfs.DiskStats().read()
    after = psutil.disk_io_counters(perdisk=False)
    if before is None:  # no disk at all: psutil has no counters, ours sum to nothing
        assert ours == procfs.DiskTotals(0, 0, 0, 0)
        return
    assert before.read_count <= ours.read_ops <= after.read_count
    assert before.write_count <= ours.write_ops <= after.write_count
    assert DiskCollector().collect(0.0)["mounts"]


def test_process_table_reads_cpu_and_rss_of_a_busy_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        table = ProcessTable()
        (first,) = table.read([child.pid])
        assert first.cpu_percent is None  # not known on a first reading
        assert first.name.startswith("python")
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.3)
            (info,) = table.read([child.pid])
            if info.cpu_percent is not None and info.cpu_percent > 20:
                break
            assert time.monotonic() < deadline, info
        assert info.rss_bytes > 1_000_000
        # a pid reused by another process is read afresh, not mixed with the old one
        table._tracked[child.pid].start_ticks -= 1
        table._tracked[child.pid].name = "stale"
        (again,) = table.read([child.pid])
        assert again.name != "stale" and again.cpu_percent is None
    finally:
        child.kill()
        child.wait(10)
    assert table.read([child.pid]) == []
    assert child.pid not in table._tracked


def test_cpu_ticks_match_psutil_and_the_collector_reads_them(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  100 5 50 800 40 1 2 3 7 0\n"
        "cpu0 60 5 30 380 20 1 1 2 7 0\n"
        "cpu1 40 0 20 420 20 0 1 1 0 0\n"
        "intr 12345 0\n"
    )
    overall, cores = procfs.cpu_ticks(str(stat))
    assert overall == (1001, 840)  # user..steal (guest is inside user), idle + iowait
    assert cores == [(499, 400), (502, 440)]
    _, real = procfs.cpu_ticks()
    assert len(real) == len(psutil.cpu_times(percpu=True))
    collector = CpuCollector()
    assert collector.collect(0.0)["percent"] is None
    busy = time.thread_time() + 0.3
    while time.thread_time() < busy:  # spin so that the next reading has elapsed ticks
        pass
    second = collector.collect(1.0)
    assert second["count"] == len(real)
    assert 0.0 < second["percent"] <= 100.0
    assert len(second["per_cpu"]) == len(real)


def test_cpu_modes_per_core_match_psutil_and_node_exporters_reading(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  100 5 50 800 40 1 2 3 7 0\n"
        "cpu0 60 5 30 380 20 1 1 2 7 0\n"
        "cpu2 40 0 20 420\n"  # CPU 1 offline; an old kernel's four columns
        "intr 12345 0\n"
    )
    assert procfs.parse_cpu_modes(stat.read_bytes()) == [
        (0, (60, 5, 30, 380, 20, 1, 1, 2)),  # guest (7) is inside user already
        (2, (40, 0, 20, 420, 0, 0, 0, 0)),
    ]
    for bad in (b"cpu0 1 2\n", b"cpuX 1 2 3 4\n", b"cpu0 1 x 3 4\n"):
        with pytest.raises(CollectorError, match="cannot parse"):
            procfs.parse_cpu_modes(bad)
    before = psutil.cpu_times(percpu=True)
    ours = procfs.parse_cpu_modes(procfs.read_bytes("/proc/stat"))
    after = psutil.cpu_times(percpu=True)
    assert len(ours) == len(before)
    for (number, ticks), a, b in zip(ours, before, after):
        for mode, value in zip(procfs.CPU_MODES, ticks):
            seconds = value / procfs.CLOCK_TICKS
            assert getattr(a, mode) - 0.01 <= seconds <= getattr(b, mode) + 0.01, (number, mode)


def test_net_counters_match_psutil(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n"
        "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
        "  eth0: 2000 20 0 0 0 0 0 0 3000 30 0 0 0 0 0 0\n"
    )
    assert procfs.net_counters(str(dev)) == {"lo": (10, 10, 1, 1), "eth0": (2000, 3000, 20, 30)}
    ours = procfs.net_counters()
    theirs = psutil.net_io_counters(pernic=True)
    assert set(ours) == set(theirs)
    for nic, (recv_bytes, _, _, _) in ours.items():
        assert recv_bytes <= theirs[nic].bytes_recv + 10_000_000
    first = NetworkCollector().collect(0.0)
    assert first["recv_bytes_per_s"] is None  # no rate on a first reading


# -- the collectors' /proc path against files with known numbers ---------------------


def test_cpu_busy_share_on_the_proc_path_from_a_known_pair(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    collector = CpuCollector(stat_path=str(stat))  # the real psutil: the /proc path
    stat.write_text(
        "cpu  100 0 100 800 0 0 0 0 0 0\n"
        "cpu0 50 0 50 400 0 0 0 0 0 0\n"
        "cpu1 50 0 50 400 0 0 0 0 0 0\n"
    )
    assert collector.collect(0.0)["percent"] is None
    # +700 ticks: user +300, idle +300, iowait +100 (idle too): 300 of 700 busy
    stat.write_text(
        "cpu  400 0 100 1100 100 0 0 0 0 0\n"
        "cpu0 350 0 50 400 0 0 0 0 0 0\n"  # +300, all busy
        "cpu1 50 0 50 700 100 0 0 0 0 0\n"  # +400, all idle (300 idle + 100 iowait)
    )
    result = collector.collect(1.0)
    assert result["percent"] == 42.9
    assert result["per_cpu"] == [100.0, 0.0]
    assert result["count"] == 2


def test_memory_on_the_proc_path_from_a_known_file(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n"
        "SwapTotal: 400 kB\nSwapFree: 300 kB\n"
    )
    (tmp_path / "memory").write_text(
        "some avg10=1.50 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    collector = MemoryCollector(meminfo_path=str(meminfo), pressure_root=tmp_path)
    result = collector.collect(0.0)
    assert result == {
        "total_bytes": 1_024_000,
        "available_bytes": 256_000,
        "used_bytes": 768_000,
        "percent": 75.0,
        "swap_total_bytes": 409_600,
        "swap_used_bytes": 102_400,
        "swap_percent": 25.0,
        "pressure": 1.5,
    }


def test_network_on_the_proc_path_from_a_known_pair(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    header = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
    collector = NetworkCollector(net_dev_path=str(dev))
    dev.write_text(header + "lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
                   "eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n")  # fmt: skip
    assert collector.collect(0.0)["recv_bytes_per_s"] is None
    dev.write_text(header + "lo: 9999 9 0 0 0 0 0 0 9999 9 0 0 0 0 0 0\n"
                   "eth0: 5000 14 0 0 0 0 0 0 2600 23 0 0 0 0 0 0\n")  # fmt: skip
    result = collector.collect(2.0)
    assert result == {
        "recv_bytes_per_s": 2000.0,
        "sent_bytes_per_s": 300.0,
        "recv_packets_per_s": 2.0,
        "sent_packets_per_s": 1.5,
    }


def test_disk_rates_on_the_proc_path_from_a_known_pair(tmp_path: Path) -> None:
    (tmp_path / "block" / "vda").mkdir(parents=True)
    stats = tmp_path / "diskstats"
    stats.write_text(" 252 0 vda 10 0 80 0 20 0 160 0 0 0 0\n")
    collector = DiskCollector(diskstats=procfs.DiskStats(str(stats), str(tmp_path / "block")))
    assert collector.collect(0.0)["read_bytes_per_s"] is None
    stats.write_text(" 252 0 vda 14 0 96 0 30 0 560 0 0 0 0\n")
    result = collector.collect(4.0)
    assert result["read_ops_per_s"] == 1.0 and result["write_ops_per_s"] == 2.5
    assert result["read_bytes_per_s"] == 16 * 512 / 4 and result["write_bytes_per_s"] == 400 * 128
    assert any(m["path"] == "/" and m["free_bytes"] > 0 for m in result["mounts"])


@pytest.mark.parametrize(
    ("name", "text", "shown"),
    [
        ("meminfo", "MemFree: 100 kB\n", r"has no MemTotal line"),
        ("meminfo", "MemTotal: lots kB\n", r"cannot parse .*meminfo"),
        ("stat", "cpu  1 2 x 4\n", r"cannot parse .*stat"),
        ("dev", "h\nh\neth0: 1 2\n", r"cannot parse .*dev"),
    ],
)
def test_broken_proc_files_are_errors_in_words(
    tmp_path: Path, name: str, text: str, shown: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    read = {"meminfo": procfs.meminfo, "stat": procfs.cpu_ticks, "dev": procfs.net_counters}
    with pytest.raises(CollectorError, match=shown):
        read[name](str(path))


def open_fds() -> set[str]:
    """The targets of this process's open descriptors (``/proc/self/fd``)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
    return fds


def stat_files(*pids: int) -> set[str]:
    return {f"/proc/{pid}/stat" for pid in pids} & open_fds()


def test_held_file_reads_each_time_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "counters"
    held = procfs.HeldFile(path)
    assert held.read() is None  # not there yet: looked for again next time
    path.write_bytes(b"first 1\n")
    assert held.read() == b"first 1\n"
    assert str(path) in open_fds()  # kept open between reads
    path.write_bytes(b"second, longer 22\n")  # rewritten in place, as /proc files are
    assert held.read() == b"second, longer 22\n"
    big = b"x" * (3 * procfs.CHUNK_BYTES + 5)  # more than one read's worth
    path.write_bytes(big)
    assert held.read() == big
    held.close()
    held.close()  # idempotent
    assert str(path) not in open_fds()
    assert held.read() == big  # reopened on the next read
    held.close()


def test_held_file_of_a_real_proc_file_follows_the_kernel() -> None:
    held = procfs.HeldFile(f"/proc/{os.getpid()}/stat")
    try:
        first = procfs.parse_stat(held.read() or b"")
        burn_until = time.process_time() + 0.05
        while time.process_time() < burn_until:
            pass
        second = procfs.parse_stat(held.read() or b"")
    finally:
        held.close()
    assert second[0] > first[0]  # CPU ticks moved: read anew, not a cached copy
    assert second[2] == first[2]


def test_process_table_holds_stat_files_between_ticks() -> None:
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    pids = [c.pid for c in children]
    table = ProcessTable(max_held=1)
    try:
        assert {i.pid for i in table.read(pids)} == set(pids)
        assert table.held_files == 1  # the limit: the other one is opened each tick
        assert len(stat_files(*pids)) == 1
        infos = {i.pid: i for i in table.read(pids)}
        assert set(infos) == set(pids)
        assert all(i.cpu_percent is not None for i in infos.values())  # both read twice
        assert len(stat_files(*pids)) == 1
        # the held one's process exits: its read fails, it is forgotten and its file closed
        held_pid = next(p for p in pids if f"/proc/{p}/stat" in open_fds())
        other = next(c for c in children if c.pid != held_pid)
        gone = next(c for c in children if c.pid == held_pid)
        gone.kill()
        gone.wait(10)
        assert [i.pid for i in table.read(pids)] == [other.pid]
        assert held_pid not in table._tracked
        assert stat_files(held_pid) == set()
        # the room it left is taken by the next process read
        table.read([other.pid])
        assert table.held_files == 1 and stat_files(other.pid) == {f"/proc/{other.pid}/stat"}
        table.close()
        assert table.held_files == 0 and stat_files(*pids) == set()
        assert table._tracked == {}
        (again,) = table.read([other.pid])  # usable after close: read afresh
        assert again.cpu_percent is None and table.held_files == 1
    finally:
        for child in children:
            child.kill()
            child.wait(10)
        table.close()
    assert stat_files(*pids) == set()


def test_a_walk_in_progress_closes_the_files_a_close_asked_for() -> None:
    """``close()`` from another thread (a pause while a walk is stuck in a read) leaves
    the files to the walk, which closes them when it returns."""
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    table = ProcessTable()
    entered, release = threading.Event(), threading.Event()
    identify = table._identify

    def slow_identify(pid: int) -> object:
        entered.set()
        release.wait(30)
        return identify(pid)

    try:
        table.read([first.pid])
        assert stat_files(first.pid)
        table._identify = slow_identify  # type: ignore[method-assign]
        walker = threading.Thread(target=table.read, args=([first.pid, second.pid],))
        walker.start()
        assert entered.wait(30)
        table.close()  # returns at once; the walk still reads the held file
        assert stat_files(first.pid)
        release.set()
        walker.join(30)
        assert not walker.is_alive()
        assert table.held_files == 0 and stat_files(first.pid, second.pid) == set()
    finally:
        release.set()
        for child in (first, second):
            child.kill()
            child.wait(10)
        table.close()


def test_system_collectors_close_their_held_files() -> None:
    collectors = [CpuCollector(), MemoryCollector(), NetworkCollector(), DiskCollector()]
    for collector in collectors:
        collector.collect(time.monotonic())
    held = {"/proc/stat", "/proc/meminfo", "/proc/net/dev", "/proc/diskstats"}
    # /proc/net/dev is a link to /proc/self/net/dev: compare by what the fd points at
    assert {"/proc/stat", "/proc/meminfo", "/proc/diskstats"} <= open_fds()
    for collector in collectors:
        collector.close()
        collector.close()
    assert not (held & open_fds())
    assert not any(t.endswith("/net/dev") for t in open_fds())


def test_held_stat_files_stay_within_a_share_of_the_file_limit() -> None:
    import resource

    from jupyter_server_ext.processes import MAX_HELD_FILES, held_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (800, hard))
        assert held_files_limit() == 100
        assert ProcessTable()._max_held == 100
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 16), hard))
        assert held_files_limit() == min(MAX_HELD_FILES, min(hard, 1 << 16) // 8)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_jupyter_collector_closes_the_stat_files_of_kernel_trees() -> None:
    from jupyter_server_ext.collectors import JupyterCollector, JupyterCounts, KernelRef

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    # Running, not just exec'd: a process the scheduler has not run yet may have no pages.
    assert child.stdout.readline() == b"up\n"
    counts = JupyterCounts(
        kernels=(KernelRef("k1", "python3", child.pid),), terminals=0, sessions=0
    )
    jupyter = JupyterCollector(lambda: counts)
    try:
        (usage,) = jupyter.collect(time.monotonic())["kernel_usage"]
        assert usage["rss_bytes"] > 0
        assert stat_files(child.pid) == {f"/proc/{child.pid}/stat"}
        jupyter.close()
        assert stat_files(child.pid) == set()
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        jupyter.close()
