"""Collectors that read the machine through psutil: cpu, memory, disk, network, and the
Jupyter server's own kernels (``processes`` and ``users`` live in :mod:`.processes`).

Each takes its source as an argument (``ps``, default the :mod:`psutil` module), so a
test can plug in recorded readings instead of patching psutil. With the real psutil on
Linux, memory, disk I/O and per-process figures come from one read of the ``/proc``
file that holds them (:mod:`.procfs`). All run on the sampler's worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from . import kernels, procfs
from .calls import INLINE, Stuck
from .cputime import CpuCounters, readings
from .errors import CollectorError
from .pressure import HOST_PRESSURE, HostPressure
from .proctable import ProcessTable
from .proctable import uses_procfs as _uses_procfs
from .sampler import Rates, sum_known


def _split(t: Any) -> tuple[float, float]:
    """(total, idle) of a ``cpu_times`` reading, as psutil's ``cpu_percent`` counts them."""
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total, idle


def _busy_percent(before: Any, after: Any) -> float | None:
    """CPU busy share between two ``cpu_times`` readings, as psutil computes it."""
    return _busy_share(_split(before), _split(after))


def _busy_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """CPU busy share between two (total, idle) readings."""
    total_a, idle_a = before
    total_b, idle_b = after
    elapsed = total_b - total_a
    if elapsed <= 0 or idle_b < idle_a:
        return None
    busy = elapsed - (idle_b - idle_a)
    return round(min(100.0, max(0.0, 100.0 * busy / elapsed)), 1)


def _sum_times(times: Sequence[Any]) -> Any:
    fields = times[0]._fields
    return type(times[0])(*(sum(getattr(t, f) for t in times) for f in fields))


class CpuCollector:
    """``cpu``: total and per-core busy percent over the last interval, core count, load.

    Percentages come from our own ``cpu_times`` deltas, so the first tick is ``null``
    rather than psutil's meaningless first reading. ``pressure`` is the host's CPU PSI
    (``some avg10`` %, see :mod:`.pressure`), ``null`` where the kernel has none.
    """

    name = "cpu"

    def __init__(
        self,
        ps: ModuleType | Any = psutil,
        stat_path: str = "/proc/stat",
        pressure_root: str | os.PathLike[str] = HOST_PRESSURE,
    ) -> None:
        self._ps = ps
        self._pressure = HostPressure("cpu", pressure_root)
        self._last: list[Any] | None = None
        self._procfs = _uses_procfs(ps)
        self._stat_path = stat_path
        self._stat = procfs.HeldFile(stat_path)
        self._last_ticks: procfs.CpuTicks | None = None

    def collect(self, now: float) -> dict[str, Any]:
        out = self._collect_procfs() if self._procfs else self._collect_psutil()
        out["pressure"] = self._pressure.read()
        return out

    def close(self) -> None:
        """Close the files kept open between ticks. Idempotent."""
        self._stat.close()
        self._pressure.close()

    def _collect_psutil(self) -> dict[str, Any]:
        times = list(self._ps.cpu_times(percpu=True))
        prev, self._last = self._last, times
        per_cpu: list[float | None] | None = None
        percent = None
        if prev is not None and len(prev) == len(times) and times:
            per_cpu = [_busy_percent(a, b) for a, b in zip(prev, times)]
            percent = _busy_percent(_sum_times(prev), _sum_times(times))
        load_1m, load_5m, load_15m = self._ps.getloadavg()
        return {
            "percent": percent,
            "per_cpu": per_cpu,
            "count": self._ps.cpu_count() or len(times),
            "load_1m": round(load_1m, 2),
            "load_5m": round(load_5m, 2),
            "load_15m": round(load_15m, 2),
        }

    def _collect_procfs(self) -> dict[str, Any]:
        data = self._stat.read()
        if data is None:
            raise CollectorError(f"{self._stat_path} does not exist")
        overall, cores = ticks = procfs.parse_cpu_ticks(data, self._stat_path)
        prev, self._last_ticks = self._last_ticks, ticks
        per_cpu: list[float | None] | None = None
        percent = None
        if prev is not None and len(prev[1]) == len(cores) and cores:
            per_cpu = [_busy_share(a, b) for a, b in zip(prev[1], cores)]
            percent = _busy_share(prev[0], overall)
        load_1m, load_5m, load_15m = os.getloadavg()
        return {
            "percent": percent,
            "per_cpu": per_cpu,
            "count": len(cores) or self._ps.cpu_count(),
            "load_1m": round(load_1m, 2),
            "load_5m": round(load_5m, 2),
            "load_15m": round(load_15m, 2),
        }


