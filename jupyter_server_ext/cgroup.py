"""The ``container`` collector: the limits the server's own cgroup puts on it.

Reads cgroup v2 (the unified hierarchy) or v1 (``memory`` and ``cpu`` controllers)
from ``root`` (``/sys/fs/cgroup``), at the path ``/proc/self/cgroup`` names. A limit
set on an ancestor cgroup applies too, so the tightest one along the path wins.
``null`` means unlimited (or no cgroup filesystem at all).

``memory_used_bytes`` leaves out inactive file cache, as ``docker stats`` and the
kubelet do: that is the memory the kernel would not reclaim before an OOM kill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CollectorError

#: v1 reports "no limit" as a huge page-rounded number; anything above this is unlimited.
_V1_UNLIMITED = 1 << 62


class ContainerCollector:
    """``container``: cgroup version, memory limit and use, CPU quota in cores."""

    name = "container"

    def __init__(
        self, root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
    ) -> None:
        self._root = Path(root)
        self._proc_cgroup = Path(proc_cgroup)
        self._own_dirs: dict[Path, Path] = {}
        self._version: int | bool | None = False  # False: not looked yet

    def collect(self, now: float) -> dict[str, Any]:
        if self._version is False:
            self._version = self._detect()
        if self._version == 2:
            return self._v2()
        if self._version == 1:
            return self._v1()
        return {
            "cgroup": None,
            "memory_limit_bytes": None,
            "memory_used_bytes": None,
            "cpu_limit_cores": None,
        }

    def _detect(self) -> int | None:
        if (self._root / "cgroup.controllers").is_file():
            return 2
        if (self._root / "memory").is_dir() or (self._root / "cpu").is_dir():
            return 1
        return None

    # -- cgroup v2 -------------------------------------------------------------------

    def _v2(self) -> dict[str, Any]:
        own = self._own_dir(self._root, lambda controllers: controllers == "")
        memory_limit: int | None = None
        cpu_limit: float | None = None
        for directory in _self_and_ancestors(own, self._root):
            text = _read(directory / "memory.max")
            if text is not None and text != "max":
                memory_limit = _min(memory_limit, _int(directory / "memory.max", text))
            path = directory / "cpu.max"
            text = _read(path)
            if text is not None:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    cpu_limit = _min(cpu_limit, _cores(path, "cpu.max", quota, period))
        used = None
        if own != self._root:
            current = _read(own / "memory.current")
            if current is None:
                raise CollectorError(f"cannot read {own / 'memory.current'}")
            inactive = _stats(own / "memory.stat").get("inactive_file", 0)
            used = max(0, _int(own / "memory.current", current) - inactive)
        return {
            "cgroup": 2,
            "memory_limit_bytes": memory_limit,
            "memory_used_bytes": used,
            "cpu_limit_cores": None if cpu_limit is None else round(cpu_limit, 3),
        }

    # -- cgroup v1 -------------------------------------------------------------------

    def _v1(self) -> dict[str, Any]:
        memory_limit: int | None = None
        used: int | None = None
        mem_root = self._root / "memory"
        if mem_root.is_dir():
            mem = self._own_dir(mem_root, lambda controllers: "memory" in controllers.split(","))
            stats = _stats(mem / "memory.stat")
            limit = stats.get("hierarchical_memory_limit")
            if limit is None:
                text = _read(mem / "memory.limit_in_bytes")
                limit = _int(mem / "memory.limit_in_bytes", text) if text is not None else None
            if limit is not None and limit < _V1_UNLIMITED:
                memory_limit = limit
            usage = _read(mem / "memory.usage_in_bytes")
            if usage is None:
                raise CollectorError(f"cannot read {mem / 'memory.usage_in_bytes'}")
            used = max(
                0, _int(mem / "memory.usage_in_bytes", usage) - stats.get("total_inactive_file", 0)
            )
        cpu_limit: float | None = None
        cpu_root = self._root / "cpu"
        if cpu_root.is_dir():
            cpu = self._own_dir(cpu_root, lambda controllers: "cpu" in controllers.split(","))
            for directory in _self_and_ancestors(cpu, cpu_root):
                quota = _read(directory / "cpu.cfs_quota_us")
                period = _read(directory / "cpu.cfs_period_us")
                if quota is None or period is None:
                    continue
                if _int(directory / "cpu.cfs_quota_us", quota) > 0:
                    path = directory / "cpu.cfs_period_us"
                    cpu_limit = _min(cpu_limit, _cores(path, "cpu.cfs_period_us", quota, period))
        return {
            "cgroup": 1,
            "memory_limit_bytes": memory_limit,
            "memory_used_bytes": used,
            "cpu_limit_cores": None if cpu_limit is None else round(cpu_limit, 3),
        }

    def _own_dir(self, mount: Path, matches: Any) -> Path:
        """This process's cgroup directory under ``mount``; ``mount`` itself when the
        path is not visible (a cgroup namespace makes our cgroup the root). Found once:
        a server process does not move between cgroups."""
        found = self._own_dirs.get(mount)
        if found is None:
            found = self._own_dirs[mount] = self._find_own_dir(mount, matches)
        return found

    def _find_own_dir(self, mount: Path, matches: Any) -> Path:
        text = _read(self._proc_cgroup)
        for line in (text or "").splitlines():
            _, controllers, path = [*line.split(":", 2), "", ""][:3]
            if matches(controllers):
                candidate = mount / path.lstrip("/")
                if candidate.is_dir():
                    return candidate
                break
        return mount


def _self_and_ancestors(directory: Path, stop: Path) -> list[Path]:
    chain = [directory]
    while directory != stop and stop in directory.parents:
        directory = directory.parent
        chain.append(directory)
    return chain


def _read(path: Path) -> str | None:
    """The file's stripped text; ``None`` if it does not exist. Other errors
    (permission denied) become a :class:`CollectorError`. Plain ``os`` calls: a
    pathlib ``read_text`` costs about three times as much per small cgroup file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CollectorError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as err:
        raise CollectorError(f"cannot read {path}: {err.strerror or err}") from err
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


def _int(path: Path, text: str) -> int:
    """``text`` (read from ``path``) as an integer; a :class:`CollectorError` in words if
    it is not one."""
    try:
        return int(text)
    except ValueError:
        raise CollectorError(f"cannot read {path}: not a number: {text[:40]!r}") from None


def _cores(path: Path, name: str, quota: str, period: str) -> float:
    """A CPU quota over its period, in cores; a zero period is an error in words (the
    kernel refuses one, but a broken or fake cgroup tree may hold it)."""
    quota_us, period_us = _int(path, quota), _int(path, period)
    if period_us <= 0:
        raise CollectorError(f"{name} has a zero period ({path})")
    return quota_us / period_us


def _stats(path: Path) -> dict[str, int]:
    """The fields of a ``memory.stat``-style file (empty if it does not exist)."""
    stats = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if value.isdigit():
            stats[name] = int(value)
    return stats


def _min(current: Any, new: Any) -> Any:
    return new if current is None else min(current, new)
