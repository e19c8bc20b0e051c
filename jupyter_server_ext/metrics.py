"""The Prometheus export: the latest sample as ``sysmon_*`` metrics on ``sysmon/metrics``
(the extension's own registry, behind sysmon's admission: :mod:`.metrics_route`), and on
jupyter_server's ``/metrics`` (prometheus_client's default registry) only where
``jupyter_server_metrics`` turns that on.

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

Each family's name, help (what a container sees), labels and type is in
:mod:`.metric_specs`.

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
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from sysmon_nb.protocol import Status

from .metric_specs import (  # re-exported: tests, benchmarks and others name them here
    AGE,
    ALERT,
    BUILD,
    BUILD_LABELS,
    CONTAINER_INFO,
    CPU_MODES,
    CPU_SECONDS,
    EXPORTED_GROUPS,
    GPU_FIELDS,
    GPU_INFO,
    INTERVAL,
    KERNEL_FIELDS,
    KERNEL_GPU,
    KERNEL_STATE,
    KERNEL_STATES,
    MOUNT_FIELDS,
    NET_FIELDS,
    OTHERS_USER,
    SCALARS,
    SKIPPED,
    SPECS,
    UP,
    USER_FIELDS,
    WANTED_GROUPS,
    Spec,
)

__all__ = [
    "EXPORTED_GROUPS",
    "EXPORTER",
    "KERNEL_STATES",
    "OTHERS_USER",
    "SPECS",
    "WANTED_GROUPS",
    "Exporter",
    "Spec",
    "families",
]

log = logging.getLogger("sysmon_nb.metrics")


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
    reads the sample (and the exporting process's build), nothing else."""
    out = _Series()
    groups = status.groups
    for group, fields in SCALARS.items():
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
    failing = {*status.errors, *status.stale, *(g for g in wanted if g not in groups)}
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
            for f in NET_FIELDS:
                out.add(f.metric, (device,), _number(nic.get(f.field)))


def _mounts(out: _Series, mounts: object) -> None:
    for mount in _items(mounts):
        path = mount.get("path")
        if not isinstance(path, str):
            continue
        labels = (path, str(mount.get("fstype") or ""))
        for f in MOUNT_FIELDS:
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
        for f in KERNEL_FIELDS:
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
        for f in GPU_FIELDS:
            out.add(f.metric, labels, _scaled(device.get(f.field), f.scale))
        by_kernel: dict[str, float] = {}
        for process in _items(device.get("processes")):
            kernel_id = process.get("kernel_id")
            used = _number(process.get("used_memory_bytes"))
            if isinstance(kernel_id, str) and used is not None:
                by_kernel[kernel_id] = by_kernel.get(kernel_id, 0.0) + used
        for kernel_id, used in by_kernel.items():
            out.add(KERNEL_GPU, (kernel_id, kernel_names.get(kernel_id, ""), *labels), used)


def _users(out: _Series, users: Mapping[str, Any]) -> None:
    rows = [(u.get("name"), u) for u in _items(users.get("users"))]
    others = users.get("others")
    if isinstance(others, Mapping):
        rows.append((OTHERS_USER, others))
    for name, user in rows:
        if not isinstance(name, str):
            continue
        for f in USER_FIELDS:
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
