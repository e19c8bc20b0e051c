"""The Prometheus export (jupyter_server_ext/metrics.py): the sample as ``sysmon_*``
metrics, its registration, ``sysmon/metrics`` (and jupyter_server's ``/metrics``
without it), and a real Prometheus scraping a real jupyter server beside Debian's
node_exporter."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError

from jupyter_server_ext.app import SysmonExtension
from jupyter_server_ext.gpu import GpuCollector
from jupyter_server_ext.metrics import (
    EXPORTED_GROUPS,
    EXPORTER,
    KERNEL_STATES,
    SPECS,
    Exporter,
    families,
)
from sysmon_nb._version import __version__
from sysmon_nb.protocol import Status

from .conftest import eventually, recv_type
from .servers import TOKEN, JupyterProcess, free_port
from .test_gpu import FakeNvml, busy_with_process, load

#: Every label a sysmon metric may carry: all bounded (never a pid or process name), and
#: none that a hub-side exporter adds (hub_user, hub_server).
BOUNDED_LABELS = {
    "mountpoint", "fstype", "cpu", "mode", "device", "gpu", "uuid", "name", "kernel_id",
    "kernel_name", "state", "user", "group", "cgroup_version", "version", "protocol",
    "python_version",
}  # fmt: skip

#: The path of the server's Prometheus export, under its base URL (the one place to
#: change when the export moves).
METRICS_PATH = "sysmon/metrics"


def gpu_group() -> dict[str, Any]:
    """The gpu group as the collector reads the H100 recording (tests/fixtures/nvml)."""
    collector = GpuCollector(nvml=FakeNvml(busy_with_process(4242)))
    group = collector.collect(0.0)
    group["devices"][0]["processes"] = [
        {"pid": 4242, "user": "ada", "used_memory_bytes": 3_000_000_000, "kernel_id": "k1"},
        {"pid": 4243, "user": "ada", "used_memory_bytes": 1_000_000_000, "kernel_id": "k1"},
        {"pid": 4244, "user": "bob", "used_memory_bytes": 5_000_000, "kernel_id": None},
    ]
    return group


def full_status(**changes: Any) -> Status:
    """A sample with every group, turn-2 fields included."""
    groups: dict[str, Any] = {
        "cpu": {"percent": 37.5, "per_cpu": [50.0, 25.0], "count": 2, "load_1m": 1.5,
                "load_5m": 0.75, "load_15m": 0.5, "pressure": 4.0},
        "memory": {"total_bytes": 16_000, "available_bytes": 6_000, "used_bytes": 10_000,
                   "percent": 62.5, "swap_total_bytes": 0, "swap_used_bytes": 0,
                   "swap_percent": 0.0, "pressure": None},
        "counters": {"cpu": [
                         {"cpu": 0, "user": 10.5, "nice": 0.0, "system": 2.25, "idle": 100.0,
                          "iowait": 0.5, "irq": 0.0, "softirq": 0.25, "steal": 0.0},
                         {"cpu": 3, "user": 20.0, "nice": 1.0, "system": 4.0, "idle": 90.0,
                          "iowait": 0.0, "irq": 0.0, "softirq": 0.0, "steal": 0.125}],
                     "network": [
                         {"device": "lo", "receive_bytes": 5000, "transmit_bytes": 5000,
                          "receive_packets": 50, "transmit_packets": 50},
                         {"device": "eth0", "receive_bytes": 7000, "transmit_bytes": 3000,
                          "receive_packets": 70, "transmit_packets": 30}],
                     "network_devices_left_out": 0},
        "disk": {"read_bytes_per_s": 1024.0, "write_bytes_per_s": 2048.0,
                 "read_ops_per_s": 3.0, "write_ops_per_s": 4.0,
                 "read_bytes_total": 10_240, "write_bytes_total": 20_480,
                 "read_ops_total": 30, "write_ops_total": 40,
                 "mounts": [
                     {"path": "/", "fstype": "ext4", "total_bytes": 1000, "used_bytes": 400,
                      "percent": 40.0, "free_bytes": 550, "home": False, "stuck": False},
                     {"path": "/home", "fstype": "nfs4", "total_bytes": 5000,
                      "used_bytes": 100, "percent": 2.0, "free_bytes": 4900, "home": True,
                      "stuck": True},
                 ]},
        "network": {"recv_bytes_per_s": 10.0, "sent_bytes_per_s": 20.0,
                    "recv_packets_per_s": 1.0, "sent_packets_per_s": 2.0},
        "processes": {"count": 321,
                      "top_cpu": [{"pid": 777, "name": "secret-proc", "user": "ada",
                                   "cpu_percent": 99.0, "rss_bytes": 5}],
                      "top_memory": [{"pid": 778, "name": "hog", "user": "bob",
                                      "cpu_percent": 1.0, "rss_bytes": 9}]},
        "container": {"cgroup": 2, "memory_limit_bytes": 8_000, "memory_used_bytes": 7_000,
                      "cpu_limit_cores": 1.5, "cpu_usage_cores": 0.25,
                      "cpu_throttled_percent": 12.0, "oom_kills": 3, "memory_pressure": 1.0,
                      "cpu_pressure": None, "io_pressure": 0.5,
                      "cpu_usage_seconds_total": 123.5, "cpu_periods_total": 1000,
                      "cpu_throttled_periods_total": 120, "cpu_throttled_seconds_total": 6.25},
        "gpu": gpu_group(),
        "jupyter": {"kernels": 2, "terminals": 1, "sessions": 1,
                    "kernel_usage": [
                        {"id": "k1", "name": "python3", "pid": 4242, "cpu_percent": 150.0,
                         "cpu_seconds_total": 42.5, "rss_bytes": 80_000_000, "path": "a.ipynb",
                         "execution_state": "busy", "last_activity": 1.7e9,
                         "connections": 1},
                        {"id": "k2", "name": "remote", "pid": None, "cpu_percent": None,
                         "rss_bytes": None},
                    ]},
        "users": {"users": [{"name": "ada", "processes": 12, "cpu_percent": 50.0,
                             "cpu_seconds_total": 300.0, "rss_bytes": 2_000_000}],
                  "count": 4,
                  "others": {"users": 3, "processes": 30, "cpu_percent": None,
                             "cpu_seconds_total": 77.0, "rss_bytes": 9_000_000}},
        "alerts": {"active": [
            {"name": "memory_high", "group": "memory", "value": 95.0, "threshold": 90.0,
             "since": 1.7e9},
            {"name": "memory_high", "group": "container", "value": 96.0, "threshold": 90.0,
             "since": 1.7e9},
        ], "events": []},
    }  # fmt: skip
    fields: dict[str, Any] = {
        "seq": 7,
        "time": 1000.0,
        "host": "h",
        "interval": 5.0,
        "groups": groups,
        "skipped_ticks": 4,
    }
    fields.update(changes)
    return Status(**fields)


#: metric name -> {sorted (label, value) pairs: sample value}
Scraped = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(status: Status, now: float = 1002.5) -> Scraped:
    """name -> {sorted labels: value}, through prometheus_client's text format and parser."""
    registry = CollectorRegistry()

    class One:
        def collect(self) -> Any:
            return families(status, now)

    registry.register(One())
    return parse(generate_latest(registry).decode())


