"""Linux ``/proc`` read directly, where psutil reads more than a tick needs.

Used by the collectors only when their source is the real :mod:`psutil` on Linux (a
test's fake source goes through psutil's API as before). Each reader does one file
read and parses only the fields the protocol sends:

- :func:`process_stat`, :func:`parse_stat_fields`: CPU time (its own, and its reaped
  children's), RSS and start time of a process from ``/proc/<pid>/stat`` (psutil reads
  ``stat``, ``statm`` and the online CPU count for ``cpu_percent`` plus
  ``memory_info``);
- :func:`meminfo`: RAM and swap from one read of ``/proc/meminfo`` (psutil's
  ``swap_memory`` also reads ``/proc/vmstat`` for counters we do not send);
- :class:`DiskStats`: whole-disk I/O totals from ``/proc/diskstats``, with the set of
  whole disks looked up once per refresh instead of every tick;
- :func:`parse_cpu_modes`: each CPU's time per mode from ``/proc/stat`` (the
  ``counters`` group), read as node_exporter reads it.

Files are read with plain ``os`` calls: a Python file object costs six more system
calls per read (two ``fstat``, an ``ioctl``, two ``lseek``), about 3 us of a 6 us read
of a small ``/proc`` file. A file read every tick is a :class:`HeldFile`: opened once,
then read from offset 0 with ``pread`` (as procps keeps ``/proc/stat`` and
``/proc/meminfo`` open), which saves the path lookup of ``open`` as well.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CollectorError

AVAILABLE = sys.platform.startswith("linux") and os.path.isfile("/proc/self/stat")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if AVAILABLE else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if AVAILABLE else 4096
#: /proc/diskstats counts 512-byte sectors whatever the device's own sector size.
SECTOR_BYTES = 512


#: Chunk size of a read: a seq_file hands out at most its buffer (a page, grown for a
#: record that does not fit) per read, so a longer file takes several.
CHUNK_BYTES = 65536


def read_bytes(path: str) -> bytes:
    """The whole file, read once with plain ``os`` calls."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_from(fd)
    finally:
        os.close(fd)


def _read_from(fd: int) -> bytes:
    """Everything from offset 0 of ``fd`` to its end (``pread``: the file position of a
    held descriptor is never relied on)."""
    data = os.pread(fd, CHUNK_BYTES, 0)
    if not data:
        return data
    chunks = [data]
    offset = len(data)
    while chunk := os.pread(fd, CHUNK_BYTES, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks) if len(chunks) > 1 else data


