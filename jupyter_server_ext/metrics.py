"""The Prometheus export: the latest sample as ``sysmon_*`` metrics on jupyter_server's
own ``/metrics`` (prometheus_client's default registry, behind the server's
``authenticate_prometheus`` rule).

A scrape reads the sample the sampler already published (``broadcaster.latest``): it
never samples and never waits on the sampler's thread, so a scrape costs the same
whether a collector is slow, hung or failing. What a sample holds becomes metrics named
the node_exporter way, with the unit in the name and the ``sysmon_`` prefix: what the
kernel counts as counters (``_total``, for ``rate()``), levels as gauges, enums as one
0/1 series per state, versions as labels of an ``_info`` series::

    counters.cpu[].<mode>            sysmon_cpu_seconds_total{cpu,mode}
    counters.network[].receive_bytes sysmon_network_receive_bytes_total{device}
    disk.read_bytes_total            sysmon_disk_read_bytes_total
    memory.available_bytes           sysmon_memory_available_bytes
    disk.mounts[].free_bytes         sysmon_filesystem_avail_bytes{mountpoint,fstype}
    container.cpu_usage_seconds_total sysmon_container_cpu_usage_seconds_total
    container.cgroup                 sysmon_container_info{cgroup_version}
    gpu.devices[].utilization        sysmon_gpu_utilization_ratio{gpu,uuid}
    jupyter.kernel_usage[].cpu_seconds_total
                                     sysmon_kernel_cpu_seconds_total{kernel_id,kernel_name}
    jupyter.kernel_usage[].execution_state
                                     sysmon_kernel_execution_state{kernel_id,kernel_name,state}
    users.users[].rss_bytes          sysmon_user_memory_rss_bytes{user} (and user="(others)")

Rates and shares computed over the sampler's window (``*_per_s``, ``percent`` of CPU,
``cpu_usage_cores``, ``cpu_throttled_percent``) stay on the WebSocket: Prometheus
computes them from the counters over its own window. Other percentages become ratios
(0-1). A field that is ``null`` (a counter not known yet, a limit that does not exist)
is left out, never exported as 0; so are pure derivations PromQL computes itself
(memory, swap and filesystem ``percent``). Label sets stay bounded: mount point and
type, CPU index and mode, network interface (at most 32), GPU index and UUID, kernel id
and name, execution state, user, group, alert name — never a pid or a process name (the
top-process lists stay on the WebSocket).

Help texts say what the figure covers where a container sees something else than a
machine: ``/proc/stat``, ``/proc/meminfo``, ``/proc/diskstats`` and the load averages
are the host's (a pod's node), the network interfaces and processes are the server's
namespaces' (a pod's own), the ``container`` group is the server's cgroup.

Beside the sample: ``sysmon_collector_up{group}`` (0 while the group failed or is stale
this sample), ``sysmon_sample_age_seconds``, ``sysmon_sample_interval_seconds``,
``sysmon_sampler_skipped_ticks_total``, ``sysmon_build_info``; and
``sysmon_alert_active{name}`` for each active alert, when the sample has an ``alerts``
group.

One :class:`Exporter` per registry is registered at most once, however many extensions
run in the process: each extension attaches on start and detaches on stop; the exporter
reads the most recently attached one and leaves the registry when none is left.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sysmon_nb._version import __version__
from sysmon_nb.protocol import PROTOCOL_VERSION, Status

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
    if counter != name.endswith("_total"):
        raise ValueError(f"{name}: counters, and only counters, end in _total")
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
#: Said of the figures ``/proc`` gives for the whole host, whatever the namespaces.
_HOST = "a container sees its node's"

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
BUILD = _spec("sysmon_build_info",
              "1, labelled with the version of sysmon-nb that exports these metrics, its "
              "wire protocol and its Python.", "version", "protocol", "python_version")

#: Plain fields of each group, one series each.
_SCALARS: dict[str, tuple[_Field, ...]] = {
    "cpu": (
        _f("count", "sysmon_cpus", 1.0,
           f"Logical CPUs of the host ({_HOST}; the server's share is "
           "sysmon_container_cpu_limit_cores)."),
        _f("load_1m", "sysmon_load1", 1.0, f"1-minute load average of the host ({_HOST})."),
        _f("load_5m", "sysmon_load5", 1.0, f"5-minute load average of the host ({_HOST})."),
        _f("load_15m", "sysmon_load15", 1.0,
           f"15-minute load average of the host ({_HOST})."),
        _f("pressure", "sysmon_cpu_pressure_ratio", PCT,
           f"Share of time some task of the host waited for a CPU (PSI some avg10; {_HOST})."),
    ),
    "counters": (
        _f("network_devices_left_out", "sysmon_network_devices_left_out", 1.0,
           "Network interfaces the server sees but does not export (beyond the first 32)."),
    ),
    "memory": (
        _f("total_bytes", "sysmon_memory_total_bytes", 1.0,
           f"Physical memory of the host ({_HOST}; the server's limit is "
           "sysmon_container_memory_limit_bytes)."),
        _f("available_bytes", "sysmon_memory_available_bytes", 1.0,
           f"Memory of the host available to new work without swapping (MemAvailable; "
           f"{_HOST})."),
        _f("used_bytes", "sysmon_memory_used_bytes", 1.0,
           f"Memory of the host in use: total minus available ({_HOST})."),
        _f("swap_total_bytes", "sysmon_memory_swap_total_bytes", 1.0,
           f"Swap space of the host ({_HOST})."),
        _f("swap_used_bytes", "sysmon_memory_swap_used_bytes", 1.0,
           f"Swap of the host in use ({_HOST})."),
        _f("pressure", "sysmon_memory_pressure_ratio", PCT,
           f"Share of time some task of the host waited for memory (PSI some avg10; "
           f"{_HOST})."),
    ),
    "disk": (
        _f("read_bytes_total", "sysmon_disk_read_bytes_total", 1.0,
           f"Bytes read from the host's whole disks since boot ({_HOST}).", counter=True),
        _f("write_bytes_total", "sysmon_disk_written_bytes_total", 1.0,
           f"Bytes written to the host's whole disks since boot ({_HOST}).", counter=True),
        _f("read_ops_total", "sysmon_disk_reads_completed_total", 1.0,
           f"Reads completed by the host's whole disks since boot ({_HOST}).", counter=True),
        _f("write_ops_total", "sysmon_disk_writes_completed_total", 1.0,
           f"Writes completed by the host's whole disks since boot ({_HOST}).",
           counter=True),
    ),
    "processes": (
        _f("count", "sysmon_processes", 1.0,
           "Processes the server sees: those of its PID namespace (a container's own, or "
           "the host's)."),
    ),
    "container": (
        _f("memory_limit_bytes", "sysmon_container_memory_limit_bytes", 1.0,
           "The server's cgroup memory limit (absent where unlimited)."),
        _f("memory_used_bytes", "sysmon_container_memory_used_bytes", 1.0,
           "Memory the server's cgroup uses, inactive file cache left out (what the OOM "
           "killer counts)."),
        _f("cpu_limit_cores", "sysmon_container_cpu_limit_cores", 1.0,
           "The server's cgroup CPU quota in cores (absent where unlimited)."),
        _f("cpu_usage_seconds_total", "sysmon_container_cpu_usage_seconds_total", 1.0,
           "CPU seconds the server's cgroup used since it was created.", counter=True),
        _f("cpu_periods_total", "sysmon_container_cpu_periods_total", 1.0,
           "CPU quota periods in which the server's cgroup ran (CFS nr_periods).",
           counter=True),
        _f("cpu_throttled_periods_total", "sysmon_container_cpu_throttled_periods_total",
           1.0, "CPU quota periods in which the server's cgroup was throttled "
           "(CFS nr_throttled).", counter=True),
        _f("cpu_throttled_seconds_total", "sysmon_container_cpu_throttled_seconds_total",
           1.0, "Seconds the server's cgroup's tasks were held back by its CPU quota.",
           counter=True),
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
        _f("count", "sysmon_users", 1.0,
           "Unix users with at least one process the server sees (its PID namespace)."),
    ),
    "jupyter": (
        _f("kernels", "sysmon_jupyter_kernels", 1.0, "Kernels the server runs."),
        _f("terminals", "sysmon_jupyter_terminals", 1.0, "Terminals the server runs."),
        _f("sessions", "sysmon_jupyter_sessions", 1.0, "Sessions the server holds."),
    ),
}

CONTAINER_INFO = _spec("sysmon_container_info",
                       "1, labelled with the version of the server's cgroup (1 or 2).",
                       "cgroup_version")

#: counters.cpu[] modes: /proc/stat's columns, as node_exporter's node_cpu_seconds_total.
CPU_SECONDS = _spec("sysmon_cpu_seconds_total",
                    f"Seconds each CPU of the host spent in each mode since boot ({_HOST}).",
                    "cpu", "mode", counter=True)
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

_NET = ("of each network interface the server sees, since it appeared (a container sees "
        "its own network namespace's; loopback included; at most 32 interfaces).")
#: counters.network[] fields, labelled by interface.
_NET_FIELDS = (
    _f("receive_bytes", "sysmon_network_receive_bytes_total", 1.0,
       f"Bytes received {_NET}", "device", counter=True),
    _f("transmit_bytes", "sysmon_network_transmit_bytes_total", 1.0,
       f"Bytes sent {_NET}", "device", counter=True),
    _f("receive_packets", "sysmon_network_receive_packets_total", 1.0,
       f"Packets received {_NET}", "device", counter=True),
    _f("transmit_packets", "sysmon_network_transmit_packets_total", 1.0,
       f"Packets sent {_NET}", "device", counter=True),
)

#: disk.mounts[] fields, labelled by mount point and type.
_MOUNT_FIELDS = (
    _f("total_bytes", "sysmon_filesystem_size_bytes", 1.0,
       "Size of a filesystem mounted where the server runs.", *_MOUNT),
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
       "Share of the last sample period in which the GPU ran at least one CUDA kernel "
       "(NVML's utilization; not a Jupyter kernel's share).", *_GPU),
    _f("memory_used_bytes", "sysmon_gpu_memory_used_bytes", 1.0, "GPU memory in use.", *_GPU),
    _f("memory_total_bytes", "sysmon_gpu_memory_total_bytes", 1.0, "GPU memory.", *_GPU),
    _f("temperature_c", "sysmon_gpu_temperature_celsius", 1.0, "GPU temperature.", *_GPU),
    _f("power_w", "sysmon_gpu_power_watts", 1.0, "GPU power draw.", *_GPU),
    _f("power_limit_w", "sysmon_gpu_power_limit_watts", 1.0, "GPU power limit.", *_GPU),
)
GPU_INFO = _spec("sysmon_gpu_info", "1 for each GPU, with its model name.", *_GPU, "name")
KERNEL_GPU = _spec("sysmon_kernel_gpu_memory_bytes",
                   "GPU memory used by a Jupyter kernel's processes.", *_KERNEL, *_GPU)

#: jupyter.kernel_usage[] fields, labelled by kernel id and name.
_KERNEL_FIELDS = (
    _f("rss_bytes", "sysmon_kernel_memory_rss_bytes", 1.0,
       "Resident memory of a Jupyter kernel's whole process tree.", *_KERNEL),
    _f("cpu_seconds_total", "sysmon_kernel_cpu_seconds_total", 1.0,
       "CPU seconds a Jupyter kernel's process tree used since the server first saw it "
       "(children that exited included; restarts continue it).", *_KERNEL, counter=True),
    _f("connections", "sysmon_kernel_connections", 1.0,
       "Clients connected to a Jupyter kernel.", *_KERNEL),
    _f("last_activity", "sysmon_kernel_last_activity_timestamp_seconds", 1.0,
       "Unix time of a Jupyter kernel's last activity.", *_KERNEL),
)
KERNEL_STATE = _spec("sysmon_kernel_execution_state",
                     "1 for a Jupyter kernel's current execution state, 0 for every other "
                     "state ('unknown': none reported, or one not listed).",
                     *_KERNEL, "state")
#: Every state a kernel series is exported for (JupyterLab's list of kernel states).
KERNEL_STATES = (
    "starting", "idle", "busy", "restarting", "autorestarting", "terminating", "dead",
    "unknown",
)

#: users.users[] fields, labelled by user; the users past ``top_users`` are summed under
#: the label :data:`OTHERS_USER` (so that a sum over users is the machine's total).
_USER_FIELDS = (
    _f("processes", "sysmon_user_processes", 1.0,
       "Processes a unix user runs (in the server's PID namespace).", "user"),
    _f("cpu_seconds_total", "sysmon_user_cpu_seconds_total", 1.0,
       "CPU seconds a unix user's processes used since the server first walked them "
       "(processes that exited included).", "user", counter=True),
    _f("rss_bytes", "sysmon_user_memory_rss_bytes", 1.0,
       "Resident memory of a unix user's processes.", "user"),
)
# fmt: on

#: The sample groups this module turns into metrics.
EXPORTED_GROUPS: tuple[str, ...] = (
    "cpu", "counters", "memory", "disk", "network", "processes", "container", "gpu",
    "jupyter", "users", "alerts",
)  # fmt: skip

#: What a scrape asks the sampler to keep sampling (``want``): every exported group but
#: ``processes``, whose top lists (the costly walk) are never exported; its count is,
#: whenever the sample has it. ``network``'s fields are all rates (none exported); it is
#: wanted for ``sysmon_collector_up`` alone, and costs one read of ``/proc/net/dev``.
WANTED_GROUPS: tuple[str, ...] = tuple(g for g in EXPORTED_GROUPS if g != "processes")

#: The labels of ``sysmon_build_info``: fixed for the process's life.
BUILD_LABELS = (__version__, str(PROTOCOL_VERSION), platform.python_version())


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


def families(status: Status, now: float) -> Iterator[Metric]:
    """The metric families of ``status`` as seen at unix time ``now``. Pure: reads the
    sample (and the exporting process's build), nothing else."""
    out = _Series()
    groups = status.groups
    for group, fields in _SCALARS.items():
        data = groups.get(group)
        if data is not None:
            for f in fields:
                out.add(f.metric, (), _scaled(data.get(f.field), f.scale))
    counters = groups.get("counters")
    if counters is not None:
        _counters(out, counters)
    container = groups.get("container")
    if container is not None:
        version = _number(container.get("cgroup"))
        if version is not None:
            out.add(CONTAINER_INFO, (str(int(version)),), 1.0)
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
    failing = {*status.errors, *status.stale}
    for group in sorted({*groups, *failing}):
        out.add(UP, (group,), 0.0 if group in failing else 1.0)
    out.add(AGE, (), max(0.0, now - status.time))
    out.add(INTERVAL, (), float(status.interval))
    out.add(SKIPPED, (), float(status.skipped_ticks))
    out.add(BUILD, BUILD_LABELS, 1.0)
    return out.families()


def _items(value: object) -> list[Mapping[str, Any]]:
    """The objects of a list field (anything else in it is skipped)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _counters(out: _Series, counters: Mapping[str, Any]) -> None:
    for core in _items(counters.get("cpu")):
        number = _number(core.get("cpu"))
        if number is None:
            continue
        cpu = str(int(number))
        for mode in CPU_MODES:
            out.add(CPU_SECONDS, (cpu, mode), _number(core.get(mode)))
    for nic in _items(counters.get("network")):
        device = nic.get("device")
        if isinstance(device, str):
            for f in _NET_FIELDS:
                out.add(f.metric, (device,), _number(nic.get(f.field)))


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
        if state not in KERNEL_STATES:
            state = "unknown"
        for known in KERNEL_STATES:
            out.add(KERNEL_STATE, (*labels, known), 1.0 if known == state else 0.0)
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
        if callable(want):
            want(_offered(source))
        status: Status | None = getattr(source.broadcaster, "latest", None)
        if status is None:
            return iter(())
        return families(status, self._clock())


def _offered(source: Source) -> tuple[str, ...]:
    offered: Sequence[str] | None = getattr(source, "metrics", None)
    if offered is None:
        return WANTED_GROUPS
    return tuple(g for g in WANTED_GROUPS if g in offered)


#: The exporter behind jupyter_server's ``/metrics``.
EXPORTER = Exporter()
