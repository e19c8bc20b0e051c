"""The Prometheus export: the latest sample as ``sysmon_*`` metrics on ``sysmon/metrics``
(the extension's own registry, behind sysmon's admission: :mod:`.metrics_route`), and on
jupyter_server's ``/metrics`` (prometheus_client's default registry) only where
``jupyter_server_metrics`` turns that on.

A scrape reads the sample the sampler already published (``broadcaster.latest``): it
never samples and never waits on the sampler's thread, so a scrape costs the same
whether a collector is slow, hung or failing. What a sample holds becomes metrics named
the node_exporter way, with the unit in the name and the ``sysmon_`` prefix::

    cpu.percent                  sysmon_cpu_usage_ratio
    memory.available_bytes       sysmon_memory_available_bytes
    disk.mounts[].free_bytes     sysmon_filesystem_avail_bytes{mountpoint,fstype}
    network.recv_bytes_per_s     sysmon_network_receive_bytes_per_second
    gpu.devices[].utilization    sysmon_gpu_utilization_ratio{gpu,uuid}
    jupyter.kernel_usage[].rss   sysmon_kernel_memory_rss_bytes{kernel_id,kernel_name}
    users.users[].rss_bytes      sysmon_user_memory_rss_bytes{user} (and user="(others)")

Percentages become ratios (0-1; a process's CPU is a share of one core, so it can pass
1). A field that is ``null`` (a rate not known yet, a limit that does not exist) is
left out, never exported as 0; so are pure derivations PromQL computes itself (memory,
swap and filesystem ``percent``). Label sets stay bounded: mount point and type, CPU
index, GPU index and UUID, kernel id and name, user, group, alert name — never a pid or
a process name (the top-process lists stay on the WebSocket).

Beside the sample: ``sysmon_collector_up{group}`` (0 while the group failed or is stale
this sample), ``sysmon_sample_age_seconds``, ``sysmon_sample_interval_seconds`` and
``sysmon_sampler_skipped_ticks_total``; and ``sysmon_alert_active{name}`` for each active
alert, when the sample has an ``alerts`` group.

One :class:`Exporter` per registry is registered at most once, however many extensions
run in the process: each extension attaches on start and detaches on stop; the exporter
reads the most recently attached one and leaves the registry when none is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sysmon_nb.protocol import Status

log = logging.getLogger("sysmon_nb.metrics")


@dataclass(frozen=True)
class Spec:
    """One metric family: its full name (counters end in ``_total``), help and labels."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    counter: bool = False

    def family(self) -> Metric:
        if self.counter:
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


SPECS: dict[str, Spec] = {}

#: Percent fields are scaled by this to become ratios.
PCT = 0.01


def _spec(name: str, help: str, *labels: str, counter: bool = False) -> str:
    SPECS[name] = Spec(name, help, labels, counter)
    return name


@dataclass(frozen=True)
class _Field:
    """A field of a sample object, the metric it becomes, and its scale."""

    field: str
    metric: str
    scale: float


def _f(field: str, metric: str, scale: float, help: str, *labels: str, **kw: bool) -> _Field:
    return _Field(field, _spec(metric, help, *labels, **kw), scale)


_MOUNT = ("mountpoint", "fstype")
_GPU = ("gpu", "uuid")
_KERNEL = ("kernel_id", "kernel_name")

# fmt: off
UP = _spec("sysmon_collector_up",
           "1 if the group's collector gave a fresh reading for the latest sample, 0 while "
           "it fails or is stale (its metrics are then its last good reading).", "group")
AGE = _spec("sysmon_sample_age_seconds", "Seconds since the latest sample was taken.")
INTERVAL = _spec("sysmon_sample_interval_seconds", "Seconds between samples.")
SKIPPED = _spec("sysmon_sampler_skipped_ticks_total",
                "Ticks the sampler skipped (too slow for its interval) since it started.",
                counter=True)
ALERT = _spec("sysmon_alert_active", "1 for each firing alert rule (alert_rules).", "name")

