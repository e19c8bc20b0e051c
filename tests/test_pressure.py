"""PSI parsing, and the host's PSI files read by the cpu and memory collectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_server_ext.collectors import CpuCollector, MemoryCollector
from jupyter_server_ext.pressure import HOST_PRESSURE, HostPressure, read_some_avg10, some_avg10

PSI = "some avg10=7.25 avg60=1.00 avg300=0.50 total=999\nfull avg10=2.00 avg60=0 avg300=0 total=1\n"


def test_some_avg10_is_read_not_full() -> None:
    assert some_avg10(PSI) == 7.25
    assert some_avg10("full avg10=2.00 avg60=0 avg300=0 total=1\n") is None
    assert some_avg10("some avg10=oops\n") is None
    assert some_avg10("") is None


def test_missing_file_is_null(tmp_path: Path) -> None:
    assert read_some_avg10(tmp_path / "nope") is None
    assert HostPressure("memory", tmp_path).read() is None


def test_collectors_carry_host_pressure(tmp_path: Path) -> None:
    (tmp_path / "cpu").write_text(PSI)
    (tmp_path / "memory").write_text(PSI.replace("7.25", "40.5"))
    assert CpuCollector(pressure_root=tmp_path).collect(0.0)["pressure"] == 7.25
    assert MemoryCollector(pressure_root=tmp_path).collect(0.0)["pressure"] == 40.5
    empty = tmp_path / "none"
    assert CpuCollector(pressure_root=empty).collect(0.0)["pressure"] is None
    assert MemoryCollector(pressure_root=empty).collect(0.0)["pressure"] is None


def test_this_machine() -> None:
    """The real /proc/pressure: a percent where the kernel has PSI, null where not."""
    cpu = CpuCollector().collect(0.0)["pressure"]
    memory = MemoryCollector().collect(0.0)["pressure"]
    if not (HOST_PRESSURE / "cpu").exists():
        assert cpu is None and memory is None
        pytest.skip("this kernel has no /proc/pressure")
    for value in (cpu, memory):
        assert isinstance(value, float) and 0.0 <= value <= 100.0
