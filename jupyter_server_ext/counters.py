"""The ``counters`` group: each CPU's time per mode and each network interface's traffic,
as the kernel counts them (cumulative: what Prometheus's ``rate()`` reads).

Its size grows with the machine (eight figures per CPU, four per interface: about 15 KiB
of JSON per sample on a 128-core host), so it is on demand, as ``processes`` and
``users`` are: sampled only while someone wants it (a Prometheus scrape does; a
WebSocket client may subscribe to it by name), and never part of a subscription that
names no groups. Reading it costs one more read of ``/proc/stat`` and of
``/proc/net/dev`` per tick, only while it is wanted.

Interfaces are bounded: at most :data:`MAX_DEVICES` (loopback first, then by name), and
an interface once listed stays listed while it exists, so that a host where interfaces
come and go (a container host's ``veth*``) never swaps one series for another; how many
were left out is said (``network_devices_left_out``). In a container (its own network
namespace) the list is the container's own interfaces; ``/proc/stat`` is the host's.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

import psutil

from . import procfs
from .errors import CollectorError
from .proctable import uses_procfs

#: Most network interfaces the group lists.
MAX_DEVICES = 32

#: The fields of one interface, in ``/proc/net/dev``'s (and psutil's) order as read.
NET_FIELDS = ("receive_bytes", "transmit_bytes", "receive_packets", "transmit_packets")


class CountersCollector:
    """``counters``: ``{"cpu": [{cpu, user, nice, system, idle, iowait, irq, softirq,
    steal}], "network": [{device, receive_bytes, transmit_bytes, receive_packets,
    transmit_packets}], "network_devices_left_out": N}``, CPU times in seconds since boot
    (``cpu`` is the CPU's number), interface counts since the interface appeared.
    Loopback is listed. See the module for the bound on interfaces."""

    name = "counters"
    on_demand = True

    def __init__(
        self,
        ps: ModuleType | Any = psutil,
        stat_path: str = "/proc/stat",
        net_dev_path: str = "/proc/net/dev",
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self._ps = ps
        self._procfs = uses_procfs(ps)
        self._stat_path = stat_path
        self._net_dev_path = net_dev_path
        self._stat = procfs.HeldFile(stat_path)
        self._net_dev = procfs.HeldFile(net_dev_path)
        self._max_devices = max_devices
        self._devices: list[str] = []  # listed, in the order they were chosen

    def collect(self, now: float) -> dict[str, Any]:
        devices = self._net()
        chosen, left_out = self._choose(devices)
        return {
            "cpu": self._cpu(),
            "network": [
                {"device": name, **dict(zip(NET_FIELDS, devices[name]))} for name in chosen
            ],
            "network_devices_left_out": left_out,
        }

    def pause(self) -> None:
        """Nobody wants the group: close the files (the listed interfaces are kept)."""
        self.close()

    def close(self) -> None:
        """Close the files kept open between ticks. Idempotent."""
        self._stat.close()
        self._net_dev.close()

    def _cpu(self) -> list[dict[str, float]]:
        if self._procfs:
            data = self._stat.read()
            if data is None:
                raise CollectorError(f"{self._stat_path} does not exist")
            tick = procfs.CLOCK_TICKS
            return [
                {"cpu": number, **{m: round(t / tick, 2) for m, t in zip(procfs.CPU_MODES, ticks)}}
                for number, ticks in procfs.parse_cpu_modes(data, self._stat_path)
            ]
        return [
            {"cpu": number, **{m: round(getattr(t, m, 0.0), 2) for m in procfs.CPU_MODES}}
            for number, t in enumerate(self._ps.cpu_times(percpu=True))
        ]

    def _net(self) -> procfs.NetCounters:
        if self._procfs:
            data = self._net_dev.read()
            if data is None:
                raise CollectorError(f"{self._net_dev_path} does not exist")
            return procfs.parse_net_counters(data, self._net_dev_path)
        return {
            nic: (c.bytes_recv, c.bytes_sent, c.packets_recv, c.packets_sent)
            for nic, c in self._ps.net_io_counters(pernic=True).items()
        }

    def _choose(self, present: Iterable[str]) -> tuple[list[str], int]:
        """The interfaces to list (loopback first, then by name) and how many are left
        out. One listed before stays while it exists; new ones fill the free places."""
        here = set(present)
        chosen = [name for name in self._devices if name in here]
        for name in sorted(here.difference(chosen), key=_device_order):
            if len(chosen) >= self._max_devices:
                break
            chosen.append(name)
        self._devices = chosen
        return sorted(chosen, key=_device_order), len(here) - len(chosen)


def _device_order(name: str) -> tuple[bool, str]:
    return name != "lo", name