def parse(text: str) -> Scraped:
    out: Scraped = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: Scraped, metric: str, /, **labels: str) -> float:
    return float(metrics[metric][tuple(sorted(labels.items()))])


# -- the sample as metrics (pure) -------------------------------------------------------


def test_a_full_sample_becomes_node_exporter_style_metrics() -> None:
    m = scrape(full_status())
    cpu3 = {"cpu": "3"}
    assert value(m, "sysmon_cpu_seconds_total", **cpu3, mode="user") == 20.0
    assert value(m, "sysmon_cpu_seconds_total", cpu="0", mode="softirq") == 0.25
    assert value(m, "sysmon_cpu_seconds_total", **cpu3, mode="steal") == 0.125
    assert len(m["sysmon_cpu_seconds_total"]) == 2 * 8  # every mode of every CPU
    assert value(m, "sysmon_cpus") == 2
    assert value(m, "sysmon_load1") == 1.5 and value(m, "sysmon_load15") == 0.5
    assert value(m, "sysmon_cpu_pressure_ratio") == 0.04
    assert value(m, "sysmon_memory_total_bytes") == 16_000
    assert value(m, "sysmon_memory_available_bytes") == 6_000
    assert value(m, "sysmon_memory_used_bytes") == 10_000
    assert value(m, "sysmon_memory_swap_total_bytes") == 0  # a real 0 stays
    assert value(m, "sysmon_disk_read_bytes_total") == 10_240
    assert value(m, "sysmon_disk_written_bytes_total") == 20_480
    assert value(m, "sysmon_disk_reads_completed_total") == 30
    assert value(m, "sysmon_disk_writes_completed_total") == 40
    home = {"mountpoint": "/home", "fstype": "nfs4"}
    assert value(m, "sysmon_filesystem_avail_bytes", **home) == 4900
    assert value(m, "sysmon_filesystem_size_bytes", **home) == 5000
    assert value(m, "sysmon_filesystem_used_bytes", mountpoint="/", fstype="ext4") == 400
    assert value(m, "sysmon_filesystem_home", **home) == 1
    assert value(m, "sysmon_filesystem_home", mountpoint="/", fstype="ext4") == 0
    assert value(m, "sysmon_filesystem_stuck", **home) == 1
    assert value(m, "sysmon_network_receive_bytes_total", device="lo") == 5000
    assert value(m, "sysmon_network_transmit_bytes_total", device="eth0") == 3000
    assert value(m, "sysmon_network_receive_packets_total", device="eth0") == 70
    assert value(m, "sysmon_network_transmit_packets_total", device="lo") == 50
    assert value(m, "sysmon_network_devices_left_out") == 0
    assert value(m, "sysmon_processes") == 321
    assert value(m, "sysmon_container_info", cgroup_version="2") == 1
    assert value(m, "sysmon_container_memory_limit_bytes") == 8_000
    assert value(m, "sysmon_container_memory_used_bytes") == 7_000
    assert value(m, "sysmon_container_cpu_limit_cores") == 1.5
    assert value(m, "sysmon_container_cpu_usage_seconds_total") == 123.5
    assert value(m, "sysmon_container_cpu_periods_total") == 1000
    assert value(m, "sysmon_container_cpu_throttled_periods_total") == 120
    assert value(m, "sysmon_container_cpu_throttled_seconds_total") == 6.25
    assert value(m, "sysmon_container_oom_kills_total") == 3
    assert value(m, "sysmon_container_io_pressure_ratio") == 0.005
    assert value(m, "sysmon_jupyter_kernels") == 2
    k1 = {"kernel_id": "k1", "kernel_name": "python3"}
    assert value(m, "sysmon_kernel_memory_rss_bytes", **k1) == 80_000_000
    assert value(m, "sysmon_kernel_cpu_seconds_total", **k1) == 42.5
    assert value(m, "sysmon_kernel_connections", **k1) == 1
    assert value(m, "sysmon_kernel_last_activity_timestamp_seconds", **k1) == 1.7e9
    assert value(m, "sysmon_kernel_execution_state", **k1, state="busy") == 1
    assert value(m, "sysmon_user_processes", user="ada") == 12
    assert value(m, "sysmon_user_cpu_seconds_total", user="ada") == 300.0
    assert value(m, "sysmon_user_memory_rss_bytes", user="ada") == 2_000_000
    assert value(m, "sysmon_users") == 4
    assert value(m, "sysmon_user_processes", user="(others)") == 30
    assert value(m, "sysmon_user_cpu_seconds_total", user="(others)") == 77.0
    assert value(m, "sysmon_user_memory_rss_bytes", user="(others)") == 9_000_000
    assert value(m, "sysmon_alert_active", name="memory_high") == 1  # one series per name
    assert value(m, "sysmon_sample_age_seconds") == 2.5
    assert value(m, "sysmon_sample_interval_seconds") == 5
    assert value(m, "sysmon_sampler_skipped_ticks_total") == 4
    (build,) = m["sysmon_build_info"]
    assert dict(build)["version"] == __version__ and dict(build)["protocol"] == "1"
    assert m["sysmon_collector_up"] == {
        (("group", g),): 1.0
        for g in ("alerts", "container", "counters", "cpu", "disk", "gpu", "jupyter",
                  "memory", "network", "processes", "users")
    }  # fmt: skip


