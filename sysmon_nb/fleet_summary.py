"""The few figures of a sample that a fleet row shows (:class:`Summary`), computed by the
pure :func:`summarize`: what :class:`~sysmon_nb.fleet.FleetClient` keeps per server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .protocol import Status


@dataclass(frozen=True)
class Summary:
    """The figures of one sample the fleet table shows, in percent of the server's
    limit where it has one (its container's), else of the machine."""

    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_percent: float | None = None
    home_percent: float | None = None
    kernels: int | None = None
    alerts: tuple[str, ...] = ()
    host: str = ""
    time: float = 0.0

    def heaviest(self) -> float:
        """The highest fill of CPU, memory, GPU and home volume (0 when none known)."""
        figures = (self.cpu_percent, self.memory_percent, self.gpu_percent, self.home_percent)
        return max((f for f in figures if f is not None), default=0.0)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(status: Status) -> Summary:
    """The table's figures for one sample (pure; absent groups give None)."""
    groups = status.groups
    cpu, memory = groups.get("cpu") or {}, groups.get("memory") or {}
    container = groups.get("container") or {}
    cpu_percent = _num(cpu.get("percent"))
    used_cores, limit_cores = (
        _num(container.get("cpu_usage_cores")),
        _num(container.get("cpu_limit_cores")),
    )
    if used_cores is not None and limit_cores:
        cpu_percent = 100.0 * used_cores / limit_cores
    memory_percent = _num(memory.get("percent"))
    used_bytes, limit_bytes = (
        _num(container.get("memory_used_bytes")),
        _num(container.get("memory_limit_bytes")),
    )
    if used_bytes is not None and limit_bytes:
        memory_percent = 100.0 * used_bytes / limit_bytes
    gpu_percent = None
    for device in (groups.get("gpu") or {}).get("devices") or ():
        util = _num(device.get("utilization_percent"))
        used, total = _num(device.get("memory_used_bytes")), _num(device.get("memory_total_bytes"))
        fill = max(util or 0.0, 100.0 * used / total if used is not None and total else 0.0)
        gpu_percent = fill if gpu_percent is None else max(gpu_percent, fill)
    home_percent = None
    for mount in (groups.get("disk") or {}).get("mounts") or ():
        if mount.get("home") is True:
            home_percent = _num(mount.get("percent"))
            break
    kernels = (groups.get("jupyter") or {}).get("kernels")
    active = (groups.get("alerts") or {}).get("active") or ()
    alerts = tuple(str(a.get("name", "?")) for a in active if isinstance(a, Mapping))
    return Summary(
        cpu_percent=cpu_percent,
        memory_percent=memory_percent,
        gpu_percent=gpu_percent,
        home_percent=home_percent,
        kernels=kernels if isinstance(kernels, int) else None,
        alerts=alerts,
        host=status.host,
        time=status.time,
    )