class MemoryCollector:
    """``memory``: RAM and swap. ``used_bytes`` is total minus available, so that
    ``percent`` is ``used_bytes / total_bytes``. ``pressure`` is the host's memory PSI
    (``some avg10`` %), ``null`` where the kernel has none."""

    name = "memory"

    def __init__(
        self,
        ps: ModuleType | Any = psutil,
        meminfo_path: str = "/proc/meminfo",
        pressure_root: str | os.PathLike[str] = HOST_PRESSURE,
    ) -> None:
        self._ps = ps
        self._procfs = _uses_procfs(ps)
        self._meminfo_path = meminfo_path
        self._meminfo = procfs.HeldFile(meminfo_path)
        self._pressure = HostPressure("memory", pressure_root)

    def close(self) -> None:
        """Close the files kept open between ticks. Idempotent."""
        self._meminfo.close()
        self._pressure.close()

    def collect(self, now: float) -> dict[str, Any]:
        if self._procfs:
            data = self._meminfo.read()
            if data is None:
                raise CollectorError(f"{self._meminfo_path} does not exist")
            m = procfs.parse_meminfo(data, self._meminfo_path)
            total, available = m.total_bytes, m.available_bytes
            swap_total = m.swap_total_bytes
            swap_used = max(0, swap_total - m.swap_free_bytes)
            swap_percent = round(100.0 * swap_used / swap_total, 1) if swap_total else 0.0
        else:
            vm = self._ps.virtual_memory()
            sw = self._ps.swap_memory()
            total, available = vm.total, vm.available
            swap_total, swap_used, swap_percent = sw.total, sw.used, round(sw.percent, 1)
        used = total - available
        return {
            "total_bytes": total,
            "available_bytes": available,
            "used_bytes": used,
            "percent": round(100.0 * used / total, 1) if total else None,
            "swap_total_bytes": swap_total,
            "swap_used_bytes": swap_used,
            "swap_percent": swap_percent,
            "pressure": self._pressure.read(),
        }


#: Filesystem types served over the network (``fuse.<name>`` for FUSE ones): left out
#: of ``disk.mounts`` unless ``network_mounts`` is on, except a home volume.
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
     "afs", "9p", "orangefs", "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse",
     "fuse.ceph-fuse", "fuse.glusterfs", "fuse.juicefs", "fuse.goofys", "fuse.blobfuse",
     "fuse.blobfuse2", "fuse.mountpoint-s3", "fuse.geesefs", "fuse.cvmfs"}
)  # fmt: skip


def is_network(fstype: str) -> bool:
    return fstype in NETWORK_FSTYPES


def holding_mount(path: str, parts: Sequence[Any]) -> Any | None:
    """The mount (a ``disk_partitions`` entry) whose filesystem holds the absolute,
    resolved ``path``: the longest mount point above it; of mounts stacked on one point,
    the last (the visible one). Reads no file: a dead mount cannot hang it."""
    best = None
    for part in parts:
        point = part.mountpoint
        above = path == point or path.startswith(point.rstrip("/") + "/")
        if above and (best is None or len(point) >= len(best.mountpoint)):
            best = part
    return best


@dataclass(frozen=True)
class _Mount:
    path: str
    fstype: str
    home: bool