def test_rates_and_cpu_shares_are_left_to_promql() -> None:
    """No gauge computed over the sampler's window: Prometheus's rate() over the
    counters does that over its own."""
    m = scrape(full_status())
    for name in [*SPECS, *m]:
        assert "per_second" not in name, name
        assert not (name.endswith("_ratio") and "cpu" in name and "pressure" not in name), name
        assert not name.endswith("_cores") or name == "sysmon_container_cpu_limit_cores", name
    assert "sysmon_container_cgroup_version" not in m  # a version is a label (_info)


def test_counters_are_typed_counter_and_only_they_end_in_total() -> None:
    text = generate_latest(registry_with(full_status())).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    counters = {name for name, kind in types.items() if kind == "counter"}
    assert counters >= {
        "sysmon_cpu_seconds", "sysmon_network_receive_bytes", "sysmon_disk_read_bytes",
        "sysmon_container_cpu_usage_seconds", "sysmon_container_oom_kills",
        "sysmon_kernel_cpu_seconds", "sysmon_user_cpu_seconds",
        "sysmon_container_cpu_throttled_periods", "sysmon_container_cpu_throttled_seconds",
    }  # fmt: skip
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()  # the text format names a counter with _total
            assert (kind == "counter") == (name.removesuffix("_total") in counters), line
        elif line and not line.startswith("#"):
            family = line.split("{")[0].split(" ")[0]
            assert family.endswith("_total") == (family.removesuffix("_total") in counters), line


def test_every_known_state_of_every_kernel_is_a_series() -> None:
    status = full_status()
    groups = dict(status.groups)
    usage = [dict(k) for k in groups["jupyter"]["kernel_usage"]]
    usage.append({"id": "k3", "name": "r", "execution_state": "weird-new-state"})
    groups["jupyter"] = {**groups["jupyter"], "kernel_usage": usage}
    states = scrape(full_status(groups=groups))["sysmon_kernel_execution_state"]
    for kernel_id, current in [("k1", "busy"), ("k2", "unknown"), ("k3", "unknown")]:
        mine = {dict(labels)["state"]: v for labels, v in states.items()
                if dict(labels)["kernel_id"] == kernel_id}  # fmt: skip
        assert set(mine) == set(KERNEL_STATES), kernel_id  # idle, busy, dead... always there
        assert mine == {s: float(s == current) for s in KERNEL_STATES}, kernel_id
    assert len(states) == 3 * len(KERNEL_STATES)  # bounded: an unlisted state is 'unknown'


