"""The ``gpu`` collector: NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package).

NVML is initialised once, on the first tick (about 16 ms on an H100), and device
handles, names and UUIDs are kept; each tick then reads utilisation, memory,
temperature and power (about 17 us a device). PCIe throughput is not read: each such
call blocks for ~20 ms.

Without ``nvidia-ml-py`` installed, or without an NVIDIA driver, the group reports no
devices and no error: the machine simply has no GPU we can see. A field a device does
not support is ``null``; any other NVML error fails the group for that tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import CollectorError

log = logging.getLogger("sysmon_nb.gpu")

_NOT_SUPPORTED = 3
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_NO_GPU = {_DRIVER_NOT_LOADED, _LIBRARY_NOT_FOUND}


@dataclass
class _Device:
    index: int
    handle: Any
    name: str
    uuid: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """``gpu``: one entry per NVIDIA device. ``nvml`` is the ``pynvml`` module or a
    stand-in with the same functions; by default it is imported on first use."""

    name = "gpu"

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml
        self._devices: list[_Device] | None = None
        self._unavailable: str | None = None

    @property
    def unavailable_reason(self) -> str | None:
        """Why no GPU is reported (no library, no driver), or ``None``."""
        return self._unavailable

    def collect(self, now: float) -> dict[str, Any]:
        devices = self._open()
        return {"devices": [self._read(d) for d in devices]}

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

    def _read(self, device: _Device) -> dict[str, Any]:
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
        }

    def _optional(self, call: Any, *args: Any) -> Any:
        nvml = self._nvml
        assert nvml is not None
        try:
            return call(*args)
        except nvml.NVMLError as err:
            if getattr(err, "value", None) == _NOT_SUPPORTED:
                return None
            raise CollectorError(f"NVML error on GPU: {err}") from err