#: Plain fields of each group, one series each.
_SCALARS: dict[str, tuple[_Field, ...]] = {
    "cpu": (
        _f("percent", "sysmon_cpu_usage_ratio", PCT,
           "Share of all CPUs busy over the last interval."),
        _f("count", "sysmon_cpus", 1.0, "Logical CPUs."),
        _f("load_1m", "sysmon_load1", 1.0, "1-minute load average."),
        _f("load_5m", "sysmon_load5", 1.0, "5-minute load average."),
        _f("load_15m", "sysmon_load15", 1.0, "15-minute load average."),
        _f("pressure", "sysmon_cpu_pressure_ratio", PCT,
           "Share of time some task waited for a CPU (PSI some avg10)."),
    ),
    "memory": (
        _f("total_bytes", "sysmon_memory_total_bytes", 1.0, "Physical memory."),
        _f("available_bytes", "sysmon_memory_available_bytes", 1.0,
           "Memory available to new work without swapping (MemAvailable)."),
        _f("used_bytes", "sysmon_memory_used_bytes", 1.0,
           "Memory in use: total minus available."),
        _f("swap_total_bytes", "sysmon_memory_swap_total_bytes", 1.0, "Swap space."),
        _f("swap_used_bytes", "sysmon_memory_swap_used_bytes", 1.0, "Swap in use."),
        _f("pressure", "sysmon_memory_pressure_ratio", PCT,
           "Share of time some task waited for memory (PSI some avg10)."),
    ),
    "disk": (
        _f("read_bytes_per_s", "sysmon_disk_read_bytes_per_second", 1.0,
           "Bytes read, all disks."),
        _f("write_bytes_per_s", "sysmon_disk_written_bytes_per_second", 1.0,
           "Bytes written, all disks."),
        _f("read_ops_per_s", "sysmon_disk_reads_completed_per_second", 1.0,
           "Reads completed, all disks."),
        _f("write_ops_per_s", "sysmon_disk_writes_completed_per_second", 1.0,
           "Writes completed, all disks."),
    ),
    "network": (
        _f("recv_bytes_per_s", "sysmon_network_receive_bytes_per_second", 1.0,
           "Bytes received, all interfaces but loopback."),
        _f("sent_bytes_per_s", "sysmon_network_transmit_bytes_per_second", 1.0,
           "Bytes sent, all interfaces but loopback."),
        _f("recv_packets_per_s", "sysmon_network_receive_packets_per_second", 1.0,
           "Packets received, all interfaces but loopback."),
        _f("sent_packets_per_s", "sysmon_network_transmit_packets_per_second", 1.0,
           "Packets sent, all interfaces but loopback."),
    ),
    "processes": (
        _f("count", "sysmon_processes", 1.0, "Processes on the machine."),
    ),
    "container": (
        _f("cgroup", "sysmon_container_cgroup_version", 1.0,
           "The server's cgroup version (1 or 2)."),
        _f("memory_limit_bytes", "sysmon_container_memory_limit_bytes", 1.0,
           "The server's cgroup memory limit (absent where unlimited)."),
        _f("memory_used_bytes", "sysmon_container_memory_used_bytes", 1.0,
           "Memory the server's cgroup uses, inactive file cache left out (what the OOM "
           "killer counts)."),
        _f("cpu_limit_cores", "sysmon_container_cpu_limit_cores", 1.0,
           "The server's cgroup CPU quota in cores (absent where unlimited)."),
        _f("cpu_usage_cores", "sysmon_container_cpu_usage_cores", 1.0,
           "Cores the server's cgroup used over the last interval."),
        _f("cpu_throttled_percent", "sysmon_container_cpu_throttled_ratio", PCT,
           "Share of the last interval's CPU periods in which the cgroup was throttled."),
        _f("oom_kills", "sysmon_container_oom_kills_total", 1.0,
           "Processes OOM-killed in the server's cgroup since it was created.",
           counter=True),
        _f("memory_pressure", "sysmon_container_memory_pressure_ratio", PCT,
           "Share of time some task of the cgroup waited for memory (PSI some avg10)."),
        _f("cpu_pressure", "sysmon_container_cpu_pressure_ratio", PCT,
           "Share of time some task of the cgroup waited for a CPU (PSI some avg10)."),
        _f("io_pressure", "sysmon_container_io_pressure_ratio", PCT,
           "Share of time some task of the cgroup waited for I/O (PSI some avg10)."),
    ),
    "users": (
        _f("count", "sysmon_users", 1.0, "Unix users with at least one process."),
    ),
    "jupyter": (
        _f("kernels", "sysmon_jupyter_kernels", 1.0, "Kernels the server runs."),
        _f("terminals", "sysmon_jupyter_terminals", 1.0, "Terminals the server runs."),
        _f("sessions", "sysmon_jupyter_sessions", 1.0, "Sessions the server holds."),
    ),
}

