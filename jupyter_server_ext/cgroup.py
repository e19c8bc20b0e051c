"""The ``container`` collector: the limits the server's own cgroup puts on it.

Reads cgroup v2 (the unified hierarchy) or v1 (``memory`` and ``cpu`` controllers)
from ``root`` (``/sys/fs/cgroup``), at the path ``/proc/self/cgroup`` names. A limit
set on an ancestor cgroup applies too, so the tightest one along the path wins.
``null`` means unlimited (or no cgroup filesystem at all).

``memory_used_bytes`` leaves out inactive file cache, as ``docker stats`` and the
kubelet do: that is the memory the kernel would not reclaim before an OOM kill. On v2 it
is read from ``memory.current`` wherever that file exists. With a private cgroup
namespace (Docker's and containerd's or CRI-O's default on cgroup-v2 hosts)
``/proc/self/cgroup`` says ``0::/`` and the mount's root *is* the container's own cgroup,
which has the file; only the true root of a host's hierarchy has none (the kernel gives
the root cgroup no ``memory.current``), and there ``memory_used_bytes`` is ``null``: the
host's own memory is the figure.

Counters read each tick: the CPU time the cgroup used (v2 ``cpu.stat`` ``usage_usec``,
v1 ``cpuacct.usage``) becomes ``cpu_usage_cores`` over the monotonic interval; the CFS
period counters (``cpu.stat`` ``nr_periods``/``nr_throttled``, v1 and v2) become
``cpu_throttled_percent``; ``oom_kills`` is the kernel's own count of OOM kills in the
cgroup since it was created (v2 ``memory.events``, v1 ``memory.oom_control``, kernel
4.13+). The counters themselves ride along, as the kernel counts them since the cgroup
was created: ``cpu_usage_seconds_total``, ``cpu_periods_total``,
``cpu_throttled_periods_total`` and ``cpu_throttled_seconds_total`` (v2 ``cpu.stat``
``throttled_usec``, v1 ``throttled_time``); ``null`` where the files lack them. The
``*_pressure`` fields are the cgroup's PSI on v2 (see :mod:`.pressure`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CollectorError
from .pressure import read_some_avg10
from .procfs import HeldFile

#: v1 reports "no limit" as a huge page-rounded number; anything above this is unlimited.
_V1_UNLIMITED = 1 << 62


class ContainerCollector:
    """``container``: cgroup version, memory limit and use, CPU quota in cores.

    Which files to read is worked out once, on the first tick (a server does not move
    between cgroups, nor do controllers come and go); each is then a
    :class:`~.procfs.HeldFile`, kept open and read again each tick. A file that does
    not exist is looked for again each tick.
    """

    name = "container"

    def __init__(
        self, root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
    ) -> None:
        self._root = Path(root)
        self._proc_cgroup = Path(proc_cgroup)
        self._own_dirs: dict[Path, Path] = {}
        self._version: int | bool | None = False  # False: not looked yet
        self._last_counters: tuple[float, CpuCounters] | None = None
        self._files: dict[Path, HeldFile] = {}
        self._v1_plan: _V1Plan | None = None
        self._v2_plan: _V2Plan | None = None

    def collect(self, now: float) -> dict[str, Any]:
        if self._version is False:
            self._version = self._detect()
        if self._version == 2:
            return self._v2(now)
        if self._version == 1:
            return self._v1(now)
        return {
            "cgroup": None,
            "memory_limit_bytes": None,
            "memory_used_bytes": None,
            "cpu_limit_cores": None,
            **self._rates(now, CpuCounters(None, None, None)),
            "oom_kills": None,
            **_no_pressure(),
        }

    def close(self) -> None:
        """Close the files kept open between ticks. Idempotent."""
        for held in self._files.values():
            held.close()

    def _file(self, path: Path) -> HeldFile:
        held = self._files.get(path)
        if held is None:
            held = self._files[path] = HeldFile(path)
        return held

    def _rates(self, now: float, counters: CpuCounters) -> dict[str, float | None]:
        """``cpu_usage_cores`` and ``cpu_throttled_percent`` since the previous tick, and
        the counters themselves (``*_total``)."""
        prev, self._last_counters = self._last_counters, (now, counters)
        totals = counters.totals()
        if prev is None:
            return {"cpu_usage_cores": None, "cpu_throttled_percent": None, **totals}
        return {
            "cpu_usage_cores": usage_cores(prev[1], counters, now - prev[0]),
            "cpu_throttled_percent": throttled_percent(prev[1], counters),
            **totals,
        }

    def _detect(self) -> int | None:
        if (self._root / "cgroup.controllers").is_file():
            return 2
        if (self._root / "memory").is_dir() or (self._root / "cpu").is_dir():
            return 1
        return None

    # -- cgroup v2 -------------------------------------------------------------------

    def _plan_v2(self) -> _V2Plan:
        own = self._own_dir(self._root, lambda controllers: controllers == "")
        f = self._file
        return _V2Plan(
            limits=[
                (f(d / "memory.max"), f(d / "cpu.max"))
                for d in _self_and_ancestors(own, self._root)
            ],
            current=f(own / "memory.current"),
            at_root=own == self._root,
            memory_stat=f(own / "memory.stat"),
            cpu_stat=f(own / "cpu.stat"),
            events=f(own / "memory.events"),
            pressure=(f(own / "memory.pressure"), f(own / "cpu.pressure"), f(own / "io.pressure")),
        )

    def _v2(self, now: float) -> dict[str, Any]:
        plan = self._v2_plan
        if plan is None:
            plan = self._v2_plan = self._plan_v2()
        memory_limit: int | None = None
        cpu_limit: float | None = None
        for memory_max, cpu_max in plan.limits:
            text = _read(memory_max)
            if text is not None and text != "max":
                memory_limit = _min(memory_limit, _int(memory_max.path, text))
            text = _read(cpu_max)
            if text is not None:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    cpu_limit = _min(cpu_limit, _cores(cpu_max.path, "cpu.max", quota, period))
        used = None
        current = _read(plan.current)
        if current is not None:
            inactive = _stats(plan.memory_stat, b"inactive_file").get("inactive_file", 0)
            used = max(0, _int(plan.current.path, current) - inactive)
        elif not plan.at_root:  # a cgroup below the root has the file: this is a fault
            raise CollectorError(f"cannot read {plan.current.path}")
        cpu_stat = _stats(
            plan.cpu_stat, b"usage_usec", b"nr_periods", b"nr_throttled", b"throttled_usec"
        )
        usage_usec = cpu_stat.get("usage_usec")
        throttled_usec = cpu_stat.get("throttled_usec")
        counters = CpuCounters(
            usage_ns=None if usage_usec is None else usage_usec * 1000,
            periods=cpu_stat.get("nr_periods"),
            throttled=cpu_stat.get("nr_throttled"),
            throttled_ns=None if throttled_usec is None else throttled_usec * 1000,
        )
        memory_pressure, cpu_pressure, io_pressure = plan.pressure
        return {
            "cgroup": 2,
            "memory_limit_bytes": memory_limit,
            "memory_used_bytes": used,
            "cpu_limit_cores": None if cpu_limit is None else round(cpu_limit, 3),
            **self._rates(now, counters),
            "oom_kills": _stats(plan.events, b"oom_kill").get("oom_kill"),
            "memory_pressure": read_some_avg10(memory_pressure),
            "cpu_pressure": read_some_avg10(cpu_pressure),
            "io_pressure": read_some_avg10(io_pressure),
        }

    # -- cgroup v1 -------------------------------------------------------------------

    def _plan_v1(self) -> _V1Plan:
        f = self._file
        plan = _V1Plan()
        mem_root = self._root / "memory"
        if mem_root.is_dir():
            mem = self._own_dir(mem_root, lambda controllers: "memory" in controllers.split(","))
            plan.memory = (
                f(mem / "memory.stat"),
                f(mem / "memory.limit_in_bytes"),
                f(mem / "memory.usage_in_bytes"),
                f(mem / "memory.oom_control"),
            )
        cpu_root = self._root / "cpu"
        if cpu_root.is_dir():
            cpu = self._own_dir(cpu_root, lambda controllers: "cpu" in controllers.split(","))
            plan.quotas = [
                (f(d / "cpu.cfs_quota_us"), f(d / "cpu.cfs_period_us"))
                for d in _self_and_ancestors(cpu, cpu_root)
            ]
            plan.cpu_stat = f(cpu / "cpu.stat")
        acct_root = self._root / "cpuacct"
        if acct_root.is_dir():
            acct = self._own_dir(acct_root, lambda controllers: "cpuacct" in controllers.split(","))
            plan.cpuacct = f(acct / "cpuacct.usage")
        return plan

    def _v1(self, now: float) -> dict[str, Any]:
        plan = self._v1_plan
        if plan is None:
            plan = self._v1_plan = self._plan_v1()
        memory_limit: int | None = None
        used: int | None = None
        oom_kills: int | None = None
        if plan.memory is not None:
            stat_file, limit_file, usage_file, oom_file = plan.memory
            stats = _stats(stat_file, b"hierarchical_memory_limit", b"total_inactive_file")
            limit = stats.get("hierarchical_memory_limit")
            if limit is None:
                text = _read(limit_file)
                limit = _int(limit_file.path, text) if text is not None else None
            if limit is not None and limit < _V1_UNLIMITED:
                memory_limit = limit
            usage = _read(usage_file)
            if usage is None:
                raise CollectorError(f"cannot read {usage_file.path}")
            used = max(0, _int(usage_file.path, usage) - stats.get("total_inactive_file", 0))
            oom_kills = _stats(oom_file, b"oom_kill").get("oom_kill")
        cpu_limit: float | None = None
        for quota_file, period_file in plan.quotas:
            quota = _read(quota_file)
            period = _read(period_file)
            if quota is None or period is None:
                continue
            if _int(quota_file.path, quota) > 0:
                cpu_limit = _min(
                    cpu_limit, _cores(period_file.path, "cpu.cfs_period_us", quota, period)
                )
        cpu_stat: dict[str, int] = {}
        if plan.cpu_stat is not None:
            cpu_stat = _stats(plan.cpu_stat, b"nr_periods", b"nr_throttled", b"throttled_time")
        usage_ns: int | None = None
        if plan.cpuacct is not None:
            text = _read(plan.cpuacct)
            usage_ns = int(text) if text is not None and text.isdigit() else None
        counters = CpuCounters(
            usage_ns,
            cpu_stat.get("nr_periods"),
            cpu_stat.get("nr_throttled"),
            cpu_stat.get("throttled_time"),  # ns
        )
        return {
            "cgroup": 1,
            "memory_limit_bytes": memory_limit,
            "memory_used_bytes": used,
            "cpu_limit_cores": None if cpu_limit is None else round(cpu_limit, 3),
            **self._rates(now, counters),
            "oom_kills": oom_kills,
            **_no_pressure(),  # v1 has no per-cgroup PSI files
        }

    def _own_dir(self, mount: Path, matches: Callable[[str], bool]) -> Path:
        """This process's cgroup directory under ``mount``; ``mount`` itself when the
        path is not visible (a cgroup namespace makes our cgroup the root). Found once:
        a server process does not move between cgroups."""
        found = self._own_dirs.get(mount)
        if found is None:
            found = self._own_dirs[mount] = self._find_own_dir(mount, matches)
        return found

    def _find_own_dir(self, mount: Path, matches: Callable[[str], bool]) -> Path:
        """The path ``/proc/self/cgroup`` names, under ``mount``. Where the mount shows
        only part of the tree (a container's bind-mounted subtree), the longest tail of
        that path that exists under ``mount`` is ours."""
        text = _read(HeldFile(self._proc_cgroup))
        for line in (text or "").splitlines():
            _, controllers, path = [*line.split(":", 2), "", ""][:3]
            if matches(controllers):
                parts = [p for p in path.split("/") if p and p != ".."]
                for start in range(len(parts)):
                    candidate = mount.joinpath(*parts[start:])
                    if candidate.is_dir():
                        return candidate
                break
        return mount


@dataclass
class _V2Plan:
    """The files a cgroup v2 tick reads (see :meth:`ContainerCollector._plan_v2`)."""

    limits: list[tuple[HeldFile, HeldFile]]  # (memory.max, cpu.max), own cgroup first
    current: HeldFile  # memory.current (absent at the hierarchy's true root only)
    at_root: bool  # the mount's root: a namespaced container's own cgroup, or the host's
    memory_stat: HeldFile
    cpu_stat: HeldFile
    events: HeldFile
    pressure: tuple[HeldFile, HeldFile, HeldFile]  # memory, cpu, io


@dataclass
class _V1Plan:
    """The files a cgroup v1 tick reads; a controller that is not mounted has none."""

    memory: tuple[HeldFile, HeldFile, HeldFile, HeldFile] | None = None  # stat, limit,
    # usage, oom_control
    quotas: list[tuple[HeldFile, HeldFile]] = field(default_factory=list)  # own first
    cpu_stat: HeldFile | None = None
    cpuacct: HeldFile | None = None


@dataclass(frozen=True)
class CpuCounters:
    """One reading of a cgroup's CPU counters; ``None`` where the files lack one."""

    usage_ns: int | None
    periods: int | None
    throttled: int | None
    throttled_ns: int | None = None

    def totals(self) -> dict[str, float | int | None]:
        """The counters as the sample carries them (seconds, periods)."""
        return {
            "cpu_usage_seconds_total": _seconds(self.usage_ns),
            "cpu_periods_total": self.periods,
            "cpu_throttled_periods_total": self.throttled,
            "cpu_throttled_seconds_total": _seconds(self.throttled_ns),
        }


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 6)


