"""The GPU collector against NVML readings recorded on an H100 (tests/fixtures/nvml/)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest

from jupyter_server_ext.errors import CollectorError
from jupyter_server_ext.gpu import GpuCollector

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


class FakeNvml:
    """The pynvml functions the collector calls, answering from a recording. Errors are
    pynvml's own exception classes."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, recording: dict[str, Any]) -> None:
        self.devices = [d["readings"] for d in recording["devices"]]
        self.init_calls = 0
        self.shutdown_calls = 0
        self.fail: dict[str, int] = {}  # function name -> NVML error code
        self.init_error: int | None = None

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise pynvml.NVMLError(self.fail[name])

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return h["name"]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> bytes:
        return h["uuid"].encode()  # older bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        self._check("utilization")
        return SimpleNamespace(**h["utilization"])

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        self._check("memory")
        return SimpleNamespace(**h["memory"])

    def nvmlDeviceGetTemperature(self, h: dict[str, Any], sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        self._check("temperature")
        return h["temperature_gpu"]

    def nvmlDeviceGetPowerUsage(self, h: dict[str, Any]) -> int:
        self._check("power")
        return h["power_usage_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, h: dict[str, Any]) -> int:
        return h["power_limit_mw"]

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        self._check("processes")
        if "processes" not in h:
            # the recordings hold how many processes ran, not their details
            assert h["compute_processes"] == [], "add the processes' details in the test"
            return []
        assert len(h["processes"]) == len(h["compute_processes"])
        return [SimpleNamespace(**p) for p in h["processes"]]

    def nvmlDeviceGetMigMode(self, h: dict[str, Any]) -> list[int]:
        self._check("mig_mode")
        return list(h["mig_mode"])

    def nvmlDeviceGetMaxMigDeviceCount(self, h: dict[str, Any]) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: dict[str, Any], slot: int) -> Any:
        instances = h.get("mig_instances", {})
        if slot not in instances:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return instances[slot]

    def nvmlDeviceGetGpuInstanceId(self, h: dict[str, Any]) -> int:
        return h["gpu_instance_id"]

    def nvmlDeviceGetComputeInstanceId(self, h: dict[str, Any]) -> int:
        return h["compute_instance_id"]


#: What nvml_busy.json's one compute process used: the busy reading's memory less the
#: idle one's (the recordings keep the process count, not the details).
BUSY_PROCESS_BYTES = 1563230208 - 503316480


def busy_with_process(pid: int) -> dict[str, Any]:
    recording = load("nvml_busy.json")
    readings = recording["devices"][0]["readings"]
    readings["processes"] = [{"pid": pid, "usedGpuMemory": BUSY_PROCESS_BYTES}]
    return recording


def test_busy_h100_reading() -> None:
    nvml = FakeNvml(busy_with_process(os.getpid()))
    result = GpuCollector(nvml, kernel_pids=lambda: {os.getpid(): "kernel-1"}).collect(0.0)
    assert result == {
        "devices": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": "GPU-b816cc7b-51a9-3949-e2d7-3240d8352c4c",
                "utilization_percent": 100,
                "memory_used_bytes": 1563230208,
                "memory_total_bytes": 85520809984,
                "temperature_c": 55,
                "power_w": 696.8,
                "power_limit_w": 700.0,
                "processes": [
                    {
                        "pid": os.getpid(),
                        "user": psutil.Process().username(),
                        "used_memory_bytes": BUSY_PROCESS_BYTES,
                        "kernel_id": "kernel-1",
                    }
                ],
                "mig": None,
            }
        ]
    }


#: A pid this machine does not show (a host pid seen from a container, say).
HIDDEN = 2**22 + 7


def test_gpu_process_of_no_kernel_and_unknown_pid() -> None:
    recording = busy_with_process(HIDDEN)
    readings = recording["devices"][0]["readings"]
    readings["compute_processes"].append("second")
    readings["processes"].append({"pid": os.getpid(), "usedGpuMemory": None})
    device = GpuCollector(FakeNvml(recording)).collect(0.0)["devices"][0]
    assert device["processes"] == [
        {
            "pid": 2**22 + 7,
            "user": None,
            "used_memory_bytes": BUSY_PROCESS_BYTES,
            "kernel_id": None,
        },
        {
            "pid": os.getpid(),
            "user": psutil.Process().username(),
            "used_memory_bytes": None,  # NVML cannot tell (WDDM, some containers)
            "kernel_id": None,
        },
    ]