CORE = _spec("sysmon_cpu_core_usage_ratio",
             "Share of one logical CPU busy over the last interval.", "cpu")

#: disk.mounts[] fields, labelled by mount point and type.
_MOUNT_FIELDS = (
    _f("total_bytes", "sysmon_filesystem_size_bytes", 1.0, "Filesystem size.", *_MOUNT),
    _f("used_bytes", "sysmon_filesystem_used_bytes", 1.0, "Filesystem space in use.", *_MOUNT),
    _f("free_bytes", "sysmon_filesystem_avail_bytes", 1.0,
       "Filesystem space available to non-root users.", *_MOUNT),
    _f("home", "sysmon_filesystem_home", 1.0,
       "1 for the filesystem that holds the server's root_dir or $HOME.", *_MOUNT),
    _f("stuck", "sysmon_filesystem_stuck", 1.0,
       "1 while a call on the filesystem does not return in time (its other figures are "
       "then the last known ones).", *_MOUNT),
)

#: gpu.devices[] fields, labelled by GPU index and UUID.
_GPU_FIELDS = (
    _f("utilization_percent", "sysmon_gpu_utilization_ratio", PCT,
       "Share of the last sample period in which a kernel ran on the GPU.", *_GPU),
    _f("memory_used_bytes", "sysmon_gpu_memory_used_bytes", 1.0, "GPU memory in use.", *_GPU),
    _f("memory_total_bytes", "sysmon_gpu_memory_total_bytes", 1.0, "GPU memory.", *_GPU),
    _f("temperature_c", "sysmon_gpu_temperature_celsius", 1.0, "GPU temperature.", *_GPU),
    _f("power_w", "sysmon_gpu_power_watts", 1.0, "GPU power draw.", *_GPU),
    _f("power_limit_w", "sysmon_gpu_power_limit_watts", 1.0, "GPU power limit.", *_GPU),
)
GPU_INFO = _spec("sysmon_gpu_info", "1 for each GPU, with its model name.", *_GPU, "name")
KERNEL_GPU = _spec("sysmon_kernel_gpu_memory_bytes",
                   "GPU memory used by a kernel's processes.", *_KERNEL, *_GPU)

#: jupyter.kernel_usage[] fields, labelled by kernel id and name.
_KERNEL_FIELDS = (
    _f("rss_bytes", "sysmon_kernel_memory_rss_bytes", 1.0,
       "Resident memory of a kernel (its whole process tree where known).", *_KERNEL),
    _f("cpu_percent", "sysmon_kernel_cpu_usage_ratio", PCT,
       "CPU a kernel used over the last interval, as a share of one core (can pass 1).",
       *_KERNEL),
    _f("connections", "sysmon_kernel_connections", 1.0,
       "Clients connected to a kernel.", *_KERNEL),
    _f("last_activity", "sysmon_kernel_last_activity_timestamp_seconds", 1.0,
       "Unix time of a kernel's last activity.", *_KERNEL),
)
KERNEL_STATE = _spec("sysmon_kernel_execution_state",
                     "1 for a kernel's current execution state (idle, busy, starting...).",
                     *_KERNEL, "state")

#: users.users[] fields, labelled by user; the users past ``top_users`` are summed under
#: the label :data:`OTHERS_USER` (so that a sum over users is the machine's total).
_USER_FIELDS = (
    _f("processes", "sysmon_user_processes", 1.0, "Processes a unix user runs.", "user"),
    _f("cpu_percent", "sysmon_user_cpu_usage_ratio", PCT,
       "CPU a user's processes used over the last interval, as a share of one core.", "user"),
    _f("rss_bytes", "sysmon_user_memory_rss_bytes", 1.0,
       "Resident memory of a user's processes.", "user"),
)
# fmt: on