def usage_cores(before: CpuCounters, after: CpuCounters, elapsed_s: float) -> float | None:
    """Cores busy on average between two readings ``elapsed_s`` apart; ``None`` when
    unknown (a counter missing or reset, no time elapsed)."""
    if before.usage_ns is None or after.usage_ns is None or elapsed_s <= 0:
        return None
    used_ns = after.usage_ns - before.usage_ns
    if used_ns < 0:
        return None
    return round(used_ns / 1e9 / elapsed_s, 3)


def throttled_percent(before: CpuCounters, after: CpuCounters) -> float | None:
    """Percent of the CFS periods between two readings in which the cgroup was
    throttled. 0 when no period elapsed (no quota, or an idle cgroup: nothing was
    throttled); ``None`` when the counters are missing or went backwards."""
    if (
        before.periods is None
        or before.throttled is None
        or after.periods is None
        or after.throttled is None
    ):
        return None
    periods = after.periods - before.periods
    throttled = after.throttled - before.throttled
    if periods < 0 or throttled < 0:
        return None
    if periods == 0:
        return 0.0
    return round(min(100.0, 100.0 * throttled / periods), 1)


def _no_pressure() -> dict[str, None]:
    return {"memory_pressure": None, "cpu_pressure": None, "io_pressure": None}