class DiskCollector:
    """``disk``: read/write throughput and operations per second over all disks, the
    same as counters since boot (``*_total``; the whole disks of ``/proc/diskstats``,
    which a container shares with its host), and the usage of each mounted filesystem.
    The mount table is re-read every ``MOUNTS_REFRESH`` seconds; usage is read every
    tick.

    Which filesystems are listed: each local disk's shortest mount point (psutil's
    ``disk_partitions(all=False)``), plus ``/``; network filesystems (NFS, CephFS,
    CIFS, FUSE network mounts: :data:`NETWORK_FSTYPES`) when ``network_mounts`` is on;
    and always, whatever its type (NFS, fuse, overlay, tmpfs...), the filesystem that
    holds each of ``home_paths`` (the server's root_dir and ``$HOME``), marked
    ``home: true``. ``home_paths`` are resolved (symlinks followed) once, here, while
    the server starts; later the match is made on the mount table alone.

    Each mount's usage call goes through ``guard`` (the sampler's
    :class:`~.calls.CallGuard`) under the key ``disk:<path>``: a call on a stale NFS
    mount that never returns marks that mount ``stuck`` (its numbers are the last known
    ones, or null) while the other mounts and the I/O rates are read as usual.
    """

    name = "disk"
    MOUNTS_REFRESH = 30.0

    def __init__(
        self,
        ps: ModuleType | Any = psutil,
        diskstats: procfs.DiskStats | None = None,
        *,
        home_paths: Iterable[str] = (),
        network_mounts: bool = False,
    ) -> None:
        self._ps = ps
        self._rates = Rates()
        self._home_paths = sorted({os.path.realpath(p) for p in home_paths if p})
        self.network_mounts = network_mounts
        self._mount_table: list[_Mount] = []
        self._mounts_read_at: float | None = None
        if diskstats is None and _uses_procfs(ps):
            diskstats = procfs.DiskStats()
        self._diskstats = diskstats
        self._known: dict[str, dict[str, Any]] = {}
        self.guard: Any = INLINE

    def close(self) -> None:
        """Close the file kept open between ticks. Idempotent."""
        if self._diskstats is not None:
            self._diskstats.close()

    def collect(self, now: float) -> dict[str, Any]:
        # Mounts first: a stuck one unwinds this call before the rates move on.
        mounts = self._mounts(now)
        counters: dict[str, float] = {}
        if self._diskstats is not None:
            totals = self._diskstats.read()
            counters = {
                "read_bytes": totals.read_bytes,
                "write_bytes": totals.write_bytes,
                "read_ops": totals.read_ops,
                "write_ops": totals.write_ops,
            }
        else:
            io = self._ps.disk_io_counters(perdisk=False)
            if io is not None:
                counters = {
                    "read_bytes": io.read_bytes,
                    "write_bytes": io.write_bytes,
                    "read_ops": io.read_count,
                    "write_ops": io.write_count,
                }
        rates = self._rates.update(now, counters)
        return {
            "read_bytes_per_s": _rounded(rates.get("read_bytes")),
            "write_bytes_per_s": _rounded(rates.get("write_bytes")),
            "read_ops_per_s": _rounded(rates.get("read_ops")),
            "write_ops_per_s": _rounded(rates.get("write_ops")),
            "read_bytes_total": counters.get("read_bytes"),
            "write_bytes_total": counters.get("write_bytes"),
            "read_ops_total": counters.get("read_ops"),
            "write_ops_total": counters.get("write_ops"),
            "mounts": mounts,
        }

    def _mounted(self, now: float) -> list[_Mount]:
        """The filesystems listed (see the class), sorted by path."""
        if self._mounts_read_at is None or now - self._mounts_read_at >= self.MOUNTS_REFRESH:
            listed = list(self._ps.disk_partitions(all=False))
            every = list(self._ps.disk_partitions(all=True))
            if self.network_mounts:
                listed += [p for p in every if is_network(p.fstype)]
            by_device: dict[str, Any] = {}
            for part in listed:
                known = by_device.get(part.device)
                if known is None or len(part.mountpoint) < len(known.mountpoint):
                    by_device[part.device] = part
            chosen = {p.mountpoint: p.fstype for p in by_device.values()}
            homes = {}
            for path in self._home_paths:
                part = holding_mount(path, every)
                if part is not None:
                    homes[part.mountpoint] = part.fstype
            chosen.update(homes)
            chosen.setdefault("/", "")
            self._mount_table = [
                _Mount(path, fstype, path in homes) for path, fstype in sorted(chosen.items())
            ]
            self._mounts_read_at = now
            self._known = {p: m for p, m in self._known.items() if p in chosen}
            if self._diskstats is not None:
                self._diskstats.refresh()
        return self._mount_table

    def _mounts(self, now: float) -> list[dict[str, Any]]:
        mounts = []
        usage_of = self._ps.disk_usage
        for mount in self._mounted(now):
            path = mount.path
            try:
                usage = self.guard.call(
                    f"disk:{path}", f"filesystem call on {path}", usage_of, path
                )
            except Stuck:
                known = self._known.get(path)
                if known is None:
                    known = {"path": path, "fstype": mount.fstype, "total_bytes": None,
                             "used_bytes": None, "free_bytes": None, "percent": None}  # fmt: skip
                mounts.append({**known, "home": mount.home, "stuck": True})
                continue
            except OSError:
                continue  # unreadable or vanished mount: leave it out, keep the rest
            entry = self._known[path] = {
                "path": path,
                "fstype": mount.fstype,
                "total_bytes": usage.total,
                "used_bytes": usage.used,
                "free_bytes": usage.free,
                "percent": round(usage.percent, 1),
                "home": mount.home,
                "stuck": False,
            }
            mounts.append(entry)
        return mounts


