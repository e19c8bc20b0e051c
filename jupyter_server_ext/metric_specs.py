"""What the Prometheus export (:mod:`.metrics`) exports: each metric family's name, help,
labels and type, and the sample field it comes from.

Conventions are node_exporter's: units in the names, counters (and only counters) end in
``_total``, a level is a gauge, an enumeration is one 0/1 series per value, a version is
a label of an ``_info`` series. Help texts say what the figure covers where a container
sees something else than a machine: ``/proc/stat``, ``/proc/meminfo``,
``/proc/diskstats`` and the load averages are the host's (a pod's node), the network
interfaces and processes are the server's namespaces' (a pod's own), the ``container``
group is the server's cgroup.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sysmon_nb._version import __version__
from sysmon_nb.protocol import PROTOCOL_VERSION


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
SCALARS: dict[str, tuple[_Field, ...]] = {
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
NET_FIELDS = (
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
MOUNT_FIELDS = (
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
GPU_FIELDS = (
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
KERNEL_FIELDS = (
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
USER_FIELDS = (
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

#: What a scrape asks the sampler to keep sampling (``want``): every exported group
#: (``processes`` for its count; its top lists come from the walk ``users`` needs anyway).
#: ``network``'s fields are all rates (none exported); it is wanted for
#: ``sysmon_collector_up`` alone, and costs one read of ``/proc/net/dev``.
WANTED_GROUPS: tuple[str, ...] = EXPORTED_GROUPS

#: The labels of ``sysmon_build_info``: fixed for the process's life.
BUILD_LABELS = (__version__, str(PROTOCOL_VERSION), platform.python_version())


#: The ``user`` label of the sums of the users left out of the ``users`` list.
OTHERS_USER = "(others)"