def _self_and_ancestors(directory: Path, stop: Path) -> list[Path]:
    chain = [directory]
    while directory != stop and stop in directory.parents:
        directory = directory.parent
        chain.append(directory)
    return chain


def _read(held: HeldFile) -> str | None:
    """The file's stripped text; ``None`` if it does not exist. Other errors
    (permission denied) become a :class:`CollectorError`."""
    try:
        data = held.read()
    except OSError as err:
        raise CollectorError(f"cannot read {held.path}: {err.strerror or err}") from err
    return None if data is None else data.decode(errors="replace").strip()


def _int(path: str, text: str) -> int:
    """``text`` (read from ``path``) as an integer; a :class:`CollectorError` in words if
    it is not one."""
    try:
        return int(text)
    except ValueError:
        raise CollectorError(f"cannot read {path}: not a number: {text[:40]!r}") from None


def _cores(path: str, name: str, quota: str, period: str) -> float:
    """A CPU quota over its period, in cores; a zero period is an error in words (the
    kernel refuses one, but a broken or fake cgroup tree may hold it)."""
    quota_us, period_us = _int(path, quota), _int(path, period)
    if period_us <= 0:
        raise CollectorError(f"{name} has a zero period ({path})")
    return quota_us / period_us


def _stats(held: HeldFile, *names: bytes) -> dict[str, int]:
    """The fields ``names`` of a ``memory.stat``-style file (those it has; none if it
    does not exist)."""
    try:
        data = held.read()
    except OSError as err:
        raise CollectorError(f"cannot read {held.path}: {err.strerror or err}") from err
    stats: dict[str, int] = {}
    if not data:
        return stats
    for line in data.split(b"\n"):
        name, _, value = line.partition(b" ")
        if name in names and value.isdigit():
            stats[name.decode()] = int(value)
            if len(stats) == len(names):
                break
    return stats


def _min(current: Any, new: Any) -> Any:
    return new if current is None else min(current, new)