class NetworkCollector:
    """``network``: bytes and packets per second, summed over interfaces, loopback
    excluded. An interface whose counters reset, or that just appeared, is left out of
    that tick's sum rather than making the total jump."""

    name = "network"

    def __init__(
        self,
        ps: ModuleType | Any = psutil,
        ignore: Iterable[str] = ("lo",),
        net_dev_path: str = "/proc/net/dev",
    ) -> None:
        self._ps = ps
        self._ignore = frozenset(ignore)
        self._rates = Rates()
        self._procfs = _uses_procfs(ps)
        self._net_dev_path = net_dev_path
        self._net_dev = procfs.HeldFile(net_dev_path)

    def close(self) -> None:
        """Close the file kept open between ticks. Idempotent."""
        self._net_dev.close()

    def _read(self) -> procfs.NetCounters:
        """Per interface: bytes received, sent, packets received, sent."""
        if self._procfs:
            data = self._net_dev.read()
            if data is None:
                raise CollectorError(f"{self._net_dev_path} does not exist")
            return procfs.parse_net_counters(data, self._net_dev_path)
        return {
            nic: (c.bytes_recv, c.bytes_sent, c.packets_recv, c.packets_sent)
            for nic, c in self._ps.net_io_counters(pernic=True).items()
        }

    def collect(self, now: float) -> dict[str, Any]:
        counters: dict[str, float] = {}
        for nic, (recv_b, sent_b, recv_p, sent_p) in self._read().items():
            if nic in self._ignore:
                continue
            counters[f"{nic}\0recv_bytes"] = recv_b
            counters[f"{nic}\0sent_bytes"] = sent_b
            counters[f"{nic}\0recv_packets"] = recv_p
            counters[f"{nic}\0sent_packets"] = sent_p
        rates = self._rates.update(now, counters)
        out: dict[str, Any] = {}
        for kind in ("recv_bytes", "sent_bytes", "recv_packets", "sent_packets"):
            suffix = f"\0{kind}"
            total = sum_known(v for k, v in rates.items() if k.endswith(suffix))
            out[f"{kind}_per_s"] = _rounded(total)
        return out


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class KernelRef:
    """One kernel as the server's managers describe it (see ``app.py``)."""

    id: str
    name: str
    pid: int | None
    path: str | None = None  # the notebook or session path, from the session manager
    execution_state: str | None = None
    last_activity: float | None = None  # unix s
    connections: int | None = None