#: The sample groups this module turns into metrics.
EXPORTED_GROUPS: tuple[str, ...] = (
    "cpu", "memory", "disk", "network", "processes", "container", "gpu", "jupyter", "users",
    "alerts",
)  # fmt: skip

#: What a scrape asks the sampler to keep sampling (``want``): every exported group
#: (``processes`` for its count; its top lists come from the walk ``users`` needs anyway).
WANTED_GROUPS: tuple[str, ...] = EXPORTED_GROUPS


def _number(value: object) -> float | None:
    """A sample value as a float; ``None`` for null and anything not a number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _scaled(value: object, scale: float) -> float | None:
    number = _number(value)
    if number is None or scale == 1.0:
        return number
    return round(number * scale, 6)


class _Series:
    """The series of one scrape: metric name -> {label values: value}. A repeated label
    set keeps its first value (one series per label set, as the format requires)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[str, ...], float]] = {}

    def add(self, name: str, labels: tuple[str, ...], value: float | None) -> None:
        if value is None:
            return
        series = self.values.get(name)
        if series is None:
            series = self.values[name] = {}
        series.setdefault(labels, value)

    def families(self) -> Iterator[Metric]:
        for name, series in self.values.items():
            family: Any = SPECS[name].family()
            for labels, value in series.items():
                family.add_metric(labels, value)
            yield family


def families(status: Status, now: float, wanted: Collection[str] = ()) -> Iterator[Metric]:
    """The metric families of ``status`` as seen at unix time ``now``; a group of
    ``wanted`` (what the scrape asked for) that the sample lacks is ``up`` 0. Pure:
    reads the sample, nothing else."""
    out = _Series()
    groups = status.groups
    for group, fields in _SCALARS.items():
        data = groups.get(group)
        if data is not None:
            for f in fields:
                out.add(f.metric, (), _scaled(data.get(f.field), f.scale))
    cpu = groups.get("cpu")
    if cpu is not None:
        per_cpu = cpu.get("per_cpu")
        if isinstance(per_cpu, list):
            for index, value in enumerate(per_cpu):
                out.add(CORE, (str(index),), _scaled(value, PCT))
    disk = groups.get("disk")
    if disk is not None:
        _mounts(out, disk.get("mounts"))
    gpu = groups.get("gpu")
    jupyter = groups.get("jupyter")
    kernel_names = _kernels(out, jupyter.get("kernel_usage") if jupyter is not None else None)
    if gpu is not None:
        _gpus(out, gpu.get("devices"), kernel_names)
    users = groups.get("users")
    if users is not None:
        _users(out, users)
    alerts = groups.get("alerts")
    if alerts is not None:
        for alert in _items(alerts.get("active")):
            alert_name = alert.get("name")
            if isinstance(alert_name, str):
                out.add(ALERT, (alert_name,), 1.0)
    failing = {*status.errors, *status.stale, *(g for g in wanted if g not in groups)}
    for group in sorted({*groups, *failing}):
        out.add(UP, (group,), 0.0 if group in failing else 1.0)
    out.add(AGE, (), max(0.0, now - status.time))
    out.add(INTERVAL, (), float(status.interval))
    out.add(SKIPPED, (), float(status.skipped_ticks))
    return out.families()


def _items(value: object) -> list[Mapping[str, Any]]:
    """The objects of a list field (anything else in it is skipped)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mounts(out: _Series, mounts: object) -> None:
    for mount in _items(mounts):
        path = mount.get("path")
        if not isinstance(path, str):
            continue
        labels = (path, str(mount.get("fstype") or ""))
        for f in _MOUNT_FIELDS:
            out.add(f.metric, labels, _scaled(mount.get(f.field), f.scale))


def _kernels(out: _Series, usage: object) -> dict[str, str]:
    """Each kernel's series; returns kernel id -> kernel name for the GPU processes."""
    names: dict[str, str] = {}
    for kernel in _items(usage):
        kernel_id = kernel.get("id")
        if not isinstance(kernel_id, str):
            continue
        kernel_name = str(kernel.get("name") or "")
        names[kernel_id] = kernel_name
        labels = (kernel_id, kernel_name)
        for f in _KERNEL_FIELDS:
            out.add(f.metric, labels, _scaled(kernel.get(f.field), f.scale))
        state = kernel.get("execution_state")
        if isinstance(state, str):
            out.add(KERNEL_STATE, (*labels, state), 1.0)
    return names


