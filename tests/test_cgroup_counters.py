"""The container group's CPU counters as the kernel counts them (``*_total``: what
Prometheus reads), from cgroup v1 and v2 trees written to a temp dir, and this
machine's own cgroup."""

from __future__ import annotations

import time
from pathlib import Path

from jupyter_server_ext.cgroup import ContainerCollector

from .test_cgroup import collector, v1_tree, write


def test_v2_counters_as_the_kernel_counts_them(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    write(
        cg,
        {
            "cgroup.controllers": "cpu memory",
            "pod/memory.current": "1000",
            "pod/cpu.stat": (
                "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
                "nr_periods 100\nnr_throttled 10\nthrottled_usec 250000\n"
            ),
        },
    )
    container = collector(tmp_path, "0::/pod\n")
    first = container.collect(0.0)
    assert first["cpu_usage_seconds_total"] == 1.5  # known from the first tick: no rate
    assert first["cpu_periods_total"] == 100
    assert first["cpu_throttled_periods_total"] == 10
    assert first["cpu_throttled_seconds_total"] == 0.25
    write(cg, {"pod/cpu.stat": "usage_usec 4000000\nnr_periods 140\nnr_throttled 30\n"})
    second = container.collect(2.0)
    assert second["cpu_usage_seconds_total"] == 4.0
    assert second["cpu_usage_cores"] == 1.25  # the rate stays, for the WebSocket
    assert second["cpu_throttled_seconds_total"] is None  # no quota controller: unknown


def test_v1_counters_from_cpuacct_and_cpu_stat(tmp_path: Path) -> None:
    v1_tree(tmp_path / "cg", usage_ns=3 * 10**9 + 5, periods=20, throttled=5, oom_kill=1)
    write(
        tmp_path / "cg",
        {"cpu/docker/abc/cpu.stat": "nr_periods 20\nnr_throttled 5\nthrottled_time 2500000000\n"},
    )
    container = collector(
        tmp_path, "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n"
    )
    result = container.collect(0.0)
    assert result["cpu_usage_seconds_total"] == 3.0  # ns, to the microsecond
    assert result["cpu_periods_total"] == 20
    assert result["cpu_throttled_periods_total"] == 5
    assert result["cpu_throttled_seconds_total"] == 2.5  # ns
    assert result["oom_kills"] == 1


def test_this_machines_cgroup_cpu_seconds_grow_with_the_cpu_we_use() -> None:
    container = ContainerCollector()
    first = container.collect(time.monotonic())["cpu_usage_seconds_total"]
    if first is None:  # no cgroup CPU accounting visible here
        assert container.collect(time.monotonic())["cgroup"] in (None, 1, 2)
        return
    spin = time.process_time() + 0.2
    while time.process_time() < spin:
        pass
    second = container.collect(time.monotonic())["cpu_usage_seconds_total"]
    assert second >= first + 0.15