def test_help_says_what_a_pod_sees() -> None:
    helps = {name: spec.help for name, spec in SPECS.items()}
    assert "machine" not in helps["sysmon_processes"]
    assert "PID namespace" in helps["sysmon_processes"]
    assert "CUDA kernel" in helps["sysmon_gpu_utilization_ratio"]
    for name in ("sysmon_cpu_seconds_total", "sysmon_memory_total_bytes", "sysmon_load1",
                 "sysmon_disk_read_bytes_total"):  # fmt: skip
        assert "container sees its node's" in helps[name], name
    assert "its own network namespace" in helps["sysmon_network_receive_bytes_total"]


def test_gpus_from_the_h100_recording() -> None:
    recording = load("nvml_busy.json")["devices"][0]["readings"]
    m = scrape(full_status())
    gpu = {"gpu": "0", "uuid": recording["uuid"]}
    assert value(m, "sysmon_gpu_utilization_ratio", **gpu) == recording["utilization"]["gpu"] / 100
    assert value(m, "sysmon_gpu_memory_used_bytes", **gpu) == recording["memory"]["used"]
    assert value(m, "sysmon_gpu_memory_total_bytes", **gpu) == recording["memory"]["total"]
    assert value(m, "sysmon_gpu_temperature_celsius", **gpu) == recording["temperature_gpu"]
    assert value(m, "sysmon_gpu_power_watts", **gpu) == round(recording["power_usage_mw"] / 1000, 1)
    assert value(m, "sysmon_gpu_power_limit_watts", **gpu) == recording["power_limit_mw"] / 1000
    assert value(m, "sysmon_gpu_info", **gpu, name=recording["name"]) == 1
    # per kernel: its processes' GPU memory summed; a process of no kernel is left out
    assert m["sysmon_kernel_gpu_memory_bytes"] == {
        tuple(sorted({**gpu, "kernel_id": "k1", "kernel_name": "python3"}.items())): 4e9
    }


def test_null_fields_are_left_out_never_exported_as_zero() -> None:
    status = full_status()
    groups = dict(status.groups)
    groups["disk"] = {**groups["disk"], "read_bytes_total": None}  # no whole disk
    groups["counters"] = {"cpu": [{"cpu": 0, "user": 1.0, "idle": None}], "network": [
        {"device": "lo", "receive_bytes": None, "transmit_bytes": 1}]}  # fmt: skip
    groups["container"] = {**groups["container"], "memory_limit_bytes": None,
                           "cpu_throttled_seconds_total": None}  # fmt: skip
    m = scrape(full_status(groups=groups))
    assert "sysmon_disk_read_bytes_total" not in m
    assert "sysmon_disk_written_bytes_total" in m
    assert m["sysmon_cpu_seconds_total"] == {(("cpu", "0"), ("mode", "user")): 1.0}
    assert "sysmon_network_receive_bytes_total" not in m
    assert "sysmon_network_devices_left_out" not in m
    assert "sysmon_container_cpu_throttled_seconds_total" not in m
    assert "sysmon_container_memory_limit_bytes" not in m
    assert "sysmon_container_cpu_pressure_ratio" not in m  # null in full_status
    assert "sysmon_memory_pressure_ratio" not in m
    k2 = (("kernel_id", "k2"), ("kernel_name", "remote"))
    assert k2 not in m["sysmon_kernel_memory_rss_bytes"]
    assert "sysmon_cpus" in m and "sysmon_memory_total_bytes" in m  # the rest stays


def test_labels_are_bounded_never_a_pid_or_process_name() -> None:
    m = scrape(full_status())
    label_names = {k for series in m.values() for labels in series for k, _ in labels}
    assert label_names <= BOUNDED_LABELS
    label_values = {v for series in m.values() for labels in series for _, v in labels}
    for leaked in ("777", "778", "4242", "4244", "secret-proc", "hog", "a.ipynb"):
        assert leaked not in label_values
    assert all(set(spec.labels) <= BOUNDED_LABELS for spec in SPECS.values())


def test_collector_up_is_zero_while_a_group_fails_or_is_stale() -> None:
    groups = {"cpu": {"percent": 5.0}, "memory": {"total_bytes": 1}}
    status = full_status(groups=groups, errors={"gpu": "NVML error"}, stale={"memory": 12.0})
    m = scrape(status)
    assert m["sysmon_collector_up"] == {
        (("group", "cpu"),): 1.0,
        (("group", "gpu"),): 0.0,  # failing, no reading at all
        (("group", "memory"),): 0.0,  # stale: its last good reading is still exported
    }
    assert value(m, "sysmon_memory_total_bytes") == 1


def test_promtool_finds_nothing_to_say_about_a_full_sample(tmp_path: Path) -> None:
    promtool = need("promtool")
    assert promtool_check(promtool, generate_latest(registry_with(full_status()))) == (0, [])


# -- registration -----------------------------------------------------------------------


class Ext:
    """What the exporter reads of an extension."""

    def __init__(self, status: Status | None, name: str = "ext") -> None:
        self.broadcaster = SimpleNamespace(latest=status)
        self.log = logging.getLogger(f"test.{name}")


