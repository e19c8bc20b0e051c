"""Linux ``/proc`` read directly, where psutil reads more than a tick needs.

Used by the collectors only when their source is the real :mod:`psutil` on Linux (a
test's fake source goes through psutil's API as before). Each reader does one file
read and parses only the fields the protocol sends:

- :func:`process_stat`: CPU time, RSS and start time of a process from
  ``/proc/<pid>/stat`` (psutil reads ``stat``, ``statm`` and the online CPU count for
  ``cpu_percent`` plus ``memory_info``);
- :func:`meminfo`: RAM and swap from one read of ``/proc/meminfo`` (psutil's
  ``swap_memory`` also reads ``/proc/vmstat`` for counters we do not send);
- :class:`DiskStats`: whole-disk I/O totals from ``/proc/diskstats``, with the set of
  whole disks looked up once per refresh instead of every tick.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CollectorError

AVAILABLE = sys.platform.startswith("linux") and os.path.isfile("/proc/self/stat")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if AVAILABLE else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if AVAILABLE else 4096
#: /proc/diskstats counts 512-byte sectors whatever the device's own sector size.
SECTOR_BYTES = 512


class ProcessGone(Exception):
    """The process exited (or is a zombie) before it could be read."""


@dataclass(frozen=True)
class ProcessStat:
    cpu_seconds: float
    rss_bytes: int
    start_ticks: int


def process_stat(pid: int, proc: str = "/proc") -> ProcessStat:
    """One read of ``/proc/<pid>/stat``. Raises :class:`ProcessGone` for a process
    that no longer exists or is a zombie."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        raise ProcessGone(pid)
    # fields[0] is field 3 (state) of proc(5): utime 14, stime 15, starttime 22, rss 24
    return ProcessStat(
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        rss_bytes=int(fields[21]) * PAGE_BYTES,
        start_ticks=int(fields[19]),
    )


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int


def meminfo(path: str = "/proc/meminfo") -> MemInfo:
    """RAM and swap from one read. ``MemAvailable`` is the kernel's own estimate
    (psutil uses it too; kernels before 3.14 lack it: then free + buffers + cached)."""
    values: dict[bytes, int] = {}
    with open(path, "rb") as f:
        try:
            for line in f:
                name, _, rest = line.partition(b":")
                parts = rest.split()
                if parts:
                    values[name] = int(parts[0]) * 1024  # kB
        except ValueError:
            raise CollectorError(f"cannot parse {path}: {line[:60]!r}") from None
    for needed in (b"MemTotal", b"MemFree"):
        if needed not in values:
            raise CollectorError(f"{path} has no {needed.decode()} line")
    available = values.get(b"MemAvailable")
    if available is None:
        available = values[b"MemFree"] + values.get(b"Buffers", 0) + values.get(b"Cached", 0)
    return MemInfo(
        total_bytes=values[b"MemTotal"],
        available_bytes=available,
        swap_total_bytes=values.get(b"SwapTotal", 0),
        swap_free_bytes=values.get(b"SwapFree", 0),
    )


@dataclass(frozen=True)
class DiskTotals:
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


class DiskStats:
    """Sums ``/proc/diskstats`` over whole disks (those with a ``/sys/block`` entry, as
    psutil counts them), so partitions are not counted twice."""

    def __init__(self, path: str = "/proc/diskstats", sys_block: str = "/sys/block") -> None:
        self._path = path
        self._sys_block = Path(sys_block)
        self._disks: frozenset[bytes] | None = None

    def refresh(self) -> None:
        """Look the whole disks up again (disks come and go rarely)."""
        try:
            names = os.listdir(self._sys_block)
        except OSError:
            names = []
        self._disks = frozenset(n.replace("!", "/").encode() for n in names)

    def read(self) -> DiskTotals:
        if self._disks is None:
            self.refresh()
        disks = self._disks or frozenset()
        read_ops = read_sectors = write_ops = write_sectors = 0
        with open(self._path, "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10 or fields[2] not in disks:
                    continue
                try:
                    read_ops += int(fields[3])
                    read_sectors += int(fields[5])
                    write_ops += int(fields[7])
                    write_sectors += int(fields[9])
                except ValueError:
                    raise CollectorError(f"cannot parse {self._path}: {line[:60]!r}") from None
        return DiskTotals(
            read_bytes=read_sectors * SECTOR_BYTES,
            write_bytes=write_sectors * SECTOR_BYTES,
            read_ops=read_ops,
            write_ops=write_ops,
        )


def cpu_ticks(path: str = "/proc/stat") -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(total, idle) clock ticks of all CPUs together, then of each online CPU, from
    one read. ``total`` leaves out guest time (already in user time) and ``idle``
    includes iowait, as psutil's ``cpu_percent`` counts them."""
    overall = (0, 0)
    per_cpu = []
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"cpu"):
                break
            fields = line.split()
            try:
                values = [int(v) for v in fields[1:9]]  # user .. steal
                ticks = (sum(values), values[3] + (values[4] if len(values) > 4 else 0))
            except (ValueError, IndexError):
                raise CollectorError(f"cannot parse {path}: {line[:60]!r}") from None
            if fields[0] == b"cpu":
                overall = ticks
            else:
                per_cpu.append(ticks)
    return overall, per_cpu


def net_counters(path: str = "/proc/net/dev") -> dict[str, tuple[int, int, int, int]]:
    """Per interface: bytes received, bytes sent, packets received, packets sent."""
    counters = {}
    with open(path, "rb") as f:
        for line in f:
            name, colon, rest = line.partition(b":")
            if not colon:
                continue  # the two header lines
            fields = rest.split()
            try:
                counters[name.strip().decode()] = (
                    int(fields[0]),
                    int(fields[8]),
                    int(fields[1]),
                    int(fields[9]),
                )
            except (ValueError, IndexError):
                raise CollectorError(f"cannot parse {path}: {line[:60]!r}") from None
    return counters