class HeldFile:
    """A file read again and again (each tick): opened on its first read and kept open,
    then read from offset 0 with ``pread``. A file that does not exist (``None``) is
    looked for again at the next read; after a failed read the descriptor is closed and
    the next read opens the file anew. :meth:`close` is idempotent; the descriptor is
    also closed when the object is collected."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = -1

    def read(self) -> bytes | None:
        """The file's content; ``None`` if it does not exist. Other errors raise."""
        fd = self._fd
        if fd < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                return None
            self._fd = fd
        try:
            return _read_from(fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        fd = getattr(self, "_fd", -1)  # unset if __init__ failed
        if fd >= 0:
            self._fd = -1
            _close(fd)


class ProcessGone(Exception):
    """The process exited (or is a zombie) before it could be read."""


#: What one read of ``/proc/<pid>/stat`` asks for: its one line is at most about
#: 1.1 KiB (52 numeric fields and a name of at most 64 bytes), and a single-record
#: seq_file gives all of it at once.
STAT_BYTES = 4096


@dataclass(frozen=True)
class ProcessStat:
    cpu_seconds: float
    rss_bytes: int
    start_ticks: int


def parse_stat(data: bytes) -> tuple[int, int, int]:
    """CPU time (user + system, clock ticks), RSS (pages) and start time (clock ticks
    after boot) of a ``/proc/<pid>/stat`` line. Raises :class:`ProcessGone` for a zombie
    or an empty read."""
    stat = parse_stat_fields(data)
    if stat.zombie:
        raise ProcessGone()
    return stat.cpu_ticks, stat.rss_pages, stat.start_ticks


@dataclass(frozen=True, slots=True)
class StatFields:
    """What a ``/proc/<pid>/stat`` line tells (see :func:`parse_stat_fields`)."""

    zombie: bool
    cpu_ticks: int  # utime + stime: the process's own CPU time, all its threads
    reaped_ticks: int  # cutime + cstime: CPU of the children it has waited for
    rss_pages: int
    start_ticks: int


def parse_stat_fields(data: bytes) -> StatFields:
    """The fields of a ``/proc/<pid>/stat`` line, a zombie's too (a zombie keeps its CPU
    times until its parent reaps it; its RSS is 0). Raises :class:`ProcessGone` for a
    dead (``X``) process or an empty read."""
    # The command name may hold spaces and parentheses: split after the last ')'. Only
    # the fields up to rss are split off (the rest of the line stays one piece).
    fields = data[data.rfind(b")") + 2 :].split(None, 22)
    if len(fields) < 22 or fields[0] == b"X":
        raise ProcessGone()
    # fields[0] is field 3 (state) of proc(5): utime 14, stime 15, cutime 16, cstime 17,
    # starttime 22, rss 24
    return StatFields(
        zombie=fields[0] == b"Z",
        cpu_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
        rss_pages=int(fields[21]),
        start_ticks=int(fields[19]),
    )


def open_stat(pid: int, proc: str = "/proc") -> int:
    """A descriptor of ``/proc/<pid>/stat`` (the caller closes it). Raises
    :class:`ProcessGone` for a process that no longer exists."""
    try:
        return os.open(f"{proc}/{pid}/stat", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None


def read_stat(fd: int) -> bytes:
    """One read of a held ``/proc/<pid>/stat`` descriptor. Raises
    :class:`ProcessGone` once its process has exited (a descriptor stays bound to the
    process it was opened for, never to a later one with the same pid)."""
    try:
        return os.pread(fd, STAT_BYTES, 0)
    except ProcessLookupError:
        raise ProcessGone() from None


def process_stat(pid: int, proc: str = "/proc") -> ProcessStat:
    """One read of ``/proc/<pid>/stat``. Raises :class:`ProcessGone` for a process
    that no longer exists or is a zombie."""
    fd = open_stat(pid, proc)
    try:
        cpu_ticks, rss_pages, start_ticks = parse_stat(read_stat(fd))
    finally:
        os.close(fd)
    return ProcessStat(
        cpu_seconds=cpu_ticks / CLOCK_TICKS,
        rss_bytes=rss_pages * PAGE_BYTES,
        start_ticks=start_ticks,
    )


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int


#: The ``/proc/meminfo`` lines read (in the kernel's order, the last at line 16).
_MEMINFO_KEYS = frozenset(
    (b"MemTotal", b"MemFree", b"MemAvailable", b"Buffers", b"Cached", b"SwapTotal", b"SwapFree")
)


def meminfo(path: str = "/proc/meminfo") -> MemInfo:
    """RAM and swap from one read (see :func:`parse_meminfo`)."""
    return parse_meminfo(read_bytes(path), path)


def parse_meminfo(data: bytes, path: str = "/proc/meminfo") -> MemInfo:
    """RAM and swap of ``/proc/meminfo``'s text. ``MemAvailable`` is the kernel's own
    estimate (psutil uses it too; kernels before 3.14 lack it: then free + buffers +
    cached). Parsing stops once every line it needs is read."""
    values: dict[bytes, int] = {}
    wanted = len(_MEMINFO_KEYS)
    for line in data.split(b"\n"):
        name, _, rest = line.partition(b":")
        if name not in _MEMINFO_KEYS:
            continue
        parts = rest.split()
        try:
            values[name] = int(parts[0]) * 1024  # kB
        except (ValueError, IndexError):
            raise CollectorError(f"cannot parse {path}: {line[:60]!r}") from None
        if len(values) == wanted:
            break
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
        self._file = HeldFile(path)
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
        data = self._file.read()
        if data is None:
            raise CollectorError(f"{self._path} does not exist")
        for line in data.splitlines():
            fields = line.split(None, 10)
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

    def close(self) -> None:
        self._file.close()


CpuTicks = tuple[tuple[int, int], list[tuple[int, int]]]


def cpu_ticks(path: str = "/proc/stat") -> CpuTicks:
    """(total, idle) clock ticks of all CPUs together, then of each online CPU, from
    one read (see :func:`parse_cpu_ticks`)."""
    return parse_cpu_ticks(read_bytes(path), path)


def parse_cpu_ticks(data: bytes, path: str = "/proc/stat") -> CpuTicks:
    """(total, idle) clock ticks of ``/proc/stat``'s ``cpu`` lines. ``total`` leaves out
    guest time (already in user time) and ``idle`` includes iowait, as psutil's
    ``cpu_percent`` counts them."""
    overall = (0, 0)
    per_cpu = []
    for line in data.split(b"\n"):
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


#: The modes of a ``/proc/stat`` cpu line, in its order (node_exporter's ``mode`` label
#: values). Guest time is left out: the kernel counts it in user and nice already.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

#: Per online CPU: its number, and its clock ticks in each of :data:`CPU_MODES`.
CpuModeTicks = list[tuple[int, tuple[int, ...]]]


def parse_cpu_modes(data: bytes, path: str = "/proc/stat") -> CpuModeTicks:
    """The clock ticks of each online CPU in each mode, from ``/proc/stat``'s ``cpuN``
    lines (an offline CPU has no line; a kernel without the later columns counts 0)."""
    cores: CpuModeTicks = []
    width = len(CPU_MODES)
    for line in data.split(b"\n"):
        if not line.startswith(b"cpu"):
            break
        fields = line.split()
        if fields[0] == b"cpu":
            continue
        try:
            number = int(fields[0][3:])
            values = tuple(int(v) for v in fields[1 : 1 + width])
        except (ValueError, IndexError):
            raise CollectorError(f"cannot parse {path}: {line[:60]!r}") from None
        if len(values) < 4:
            raise CollectorError(f"cannot parse {path}: {line[:60]!r}")
        cores.append((number, values + (0,) * (width - len(values))))
    return cores


NetCounters = dict[str, tuple[int, int, int, int]]


def net_counters(path: str = "/proc/net/dev") -> NetCounters:
    """Per interface: bytes received, bytes sent, packets received, packets sent."""
    return parse_net_counters(read_bytes(path), path)


def parse_net_counters(data: bytes, path: str = "/proc/net/dev") -> NetCounters:
    """The counters of ``/proc/net/dev``'s text, per interface (see :func:`net_counters`)."""
    counters = {}
    for line in data.splitlines():
        name, colon, rest = line.partition(b":")
        if not colon:
            continue  # the two header lines
        fields = rest.split(None, 10)
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
