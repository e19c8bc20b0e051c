"""The container collector against cgroup v1 and v2 trees written to a temp dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from jupyter_server_ext.cgroup import ContainerCollector
from jupyter_server_ext.errors import CollectorError

GiB = 1 << 30
#: The CPU counters of a tree without cpu.stat / cpuacct.usage.
NO_TOTALS = {
    "cpu_usage_seconds_total": None,
    "cpu_periods_total": None,
    "cpu_throttled_periods_total": None,
    "cpu_throttled_seconds_total": None,
}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def collector(tmp_path: Path, proc_cgroup: str) -> ContainerCollector:
    (tmp_path / "proc_self_cgroup").write_text(proc_cgroup)
    return ContainerCollector(tmp_path / "cg", tmp_path / "proc_self_cgroup")


def test_v2_limits_of_own_cgroup(tmp_path: Path) -> None:
    write(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory pids",
            "kubepods/pod1/memory.max": "max",
            "kubepods/pod1/cpu.max": "max 100000",
            "kubepods/pod1/c1/memory.max": str(2 * GiB),
            "kubepods/pod1/c1/memory.current": str(GiB),
            "kubepods/pod1/c1/memory.stat": "anon 100\nfile 300\ninactive_file 268435456\n",
            "kubepods/pod1/c1/cpu.max": "150000 100000",
        },
    )
    result = collector(tmp_path, "0::/kubepods/pod1/c1\n").collect(0.0)
    assert result == {
        "cgroup": 2,
        "memory_limit_bytes": 2 * GiB,
        "memory_used_bytes": GiB - 268435456,
        "cpu_limit_cores": 1.5,
        "cpu_usage_cores": None,
        "cpu_throttled_percent": None,
        "oom_kills": None,
        "memory_pressure": None,
        "cpu_pressure": None,
        "io_pressure": None,
        **NO_TOTALS,
    }


def test_v2_tighter_limit_on_an_ancestor_wins(tmp_path: Path) -> None:
    write(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory",
            "user.slice/memory.max": str(GiB),
            "user.slice/cpu.max": "50000 100000",
            "user.slice/jupyter/memory.max": "max",
            "user.slice/jupyter/cpu.max": "max 100000",
            "user.slice/jupyter/memory.current": "1000",
        },
    )
    result = collector(tmp_path, "0::/user.slice/jupyter\n").collect(0.0)
    assert result["memory_limit_bytes"] == GiB
    assert result["cpu_limit_cores"] == 0.5
    assert result["memory_used_bytes"] == 1000


def test_v2_unlimited_is_null(tmp_path: Path) -> None:
    write(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory",
            "a/memory.max": "max",
            "a/cpu.max": "max 100000",
            "a/memory.current": "4096",
            "a/memory.stat": "inactive_file 0\n",
        },
    )
    result = collector(tmp_path, "0::/a\n").collect(0.0)
    assert result["memory_limit_bytes"] is None
    assert result["cpu_limit_cores"] is None
    assert result["memory_used_bytes"] == 4096


@pytest.mark.parametrize("proc", ["0::/\n", "0::/../../host/path\n"])
def test_v2_namespaced_cgroup_reads_the_root(tmp_path: Path, proc: str) -> None:
    # inside a container with its own cgroup namespace (Docker's and containerd's default
    # on cgroup v2) /proc/self/cgroup says 0::/ (or a path outside the namespace): the
    # mount's root is the container's own cgroup, a non-root cgroup of the host, and it
    # has memory.current and memory.max
    write(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory",
            "cpu.max": "200000 100000",
            "memory.max": str(2 * GiB),
            "memory.current": str(GiB + 4096),
            "memory.stat": "anon 1000\ninactive_file 4096\n",
        },
    )
    result = collector(tmp_path, proc).collect(0.0)
    assert result["cgroup"] == 2
    assert result["cpu_limit_cores"] == 2.0
    assert result["memory_limit_bytes"] == 2 * GiB
    assert result["memory_used_bytes"] == GiB


def test_v2_true_host_root_has_no_memory_figure(tmp_path: Path) -> None:
    # the root of a host's hierarchy: the kernel gives it no memory.current (nor
    # memory.max, cpu.max): used is null, not an error, and the host's memory stands
    write(
        tmp_path / "cg",
        {
            "cgroup.controllers": "cpu memory",
            "memory.stat": "anon 1000\ninactive_file 4096\n",
            "cpu.stat": "usage_usec 10\n",
        },
    )
    result = collector(tmp_path, "0::/\n").collect(0.0)
    assert result["cgroup"] == 2
    assert result["memory_used_bytes"] is None
    assert result["memory_limit_bytes"] is None and result["cpu_limit_cores"] is None


def test_v2_missing_memory_current_is_a_collector_error(tmp_path: Path) -> None:
    write(tmp_path / "cg", {"cgroup.controllers": "memory", "a/memory.max": "max"})
    with pytest.raises(CollectorError, match=r"memory\.current"):
        collector(tmp_path, "0::/a\n").collect(0.0)


def test_v1_hybrid_layout_like_this_machine(tmp_path: Path) -> None:
    unlimited = "9223372036854771712"
    write(
        tmp_path / "cg",
        {
            "unified/cgroup.procs": "",  # the hybrid layout's empty v2 mount
            "memory/memory.limit_in_bytes": unlimited,
            "memory/docker/abc/memory.limit_in_bytes": str(4 * GiB),
            "memory/docker/abc/memory.usage_in_bytes": str(GiB),
            "memory/docker/abc/memory.stat": (
                f"cache 5\nhierarchical_memory_limit {3 * GiB}\ntotal_inactive_file 1024\n"
            ),
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "cpu/docker/abc/cpu.cfs_quota_us": "250000",
            "cpu/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    result = collector(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n").collect(
        0.0
    )
    assert result == {
        "cgroup": 1,
        "memory_limit_bytes": 3 * GiB,  # the hierarchical limit is the effective one
        "memory_used_bytes": GiB - 1024,
        "cpu_limit_cores": 2.5,
        "cpu_usage_cores": None,
        "cpu_throttled_percent": None,
        "oom_kills": None,
        "memory_pressure": None,
        "cpu_pressure": None,
        "io_pressure": None,
        **NO_TOTALS,
    }


def test_v1_unlimited_is_null(tmp_path: Path) -> None:
    write(
        tmp_path / "cg",
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": "123456",
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
        },
    )
    result = collector(tmp_path, "4:memory:/\n1:cpu:/\n").collect(0.0)
    assert result["memory_limit_bytes"] is None
    assert result["cpu_limit_cores"] is None
    assert result["memory_used_bytes"] == 123456


def test_v1_missing_usage_is_a_collector_error(tmp_path: Path) -> None:
    write(tmp_path / "cg", {"memory/memory.limit_in_bytes": "1000"})
    with pytest.raises(CollectorError, match=r"memory\.usage_in_bytes"):
        collector(tmp_path, "4:memory:/\n").collect(0.0)


def test_no_cgroup_filesystem_is_all_null(tmp_path: Path) -> None:
    (tmp_path / "cg").mkdir()
    result = collector(tmp_path, "").collect(0.0)
    assert result == {
        "cgroup": None,
        "memory_limit_bytes": None,
        "memory_used_bytes": None,
        "cpu_limit_cores": None,
        "cpu_usage_cores": None,
        "cpu_throttled_percent": None,
        "oom_kills": None,
        "memory_pressure": None,
        "cpu_pressure": None,
        "io_pressure": None,
        **NO_TOTALS,
    }


FIELDS = {
    "cgroup",
    "memory_limit_bytes",
    "memory_used_bytes",
    "cpu_limit_cores",
    "cpu_usage_cores",
    "cpu_throttled_percent",
    "oom_kills",
    "memory_pressure",
    "cpu_pressure",
    "io_pressure",
    *NO_TOTALS,
}


def test_this_machine() -> None:
    result = ContainerCollector().collect(0.0)
    assert set(result) == FIELDS
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").is_file():
        assert result["cgroup"] == 2
    elif (root / "memory").is_dir():
        assert result["cgroup"] == 1
        assert result["memory_used_bytes"] > 0  # this process uses memory
    else:
        assert result["cgroup"] is None


# -- counters: CPU use, throttling, OOM kills, pressure --------------------------------


V2_PSI = (
    "some avg10={} avg60=0.50 avg300=0.10 total=12345\nfull avg10=0.00 avg60=0 avg300=0 total=0\n"
)


def test_v2_counters_and_pressure(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    write(
        cg,
        {
            "cgroup.controllers": "cpu memory io",
            "pod/memory.max": str(GiB),
            "pod/memory.current": "1000",
            "pod/cpu.max": "200000 100000",
            "pod/cpu.stat": "usage_usec 1000000\nnr_periods 100\nnr_throttled 10\n",
            "pod/memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n",
            "pod/memory.pressure": V2_PSI.format("12.50"),
            "pod/cpu.pressure": V2_PSI.format("3.25"),
            "pod/io.pressure": V2_PSI.format("0.00"),
        },
    )
    container = collector(tmp_path, "0::/pod\n")
    first = container.collect(100.0)
    assert first["cpu_usage_cores"] is None  # a rate needs two readings
    assert first["cpu_throttled_percent"] is None
    assert first["oom_kills"] == 2
    assert (first["memory_pressure"], first["cpu_pressure"], first["io_pressure"]) == (
        12.5,
        3.25,
        0.0,
    )
    # 2 s later: 3 s of CPU time used (1.5 cores), 20 of 40 periods throttled
    write(cg, {"pod/cpu.stat": "usage_usec 4000000\nnr_periods 140\nnr_throttled 30\n"})
    write(cg, {"pod/memory.events": "oom 3\noom_kill 3\n"})
    second = container.collect(102.0)
    assert second["cpu_usage_cores"] == 1.5
    assert second["cpu_throttled_percent"] == 50.0
    assert second["oom_kills"] == 3


def test_files_are_held_between_ticks_a_missing_one_is_looked_for_again_and_close(
    tmp_path: Path,
) -> None:
    cg = tmp_path / "cg"
    write(
        cg,
        {
            "cgroup.controllers": "cpu memory",
            "pod/memory.current": "1000",
            "pod/cpu.stat": "usage_usec 1000000\nnr_periods 100\nnr_throttled 10\n",
        },
    )
    container = collector(tmp_path, "0::/pod\n")
    first = container.collect(1.0)
    assert first["memory_limit_bytes"] is None and first["oom_kills"] is None

    def held() -> set[str]:
        return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")}  # fmt: skip

    assert {str(cg / "pod/memory.current"), str(cg / "pod/cpu.stat")} <= held()
    # a limit set and an OOM kill counted after the first tick are seen on the next one
    write(cg, {"pod/memory.max": str(GiB), "pod/memory.events": "oom_kill 1\n"})
    write(cg, {"pod/memory.current": "2000"})
    second = container.collect(2.0)
    assert second["memory_limit_bytes"] == GiB and second["oom_kills"] == 1
    assert second["memory_used_bytes"] == 2000
    container.close()
    container.close()
    assert not any(path.startswith(str(cg)) for path in held())
    assert container.collect(3.0)["memory_used_bytes"] == 2000  # reopened after close
    container.close()


def test_v2_without_psi_is_null(tmp_path: Path) -> None:
    write(
        tmp_path / "cg",
        {"cgroup.controllers": "memory", "a/memory.current": "1", "a/memory.events": "oom 0\n"},
    )
    result = collector(tmp_path, "0::/a\n").collect(0.0)
    assert result["memory_pressure"] is None
    assert result["io_pressure"] is None
    assert result["oom_kills"] is None  # a kernel without the oom_kill counter


def v1_tree(cg: Path, usage_ns: int, periods: int, throttled: int, oom_kill: int) -> None:
    write(
        cg,
        {
            "memory/docker/abc/memory.limit_in_bytes": str(GiB),
            "memory/docker/abc/memory.usage_in_bytes": str(GiB // 2),
            "memory/docker/abc/memory.oom_control": (
                f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n"
            ),
            "cpu/docker/abc/cpu.cfs_quota_us": "50000",
            "cpu/docker/abc/cpu.cfs_period_us": "100000",
            "cpu/docker/abc/cpu.stat": (
                f"nr_periods {periods}\nnr_throttled {throttled}\nthrottled_time 5\n"
            ),
            "cpuacct/docker/abc/cpuacct.usage": str(usage_ns),
        },
    )


def test_v1_counters(tmp_path: Path) -> None:
    v1_tree(tmp_path / "cg", usage_ns=10**9, periods=10, throttled=0, oom_kill=0)
    container = collector(
        tmp_path, "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n"
    )
    first = container.collect(10.0)
    assert first["oom_kills"] == 0
    assert first["cpu_usage_cores"] is None
    v1_tree(tmp_path / "cg", usage_ns=3 * 10**9, periods=20, throttled=5, oom_kill=1)
    second = container.collect(14.0)
    assert second["cpu_usage_cores"] == 0.5  # 2 s of CPU in 4 s
    assert second["cpu_throttled_percent"] == 50.0  # 5 of 10 periods
    assert second["oom_kills"] == 1
    assert second["memory_pressure"] is None  # v1 has no per-cgroup PSI
    # no period passed (an idle cgroup): nothing was throttled
    third = container.collect(16.0)
    assert third["cpu_throttled_percent"] == 0.0
    assert third["cpu_usage_cores"] == 0.0


def test_counter_reset_is_null_not_negative(tmp_path: Path) -> None:
    v1_tree(tmp_path / "cg", usage_ns=5 * 10**9, periods=50, throttled=5, oom_kill=0)
    container = collector(
        tmp_path, "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n"
    )
    container.collect(0.0)
    v1_tree(tmp_path / "cg", usage_ns=10**9, periods=10, throttled=1, oom_kill=0)
    second = container.collect(1.0)
    assert second["cpu_usage_cores"] is None
    assert second["cpu_throttled_percent"] is None


def test_v1_subtree_mount_finds_own_cgroup_by_its_tail(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host's full path, the mount shows only our subtree
    write(
        tmp_path / "cg",
        {
            "memory/memory.usage_in_bytes": "1",
            "memory/memory.oom_control": "oom_kill 0\n",
            "memory/child/memory.usage_in_bytes": "2",
            "memory/child/memory.oom_control": "oom_kill 7\n",
        },
    )
    result = collector(tmp_path, "4:memory:/host/pod/child\n").collect(0.0)
    assert result["oom_kills"] == 7
    assert result["memory_used_bytes"] == 2


def test_this_machine_counters_move() -> None:
    """The real files: CPU use is a rate from the second reading on, OOM kills a count."""
    container = ContainerCollector()
    first = container.collect(time.monotonic())
    if first["cgroup"] is None:
        pytest.skip("no cgroup filesystem on this machine")
    end = time.monotonic() + 0.2
    while time.monotonic() < end:  # burn a little CPU so the counter moves
        pass
    second = container.collect(time.monotonic())
    assert first["cpu_usage_cores"] is None
    assert second["cpu_usage_cores"] is not None and second["cpu_usage_cores"] > 0
    assert isinstance(second["oom_kills"], int) and second["oom_kills"] >= 0
    assert second["cpu_throttled_percent"] is not None


@pytest.mark.parametrize(
    ("files", "proc", "shown"),
    [
        (
            {"cgroup.controllers": "cpu", "a/cpu.max": "100 0", "a/memory.current": "1"},
            "0::/a\n",
            r"^cpu\.max has a zero period \(.*/a/cpu\.max\)$",
        ),
        (
            {"cpu/cpu.cfs_quota_us": "100", "cpu/cpu.cfs_period_us": "0"},
            "1:cpu:/\n",
            r"^cpu\.cfs_period_us has a zero period",
        ),
        (
            {"cgroup.controllers": "memory", "a/memory.max": "lots", "a/memory.current": "1"},
            "0::/a\n",
            r"^cannot read .*/a/memory\.max: not a number: 'lots'$",
        ),
        (
            {"memory/memory.limit_in_bytes": "1000", "memory/memory.usage_in_bytes": "x y"},
            "4:memory:/\n",
            r"memory\.usage_in_bytes: not a number",
        ),
    ],
)
def test_broken_files_are_errors_in_words(
    tmp_path: Path, files: dict[str, str], proc: str, shown: str
) -> None:
    write(tmp_path / "cg", files)
    with pytest.raises(CollectorError, match=shown):
        collector(tmp_path, proc).collect(0.0)


# -- recorded file sets of containers and hosts (tests/fixtures/cgroup/README.md) --------

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
SETS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def fixture_collector(name: str) -> ContainerCollector:
    return ContainerCollector(
        FIXTURES / name / "sys-fs-cgroup", FIXTURES / name / "proc-self-cgroup"
    )


def stat_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    raise AssertionError(f"{name} not in {path}")


def working_set(tree: Path, proc: str) -> tuple[int, int] | None:
    """(usage less inactive file cache, limit) the way ``docker stats`` and the kubelet
    count them, read straight from the files; None where there is no usage file."""
    if (tree / "cgroup.controllers").is_file():
        own = tree.joinpath(*[p for p in proc.strip().partition("::")[2].split("/") if p])
        if not (own / "memory.current").is_file():
            return None
        usage = int((own / "memory.current").read_text())
        return usage - stat_field(own / "memory.stat", "inactive_file"), int(
            (own / "memory.max").read_text()
        )
    memory = tree / "memory"
    usage = int((memory / "memory.usage_in_bytes").read_text())
    return usage - stat_field(memory / "memory.stat", "total_inactive_file"), int(
        (memory / "memory.limit_in_bytes").read_text()
    )


def docker_bytes(size: float) -> str:
    """Go's ``units.BytesSize``, as ``docker stats`` prints sizes."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.4g}{units[i]}"


@pytest.mark.parametrize("name", SETS)
def test_fixture_sets_give_what_their_tools_print(name: str) -> None:
    expected = json.loads((FIXTURES / name / "expected.json").read_text())
    result = fixture_collector(name).collect(0.0)
    for key in ("cgroup", "memory_limit_bytes", "memory_used_bytes", "cpu_limit_cores",
                "oom_kills"):  # fmt: skip
        assert result[key] == expected[key], (key, result[key], expected[key])
    proc = (FIXTURES / name / "proc-self-cgroup").read_text()
    counted = working_set(FIXTURES / name / "sys-fs-cgroup", proc)
    if counted is None:
        assert result["memory_used_bytes"] is None
        return
    used, limit = counted
    assert (result["memory_used_bytes"], result["memory_limit_bytes"]) == (used, limit)
    if expected["tool"] == "docker stats":
        shown = f"{docker_bytes(used)} / {docker_bytes(limit)} {100 * used / limit:.2f}%"
        assert shown == expected["tool_prints"]
    elif expected["tool"] is not None and expected["tool"].startswith("kubectl top"):
        assert f"{used // 2**20}Mi" == expected["tool_prints"]