def _gpus(out: _Series, devices: object, kernel_names: Mapping[str, str]) -> None:
    for device in _items(devices):
        labels = (str(device.get("index", "")), str(device.get("uuid") or ""))
        out.add(GPU_INFO, (*labels, str(device.get("name") or "")), 1.0)
        for f in _GPU_FIELDS:
            out.add(f.metric, labels, _scaled(device.get(f.field), f.scale))
        by_kernel: dict[str, float] = {}
        for process in _items(device.get("processes")):
            kernel_id = process.get("kernel_id")
            used = _number(process.get("used_memory_bytes"))
            if isinstance(kernel_id, str) and used is not None:
                by_kernel[kernel_id] = by_kernel.get(kernel_id, 0.0) + used
        for kernel_id, used in by_kernel.items():
            out.add(KERNEL_GPU, (kernel_id, kernel_names.get(kernel_id, ""), *labels), used)


#: The ``user`` label of the sums of the users left out of the ``users`` list.
OTHERS_USER = "(others)"


def _users(out: _Series, users: Mapping[str, Any]) -> None:
    rows = [(u.get("name"), u) for u in _items(users.get("users"))]
    others = users.get("others")
    if isinstance(others, Mapping):
        rows.append((OTHERS_USER, others))
    for name, user in rows:
        if not isinstance(name, str):
            continue
        for f in _USER_FIELDS:
            out.add(f.metric, (name,), _scaled(user.get(f.field), f.scale))


class Source(Protocol):
    """What the exporter reads of an extension: its broadcaster's latest sample, its
    log, and optionally ``metrics`` (the groups it offers) and ``want(groups)``."""

    broadcaster: Any
    log: Any


class Exporter:
    """prometheus_client collector of the latest sample of the attached extension.

    Registered on ``registry`` while at least one extension is attached; registration
    calls :meth:`describe` (fixed, sample-free), so it never collects.
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, clock: Callable[[], float] = time.time
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._sources: tuple[Source, ...] = ()
        self.registered = False

    def attach(self, source: Source) -> None:
        """Export ``source``'s samples (it replaces an earlier attached one until it
        detaches). Registers the exporter on first use. Idempotent."""
        if source in self._sources:
            return
        if not self.registered:
            try:
                self._registry.register(self)
            except ValueError as err:  # another collector already owns sysmon_* names
                source.log.warning("sysmon: Prometheus export disabled: %s", err)
                return
            self.registered = True
        self._sources = (*self._sources, source)

    def detach(self, source: Source) -> None:
        """Stop exporting ``source``; unregister once nothing is attached. Idempotent."""
        self._sources = tuple(s for s in self._sources if s is not source)
        if not self._sources and self.registered:
            self._registry.unregister(self)
            self.registered = False

    def describe(self) -> list[Metric]:
        """Every family this collector may yield, without samples (for registration)."""
        return [spec.family() for spec in SPECS.values()]

    def collect(self) -> Iterator[Metric]:
        """The latest sample's families. Reads what the sampler published; never
        samples, never waits."""
        sources = self._sources
        if not sources:
            return iter(())
        source = sources[-1]
        want = getattr(source, "want", None)
        wanted: tuple[str, ...] = ()
        if callable(want):
            wanted = _offered(source)
            want(wanted)
        status: Status | None = getattr(source.broadcaster, "latest", None)
        if status is None:
            return iter(())
        return families(status, self._clock(), wanted)


def _offered(source: Source) -> tuple[str, ...]:
    offered: Sequence[str] | None = getattr(source, "metrics", None)
    if offered is None:
        return WANTED_GROUPS
    return tuple(g for g in WANTED_GROUPS if g in offered)


#: The exporter behind jupyter_server's ``/metrics`` (default registry), attached only with
#: ``SysmonExtension.jupyter_server_metrics``.
EXPORTER = Exporter()