def registry_with(status: Status) -> CollectorRegistry:
    registry = CollectorRegistry()
    Exporter(registry, clock=lambda: status.time).attach(Ext(status))
    return registry


def test_registration_describes_and_never_collects() -> None:
    class Untouchable:
        @property
        def latest(self) -> Status:
            raise AssertionError("registration read the sample")

    ext = Ext(None)
    ext.broadcaster = Untouchable()  # type: ignore[assignment]
    registry = CollectorRegistry(auto_describe=True)
    Exporter(registry).attach(ext)
    # describe() named every family: a second exporter on the same registry clashes
    with pytest.raises(ValueError, match="sysmon_memory_total_bytes"):
        registry.register(Exporter(registry))


def test_a_clash_on_the_registry_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    Exporter(registry).attach(Ext(full_status()))
    second = Exporter(registry)
    with caplog.at_level(logging.WARNING):
        second.attach(Ext(full_status()))
    assert not second.registered
    assert "Prometheus export disabled" in caplog.text


def test_two_extensions_share_one_registration_and_the_last_leaves_it() -> None:
    registry = CollectorRegistry()
    exporter = Exporter(registry, clock=lambda: 1000.0)
    first = Ext(full_status(seq=1, skipped_ticks=1), "first")
    second = Ext(full_status(seq=2, skipped_ticks=2), "second")
    exporter.attach(first)
    exporter.attach(second)
    exporter.attach(second)  # idempotent
    text = generate_latest(registry).decode()
    assert text.count("# TYPE sysmon_memory_total_bytes") == 1
    assert value(parse(text), "sysmon_sampler_skipped_ticks_total") == 2  # the newest
    exporter.detach(second)
    text = generate_latest(registry).decode()
    assert value(parse(text), "sysmon_sampler_skipped_ticks_total") == 1
    exporter.detach(first)
    exporter.detach(first)  # idempotent
    assert not exporter.registered
    assert "sysmon_" not in generate_latest(registry).decode()
    registry.register(Exporter(registry))  # the names are free again
    exporter.attach(first)
    assert not exporter.registered  # a clash, logged


def test_no_sample_yet_exports_nothing() -> None:
    registry = CollectorRegistry()
    Exporter(registry).attach(Ext(None))
    assert "sysmon_" not in generate_latest(registry).decode()


def test_collect_asks_the_extension_to_keep_sampling_what_it_exports() -> None:
    registry = CollectorRegistry()
    ext = Ext(full_status())
    asked: list[tuple[str, ...]] = []
    ext.want = asked.append  # type: ignore[attr-defined]
    ext.metrics = ["cpu", "memory", "processes", "gpu", "counters"]  # type: ignore[attr-defined]
    Exporter(registry).attach(ext)
    generate_latest(registry)
    generate_latest(registry)
    # every exported group the server offers (processes for sysmon_processes, and the
    # per-CPU and per-interface counters)
    assert asked == [("cpu", "counters", "memory", "processes", "gpu")] * 2
    del ext.metrics  # type: ignore[attr-defined]
    generate_latest(registry)
    assert set(asked[-1]) == set(EXPORTED_GROUPS)


def test_the_prometheus_traits_have_help_and_defaults() -> None:
    traits = SysmonExtension.class_own_traits(config=True)
    assert "sysmon/metrics" in traits["prometheus"].help
    assert SysmonExtension().prometheus is True
    # the opt-in says who can then read what
    opt_in = traits["jupyter_server_metrics"].help
    for who_and_what in ("authenticate_prometheus", "anyone logged in", "shared access",
                         "every unix user's memory"):  # fmt: skip
        assert who_and_what in opt_in
    assert SysmonExtension().jupyter_server_metrics is False


# -- sysmon/metrics, and the server's own /metrics without sysmon ---------------------------


async def metrics_body(jp_fetch: Any, *path: str, **kwargs: Any) -> str:
    reply = await jp_fetch(*(path or (METRICS_PATH,)), **kwargs)
    assert reply.code == 200
    return str(reply.body.decode())