@dataclass(frozen=True)
class JupyterCounts:
    """What the server's managers hold, read on the server's own thread."""

    kernels: tuple[KernelRef, ...]
    terminals: int
    sessions: int


class JupyterCollector:
    """``jupyter``: kernel, terminal and session counts, and for each local kernel its
    notebook path, state, and the CPU and memory of its whole process tree (the kernel
    and every descendant; RSS is summed, so pages shared between them count twice).
    ``source`` returns a :class:`JupyterCounts` (see ``app.py``, which reads the
    managers on the event loop). ``trees`` lists a pid's tree (:mod:`.kernels`).

    ``cpu_seconds_total`` is the tree's CPU time as a counter
    (:class:`~.cputime.CpuCounter`): from the first tick that sees the kernel, it never
    decreases while the server runs, as children exit or the kernel restarts; it is
    forgotten when the kernel is shut down."""

    name = "jupyter"

    def __init__(
        self,
        source: Callable[[], JupyterCounts],
        ps: ModuleType | Any = psutil,
        trees: Callable[[int], list[int]] | None = None,
    ) -> None:
        self._source = source
        self._ps = ps
        self._table = ProcessTable(ps)
        self._trees = trees if trees is not None else self._default_tree
        self._cpu = CpuCounters()
        #: pid -> kernel id for every process in a kernel's tree, as of the last tick
        #: (the GPU collector names the kernel behind a GPU process with it).
        self.kernel_pids: dict[int, str] = {}

    def close(self) -> None:
        """Close the files held between ticks. Idempotent."""
        self._table.close()

    def _default_tree(self, pid: int) -> list[int]:
        children = kernels.proc_children if _uses_procfs(self._ps) else None
        return kernels.process_tree(pid, children, self._ps)

    def collect(self, now: float) -> dict[str, Any]:
        try:
            counts = self._source()
        except TimeoutError:
            raise CollectorError("the server did not answer in time") from None
        trees = {k.pid: self._trees(k.pid) for k in counts.kernels if k.pid is not None}
        self.kernel_pids = {
            pid: k.id for k in counts.kernels if k.pid is not None for pid in trees[k.pid]
        }
        read = self._table.read({p for t in trees.values() for p in t}, zombies=True)
        everyone = {p.pid: p for p in read}
        self._cpu.forget_except(k.id for k in counts.kernels)
        self._cpu.update(
            {
                k.id: readings(everyone[p] for p in trees[k.pid] if p in everyone)
                for k in counts.kernels
                if k.pid is not None
            }
        )
        by_pid = {pid: p for pid, p in everyone.items() if not p.zombie}
        usage = []
        for kernel in counts.kernels:
            cpu: float | None = None
            rss: int | None = None
            own = by_pid.get(kernel.pid) if kernel.pid is not None else None
            if own is not None:
                members = [by_pid[p] for p in trees[own.pid] if p in by_pid]
                rss = sum(p.rss_bytes for p in members)
                if own.cpu_percent is not None:  # a child's first reading counts as 0
                    cpu = round(sum(p.cpu_percent or 0.0 for p in members), 1)
            usage.append(
                {
                    "id": kernel.id,
                    "name": kernel.name,
                    "pid": kernel.pid,
                    "path": kernel.path,
                    "execution_state": kernel.execution_state,
                    "last_activity": kernel.last_activity,
                    "connections": kernel.connections,
                    "cpu_percent": cpu,
                    "cpu_seconds_total": _rounded(self._cpu.seconds(kernel.id), 2),
                    "rss_bytes": rss,
                }
            )
        return {
            "kernels": len(counts.kernels),
            "terminals": counts.terminals,
            "sessions": counts.sessions,
            "kernel_usage": usage,
        }