def test_idle_has_no_processes_and_processes_unsupported_is_null() -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    gpu = GpuCollector(nvml)
    assert gpu.collect(0.0)["devices"][0]["processes"] == []
    nvml.fail["processes"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert gpu.collect(1.0)["devices"][0]["processes"] is None


def test_mig_instances_when_mig_mode_is_on() -> None:
    recording = load("nvml_idle.json")
    readings = recording["devices"][0]["readings"]
    readings["mig_mode"] = [1, 1]
    readings["mig_instances"] = {
        0: {"uuid": "MIG-aaa", "gpu_instance_id": 1, "compute_instance_id": 0,
            "memory": {"total": 10 << 30, "free": 9 << 30, "used": 1 << 30}},
        3: {"uuid": "MIG-bbb", "gpu_instance_id": 2, "compute_instance_id": 0,
            "memory": {"total": 20 << 30, "free": 20 << 30, "used": 0}},
    }  # fmt: skip
    mig = GpuCollector(FakeNvml(recording)).collect(0.0)["devices"][0]["mig"]
    assert mig == [
        {"index": 0, "uuid": "MIG-aaa", "gpu_instance_id": 1, "compute_instance_id": 0,
         "memory_used_bytes": 1 << 30, "memory_total_bytes": 10 << 30},
        {"index": 3, "uuid": "MIG-bbb", "gpu_instance_id": 2, "compute_instance_id": 0,
         "memory_used_bytes": 0, "memory_total_bytes": 20 << 30},
    ]  # fmt: skip


def test_mig_mode_unreadable_means_no_mig() -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    nvml.fail["mig_mode"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert GpuCollector(nvml).collect(0.0)["devices"][0]["mig"] is None


def test_idle_h100_and_init_once() -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    gpu = GpuCollector(nvml)
    for tick in range(5):
        device = gpu.collect(float(tick))["devices"][0]
    assert nvml.init_calls == 1
    assert device["utilization_percent"] == 0
    assert device["power_w"] == 111.9
    assert device["temperature_c"] == 34
    gpu.close()
    gpu.close()
    assert nvml.shutdown_calls == 1


def test_unsupported_field_is_null() -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    nvml.fail["power"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    device = GpuCollector(nvml).collect(0.0)["devices"][0]
    assert device["power_w"] is None
    assert device["memory_used_bytes"] == 503316480


def test_nvml_error_fails_the_group_with_a_clear_message() -> None:
    nvml = FakeNvml(busy_with_process(os.getpid()))
    gpu = GpuCollector(nvml)
    gpu.collect(0.0)
    nvml.fail["temperature"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(CollectorError, match="GPU is lost"):
        gpu.collect(1.0)
    del nvml.fail["temperature"]
    assert gpu.collect(2.0)["devices"][0]["temperature_c"] == 55  # recovers


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_no_driver_means_no_devices_and_no_error(code: int) -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    nvml.init_error = code
    gpu = GpuCollector(nvml)
    assert gpu.collect(0.0) == {"devices": []}
    assert gpu.collect(1.0) == {"devices": []}
    assert nvml.init_calls == 1  # not retried every tick
    assert gpu.unavailable_reason is not None


def test_other_init_failure_is_reported_and_retried() -> None:
    nvml = FakeNvml(load("nvml_idle.json"))
    nvml.init_error = pynvml.NVML_ERROR_NO_PERMISSION
    gpu = GpuCollector(nvml)
    with pytest.raises(CollectorError, match="initialisation failed"):
        gpu.collect(0.0)
    nvml.init_error = None
    assert len(gpu.collect(1.0)["devices"]) == 1


def test_real_nvml_on_this_machine_has_no_gpu_or_reads_one() -> None:
    result = GpuCollector().collect(0.0)
    for device in result["devices"]:
        assert device["memory_total_bytes"] > 0
