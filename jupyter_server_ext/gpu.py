"""The ``gpu`` collector: NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package).

NVML is initialised once, on the first tick (about 16 ms on an H100), and device
handles, names and UUIDs are kept; each tick then reads utilisation, memory,
temperature and power (about 17 us a device). PCIe throughput is not read: each such
call blocks for ~20 ms.

Each device also lists its compute processes (``nvmlDeviceGetComputeRunningProcesses``,
about 0.5 ms a device) with their GPU memory, their unix user (psutil) and, when the
pid is one of this server's kernels or in a kernel's process tree, the kernel's id
(``kernel_pids`` maps pid -> kernel id; see ``JupyterCollector.kernel_pids``). Inside a
container NVML may report the host's pids, which then map to no user and no kernel.
``mig`` is ``null`` unless MIG mode is on (read once, at start: changing it needs a GPU
reset), then the MIG instances with their memory.

Without ``nvidia-ml-py`` installed, or without an NVIDIA driver, the group reports no
devices and no error: the machine simply has no GPU we can see. A field a device does
not support is ``null``; any other NVML error fails the group for that tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from .errors import CollectorError

log = logging.getLogger("sysmon_nb.gpu")

_NOT_SUPPORTED = 3
_NOT_FOUND = 6
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_NO_GPU = {_DRIVER_NOT_LOADED, _LIBRARY_NOT_FOUND}


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    uuid: str
    mig: bool = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """``gpu``: one entry per NVIDIA device. ``nvml`` is the ``pynvml`` module or a
    stand-in with the same functions; by default it is imported on first use."""

    name = "gpu"

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        kernel_pids: Callable[[], Mapping[int, str]] = dict,
        ps: ModuleType | Any = psutil,
    ) -> None:
        self._nvml = nvml
        self._kernel_pids = kernel_pids
        self._ps = ps
        self._devices: list[_Device] | None = None
        self._unavailable: str | None = None

    @property
    def unavailable_reason(self) -> str | None:
        """Why no GPU is reported (no library, no driver), or ``None``."""
        return self._unavailable

    def collect(self, now: float) -> dict[str, Any]:
        devices = self._open()
        kernels = self._kernel_pids() if devices else {}
        return {"devices": [self._read(d, kernels) for d in devices]}

    def close(self) -> None:
        """Shut NVML down if this collector initialised it. Idempotent."""
        if self._devices is not None and self._nvml is not None:
            self._devices = None
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)

    def _open(self) -> list[_Device]:
        if self._devices is not None:
            return self._devices
        if self._unavailable is not None:
            return []
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                return self._no_gpu("nvidia-ml-py is not installed")
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            if getattr(err, "value", None) in _NO_GPU:
                return self._no_gpu(f"NVML unavailable: {err}")
            raise CollectorError(f"NVML initialisation failed: {err}") from err
        try:
            devices = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                devices.append(
                    _Device(
                        index=index,
                        handle=handle,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        mig=self._mig_enabled(handle),
                    )
                )
        except nvml.NVMLError as err:
            nvml.nvmlShutdown()
            raise CollectorError(f"NVML device enumeration failed: {err}") from err
        self._devices = devices
        log.info("sysmon: NVML found %d GPU(s)", len(devices))
        return devices

    def _no_gpu(self, reason: str) -> list[_Device]:
        self._unavailable = reason
        log.info("sysmon: no GPU metrics (%s)", reason)
        return []

    def _mig_enabled(self, handle: Any) -> bool:
        nvml = self._nvml
        assert nvml is not None
        try:
            mode = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            return False  # not supported (most GPUs), or unreadable: report no MIG
        return bool(mode[0] == 1)  # NVML_DEVICE_MIG_ENABLE, the current mode

    def _read(self, device: _Device, kernels: Mapping[int, str]) -> dict[str, Any]:
        nvml = self._nvml
        assert nvml is not None
        h = device.handle
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, h)
        memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, h)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, h)
        limit_mw = self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
        return {
            "index": device.index,
            "name": device.name,
            "uuid": device.uuid,
            "utilization_percent": None if util is None else util.gpu,
            "memory_used_bytes": None if memory is None else memory.used,
            "memory_total_bytes": None if memory is None else memory.total,
            "temperature_c": temperature,
            "power_w": None if power_mw is None else round(power_mw / 1000.0, 1),
            "power_limit_w": None if limit_mw is None else round(limit_mw / 1000.0, 1),
            "processes": self._processes(h, kernels),
            "mig": self._mig(h) if device.mig else None,
        }

    def _processes(self, handle: Any, kernels: Mapping[int, str]) -> list[dict[str, Any]] | None:
        """The device's compute processes, most GPU memory first."""
        nvml = self._nvml
        assert nvml is not None
        running = self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if running is None:
            return None
        processes = [
            {
                "pid": p.pid,
                "user": self._user(p.pid),
                "used_memory_bytes": p.usedGpuMemory,
                "kernel_id": kernels.get(p.pid),
            }
            for p in running
        ]
        processes.sort(key=lambda p: p["used_memory_bytes"] or 0, reverse=True)
        return processes

    def _user(self, pid: int) -> str | None:
        ps = self._ps
        try:
            return str(ps.Process(pid).username())
        except (ps.NoSuchProcess, ps.AccessDenied, KeyError):
            return None  # gone, hidden, a host pid from inside a container, or no passwd entry

    def _mig(self, handle: Any) -> list[dict[str, Any]]:
        """The MIG instances on a device in MIG mode; empty slots are skipped."""
        nvml = self._nvml
        assert nvml is not None
        instances = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError as err:
                if getattr(err, "value", None) == _NOT_FOUND:
                    continue
                raise CollectorError(f"NVML error on GPU: {err}") from err
            memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, mig)
            instances.append(
                {
                    "index": slot,
                    "uuid": _text(nvml.nvmlDeviceGetUUID(mig)),
                    "gpu_instance_id": self._optional(nvml.nvmlDeviceGetGpuInstanceId, mig),
                    "compute_instance_id": self._optional(nvml.nvmlDeviceGetComputeInstanceId, mig),
                    "memory_used_bytes": None if memory is None else memory.used,
                    "memory_total_bytes": None if memory is None else memory.total,
                }
            )
        return instances

    def _optional(self, call: Any, *args: Any) -> Any:
        nvml = self._nvml
        assert nvml is not None
        try:
            return call(*args)
        except nvml.NVMLError as err:
            if getattr(err, "value", None) == _NOT_SUPPORTED:
                return None
            raise CollectorError(f"NVML error on GPU: {err}") from err