async def test_sysmon_metrics_carry_the_latest_sample_and_the_servers_do_not(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    reply = await jp_fetch("sysmon", "metrics")
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    m = parse(reply.body.decode())
    assert value(m, "sysmon_memory_total_bytes") == psutil.virtual_memory().total
    assert value(m, "sysmon_collector_up", group="cpu") == 1
    assert all(name.startswith("sysmon_") for name in m)  # sysmon's own registry only
    assert sysmon.exporter.registered
    # jupyter_server's /metrics (the global registry) carries none of them
    assert "sysmon_" not in await metrics_body(jp_fetch, "metrics")
    assert not EXPORTER.registered
    assert sysmon.exporter not in REGISTRY._collector_to_names


def _without_totals(obj: Any) -> Any:
    """``obj`` without its ``*_total`` fields (the counters added for Prometheus)."""
    if isinstance(obj, dict):
        return {k: _without_totals(v) for k, v in obj.items() if not k.endswith("_total")}
    if isinstance(obj, list):
        return [_without_totals(v) for v in obj]
    return obj


async def test_the_default_frame_leaves_the_counters_group_out(
    sysmon: SysmonExtension, jp_fetch: Any, connect: Any
) -> None:
    """A scrape makes the sampler read the per-CPU and per-interface counters, yet a
    subscriber that names no group gets no ``counters``; one that names it does. The
    ``*_total`` fields the other groups gained cost a few hundred bytes a frame (run with
    ``-s`` to see the figures of this machine)."""
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    await jp_fetch(METRICS_PATH)  # wants every exported group: counters too
    latest = lambda: sysmon.broadcaster.latest  # noqa: E731
    await eventually(lambda: "counters" in latest().groups and "users" in latest().groups)
    async with connect() as ws:
        hello = await recv_type(ws, "hello")
        assert "counters" in hello["metrics"] and "counters" not in hello["subscribed"]
        for _ in range(40):  # bounded: the subscriber wants users; a few ticks bring it
            text = await asyncio.wait_for(ws.recv(), 10)
            frame = json.loads(text)
            if frame["type"] == "status" and "users" in frame:
                break
        else:
            raise AssertionError("no status frame with users")
    assert "counters" not in frame
    lean = len(json.dumps(_without_totals(frame), separators=(",", ":")))
    print(f"default frame: {len(text)} bytes, {len(text) - lean} of them *_total fields")
    assert len(text) - lean <= 600  # disk 4, container 4, per kernel and user 1
    async with connect("metrics=counters") as ws:
        status = await recv_type(ws, "status")
    cores = status["counters"]["cpu"]
    assert len(cores) == len(psutil.cpu_times(percpu=True))
    assert "lo" in {n["device"] for n in status["counters"]["network"]}
    print(f"counters alone: {len(json.dumps(status, separators=(',', ':')))} bytes")


async def test_stop_unregisters(sysmon: SysmonExtension, jp_fetch: Any) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    assert "sysmon_memory_total_bytes" in await metrics_body(jp_fetch)
    await sysmon.stop_extension()
    assert "sysmon_" not in await metrics_body(jp_fetch)
    assert not sysmon.exporter.registered


@pytest.mark.parametrize("sysmon_config", [{"prometheus": False}], indirect=True)
async def test_prometheus_false_exports_nothing(sysmon: SysmonExtension, jp_fetch: Any) -> None:
    await eventually(lambda: sysmon.broadcaster.published >= 1)
    with pytest.raises(HTTPClientError) as off:
        await jp_fetch("sysmon", "metrics")
    assert off.value.code == 404
    assert "SysmonExtension.prometheus" in json.loads(off.value.response.body)["message"]
    assert "sysmon_" not in await metrics_body(jp_fetch, "metrics")


@pytest.mark.parametrize("sysmon_config", [{"jupyter_server_metrics": True}], indirect=True)
async def test_jupyter_server_metrics_puts_them_on_the_servers_metrics_when_asked(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    try:
        assert "sysmon_memory_total_bytes" in await metrics_body(jp_fetch, "metrics")
        assert "sysmon_memory_total_bytes" in await metrics_body(jp_fetch)
    finally:
        await sysmon.stop_extension()
    assert not EXPORTER.registered


async def test_a_scrape_never_samples_nor_waits_on_the_sampler(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[float] = []

    class Hung:
        name = "hung"

        def collect(self, now: float) -> dict[str, Any]:
            calls.append(now)
            entered.set()
            release.wait(30)
            return {}

    await eventually(lambda: sysmon.broadcaster.latest is not None)
    sysmon.sampler.collectors.append(Hung())
    try:
        await eventually(entered.is_set)
        seq = sysmon.broadcaster.latest.seq  # type: ignore[union-attr]
        started = time.monotonic()
        for _ in range(3):
            m = parse(await metrics_body(jp_fetch))
        assert time.monotonic() - started < 5
        assert value(m, "sysmon_memory_total_bytes") > 0  # the last published sample
        assert len(calls) == 1  # no scrape ran a collector
        assert sysmon.broadcaster.latest.seq == seq  # type: ignore[union-attr]
    finally:
        release.set()
        sysmon.sampler.collectors.pop()


async def test_a_scrape_is_not_the_users_activity(
    sysmon: SysmonExtension, jp_fetch: Any, jp_serverapp: Any
) -> None:
    """The hub's idle culler reads the server's API activity: a scrape every 15 s, or a
    dashboard polling the status route, must not keep an idle server alive."""
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    settings = jp_serverapp.web_app.settings
    before = settings.get("api_last_activity")
    for _ in range(3):
        await jp_fetch("sysmon", "metrics")
        await jp_fetch("sysmon", "api", "status")
    assert settings.get("api_last_activity") == before
    await jp_fetch("api", "contents")  # the user's own request does count
    assert settings.get("api_last_activity") != before


async def test_without_credentials_sysmon_metrics_is_403(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(METRICS_PATH, headers={"Authorization": ""})
    assert refused.value.code == 403


@pytest.mark.parametrize("sysmon_config", [{"allow_owner": False}], indirect=True)
async def test_sysmon_metrics_has_sysmons_admission(sysmon: SysmonExtension, jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("sysmon", "metrics")  # logged in, but not an administrator
    assert refused.value.code == 403
    assert "not an administrator" in json.loads(refused.value.response.body)["message"]


@pytest.mark.parametrize("server_config", [{"authenticate_prometheus": False}], indirect=True)
async def test_the_servers_rule_no_longer_decides_who_reads_sysmon(
    sysmon: SysmonExtension, jp_fetch: Any
) -> None:
    await eventually(lambda: sysmon.broadcaster.latest is not None)
    # jupyter_server's /metrics is open to anyone now, and carries nothing of sysmon's
    body = await metrics_body(jp_fetch, "metrics", headers={"Authorization": ""})
    assert "sysmon_" not in body
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("sysmon", "metrics", headers={"Authorization": ""})
    assert refused.value.code == 403


# -- a real Prometheus scraping a real jupyter server -------------------------------------


def need(binary: str) -> str:
    """The binary's path; CI installs Debian's prometheus package, so there it must exist."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing: CI must install Debian's prometheus package")
        pytest.skip(f"{binary} is not installed (apt-get install prometheus)")
    return path


def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` (bounded) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


class Prometheus:
    """Debian's prometheus binary on 127.0.0.1, scraping the jupyter server at ``target``
    (job ``jupyter``, with the server's token) and node_exporter at ``node`` (job
    ``node``) every second; storage in ``tmp``. Stopped by its pid."""

    def __init__(self, binary: str, tmp: Path, target: str, node: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: jupyter\n"
            f"    metrics_path: /{METRICS_PATH}\n"
            f"    authorization: {{credentials: {TOKEN}}}\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
            "  - job_name: node\n"
            f"    static_configs: [{{targets: ['{node}']}}]\n"
        )
        self.log_path = tmp / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
        until(self.ready, f"prometheus ready ({self.log_path})")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "-/ready", timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, now or at unix time ``at``."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        url = self.url + "api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scalar(self, promql: str, at: float) -> float:
        """The one value of ``promql`` at ``at`` (a query that sums to one series)."""
        result = self.query(promql, at)
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class NodeExporter:
    """Debian's prometheus-node-exporter on 127.0.0.1 with only the cpu and netdev
    collectors, loopback included (Debian's default leaves ``lo`` out). Our own process,
    never the package's service; stopped by its pid."""

    def __init__(self, binary: str, tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "node-exporter.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}",
             "--collector.disable-defaults", "--collector.cpu", "--collector.netdev",
             "--collector.netdev.device-exclude=^$"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp,
        )  # fmt: skip
        until(self.ready, f"node_exporter ready ({self.log_path})")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"node_exporter exited: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterProcess]:
    server = JupyterProcess(tmp_path_factory.mktemp("jupyter"), interval=0.5)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeExporter]:
    binary = need("prometheus-node-exporter")
    node = NodeExporter(binary, tmp_path_factory.mktemp("node-exporter"))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def prometheus(
    server: JupyterProcess, node_exporter: NodeExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = need("prometheus")
    prom = Prometheus(
        binary,
        tmp_path_factory.mktemp("prometheus"),
        f"127.0.0.1:{server.port}",
        f"127.0.0.1:{node_exporter.port}",
    )
    yield prom
    prom.stop()


def post(server: JupyterProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
        return answer


@pytest.mark.timeout(120)
def test_prometheus_scrapes_the_server(prometheus: Prometheus) -> None:
    up = until(lambda: prometheus.query('up{job="jupyter"} == 1'), "up == 1")
    assert up[0]["metric"]["instance"].startswith("127.0.0.1:")
    total = until(lambda: prometheus.query("sysmon_memory_total_bytes"), "memory total")
    assert float(total[0]["value"][1]) == psutil.virtual_memory().total
    busy = 'sum(rate(sysmon_cpu_seconds_total{mode!="idle"}[10s]))'
    cpu = until(lambda: prometheus.query(busy), "rate of the CPU seconds")
    assert 0.0 <= float(cpu[0]["value"][1]) <= (os.cpu_count() or 1) * 1.1
    rate = until(
        lambda: prometheus.query("rate(sysmon_sampler_skipped_ticks_total[10s])"),
        "rate of a sysmon counter",
    )
    assert float(rate[0]["value"][1]) >= 0.0
    until(lambda: prometheus.query('sysmon_collector_up{group="memory"} == 1'), "memory up")


#: A loopback sender: ``rate`` bytes a second over TCP on 127.0.0.1 for ``seconds``, in
#: 64 KiB writes at an even pace (a steady rate, so that two exporters read a fraction
#: of a second apart see the same one).
SENDER = """
import socket, sys, threading, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
server = socket.create_server(("127.0.0.1", 0))
out = socket.create_connection(server.getsockname())
inp, _ = server.accept()
def drain():
    while inp.recv(1 << 20):
        pass
threading.Thread(target=drain, daemon=True).start()
chunk, sent, start = b"x" * 65536, 0, time.monotonic()
while (now := time.monotonic()) - start < seconds:
    if sent < rate * (now - start):
        out.sendall(chunk)
        sent += len(chunk)
    else:
        time.sleep(0.002)
"""
#: One core spinning for ``seconds``.
SPINNER = (
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass"
)


def agree(ours: float, theirs: float, what: str, tolerance: float = 0.1) -> None:
    assert abs(ours - theirs) <= tolerance * max(abs(ours), abs(theirs)), (what, ours, theirs)


@pytest.mark.timeout(180)
def test_rates_agree_with_node_exporters_over_the_same_window(
    prometheus: Prometheus, node_exporter: NodeExporter
) -> None:
    """rate() of sysmon's counters and of node_exporter's, scraped side by side at 1 s
    while loopback traffic (40 MB/s) and a spinning core run: the same window, within
    10 %. The window lies wholly inside the load, so each rate is steady at both ends
    (sysmon's figures are up to an interval older than their scrape)."""
    ours_ready = 'sysmon_network_receive_bytes_total{device="lo"}'
    until(lambda: prometheus.query(ours_ready), "sysmon's loopback counters", timeout=60)
    until(
        lambda: prometheus.query('node_network_receive_bytes_total{device="lo"}'),
        "node_exporter's loopback counters",
        timeout=60,
    )
    window, warm = 10, 2
    load = [
        subprocess.Popen([sys.executable, "-c", SENDER, "40e6", str(warm + window + 8)]),
        subprocess.Popen([sys.executable, "-c", SPINNER, str(warm + window + 8)]),
    ]
    try:
        at = time.time() + warm + window
        until(lambda: time.time() >= at + 2.5, "the window's last scrapes", timeout=60)
    finally:
        for proc in load:
            proc.kill()
            proc.wait(10)

    def both(ours: str, theirs: str) -> tuple[float, float]:
        return prometheus.scalar(ours, at), prometheus.scalar(theirs, at)

    r = f"[{window}s]"
    lo = both(
        f'sum(rate(sysmon_network_receive_bytes_total{{device="lo"}}{r}))',
        f'sum(rate(node_network_receive_bytes_total{{device="lo"}}{r}))',
    )
    assert lo[1] >= 20e6, lo  # our traffic dominates the loopback's
    agree(*lo, "loopback bytes received per second")
    agree(
        *both(
            f'sum(rate(sysmon_network_transmit_packets_total{{device="lo"}}{r}))',
            f'sum(rate(node_network_transmit_packets_total{{device="lo"}}{r}))',
        ),
        "loopback packets sent per second",
    )
    busy = both(
        f'sum(rate(sysmon_cpu_seconds_total{{mode!~"idle|iowait"}}{r}))',
        f'sum(rate(node_cpu_seconds_total{{mode!~"idle|iowait"}}{r}))',
    )
    assert busy[1] >= 0.5, busy  # the spinning core, at least half of it
    agree(*busy, "busy CPU seconds per second")
    total = both(f"sum(rate(sysmon_cpu_seconds_total{r}))", f"sum(rate(node_cpu_seconds_total{r}))")
    agree(*total, "CPU seconds per second, every mode")
    by_mode = {
        row["metric"]["mode"]: float(row["value"][1])
        for row in prometheus.query(f"sum by (mode) (rate(sysmon_cpu_seconds_total{r}))", at)
    }
    assert set(by_mode) == {"user", "nice", "system", "idle", "iowait", "irq", "softirq",
                            "steal"}  # fmt: skip


@pytest.mark.timeout(120)
def test_prometheus_sees_the_kernel_of_a_session(
    server: JupyterProcess, prometheus: Prometheus
) -> None:
    session = post(
        server,
        "api/sessions",
        {"path": "watched.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    )
    kernel_id = session["kernel"]["id"]
    query = f'sysmon_kernel_memory_rss_bytes{{kernel_id="{kernel_id}"}} > 1000000'
    found = until(lambda: prometheus.query(query), "the session's kernel", timeout=60)
    assert found[0]["metric"]["kernel_name"] == "python3"


def promtool_check(promtool: str, body: bytes) -> tuple[int, list[str]]:
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    return check.returncode, (check.stdout + check.stderr).decode().splitlines()


def test_the_metrics_body_passes_promtool_and_needs_credentials(server: JupyterProcess) -> None:
    promtool = need("promtool")

    def scraped() -> bytes:  # a scrape wants the on-demand groups: the next ones have them
        status, body = server.get(METRICS_PATH)
        assert status == 200 and b"sysmon_memory_total_bytes" in body
        return body if b"sysmon_cpu_seconds_total{" in body and b"sysmon_users " in body else b""

    body = until(scraped, "the per-CPU counters and users in a scrape")
    assert promtool_check(promtool, body) == (0, [])  # sysmon's own registry, all of it
    # jupyter_server's own /metrics carries nothing of sysmon's
    status, jupyters = server.get("metrics")
    assert status == 200 and b"sysmon_" not in jupyters
    try:
        with urllib.request.urlopen(server.url + METRICS_PATH, timeout=5):
            code = 200
    except urllib.error.HTTPError as err:
        code = err.code
    assert code == 403
